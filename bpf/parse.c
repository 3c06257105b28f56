/* parse.c: tw_parse, the HTTP/1.x parser loop.
 * Included twice by http.c: tracepoint-type, and kprobe-type for the TLS uprobes when
 * TW_HAVE_TLS.  TW_TAIL_PROG names the program, tw_tail() calls through the matching program
 * array. */

/* The parser: one window of the current job, then a tail call to itself. */
TW_TAIL_PROG(tw_parse)
{
	__u32 zero = 0;
	struct tw_job *j = tw_jobs.lookup(&zero);
	if (!j)
		return 0;
	struct tw_ctl *ctl = tw_ctl.lookup(&zero);
	if (!ctl)
		return 0;
	__u64 ck = j->conn;
	struct tw_conn *c = tw_conns.lookup(&ck);
	if (!c)
		return 0;
	int is_req = j->is_req;
	struct tw_parser *p = is_req ? &c->req : &c->resp;
	struct tw_window *win = tw_scratch.lookup(&zero);
	if (!win)
		return 0;
	__u8 *buf = win->b;

	/* Skip body bytes, segment by segment (bounded: a few iovecs at most). */
	for (int s = 0; s < 8; s++) {
		if (j->remaining == 0)
			break;
		__u64 avail = j->seg_len - j->seg_off;
		if (avail > j->remaining)
			avail = j->remaining;
		if (avail == 0) {
			if (!tw_next_segment(j))
				goto done;
			continue;
		}
		if (p->state == TW_S_DEAD || p->state == TW_S_UNTIL_CLOSE ||
		    p->state == TW_S_RESYNC) {
			j->remaining = 0;
			goto done;
		}
		if (!p->skip)
			break;
		__u64 took = tw_skip(p, avail);
		j->seg_off += took;
		j->remaining -= took;
		if (!p->skip && p->after_skip == AFTER_MESSAGE)
			tw_message_reset(p, is_req);
	}
	if (j->remaining == 0 || p->skip)
		goto done;
	if (p->state == TW_S_HTOK) {
		j->mode = TW_PROG_TOKEN;  /* inside a bearer token value: tw_token reads it */
		goto done;
	}

	__u64 avail = j->seg_len - j->seg_off;
	if (avail > j->remaining)
		avail = j->remaining;
	__u32 n = avail > TW_READ ? TW_READ : (__u32)avail;
	if (n == 0)
		goto done;
	if (tw_read_user(buf, n & (TW_READ - 1) ? n & (TW_READ - 1) : TW_READ,
			 (void *)(j->buf + j->seg_off)) != 0) {
		tw_lose(TW_LOST_READ_FAULT);
		tw_resync(c, p, is_req);  /* these bytes are gone: the place in the stream too */
		j->remaining = 0;
		goto done;
	}
	struct tw_dfa *d = tw_dfa.lookup(&zero);
	if (!d)
		goto done;
	struct tw_pfx *x = tw_pfx.lookup(&zero);
	if (!x)
		goto done;
	__u32 ui = ((c->side & 1) << 1) | (is_req & 1);
	tw_barrier_var(ui);  /* keep the mask where it is used: the 6.1 verifier loses this bound */
	/* More of this segment follows the window: a header line starting too close to the
	 * window's end for the word compare ends the run there, so the next window starts
	 * with it. */
	int more = avail > n;
	__u32 used = n;
	__u32 event = 0;
	__u32 from = 0;
	/* The state lives in a register inside the loop (no action reads p->state);
	 * a store and reload per byte was the loop's critical path. */
	__u32 state = p->state;
	/* The header-name hash and length also live in registers while a name is read
	 * (p->h1/p->pos are written at the name's end, or when a window ends inside it). */
	__u64 h = p->h1;
	__u32 npos = p->pos & 0xffff;
	/* The position in the window lives in the job (map memory), not in a register: each
	 * iteration reads it back as a value the verifier knows nothing of, so the paths through
	 * one iteration (a word step, a line skipped, a byte of the DFA) end in the same state
	 * and are pruned, instead of multiplying by the positions they reached. */
	j->wpos = 0;
	/* A line end after the last byte read: the word steps stop there at the latest. */
	if (n <= TW_READ)
		buf[n] = '\n';
	tw_barrier_var(n);
	for (__u32 it = 0; it < TW_ITERS; it++) {
		__u32 pos = *(volatile __u32 *)&j->wpos;
		if (pos >= n)
			break;
		/* Every path of the last iteration starts this one alike (tw_opaque): the tests
		 * below would otherwise leave a known state on some, and the verifier would walk
		 * the iteration again for each. */
		state = tw_opaque(j, state) & 0xff;
		__u32 left = n - pos;
		/* What this step does, from a table: the verifier never learns the state. */
		__u32 step = d->step[state & (TW_NSTATES - 1)];
		__u8 *q = buf + (pos & (TW_READ - 1));
		if (step == TW_STEP_LINE && q[0] > ' ') {
			/* A header line (not a fold, not the blank line): its name, a word at a time. */
			if (left < TW_PFX_BYTES && more) {
				used = pos;  /* the next run starts a window with this line */
				break;
			}
			__u32 cand = TW_PFX_SLOW;
			if (left >= TW_PFX_BYTES) {
				__u64 w0 = *(__u64 *)q;
				cand = TW_PFX_NONE;  /* most lines: no candidate applies here */
				if ((x->filter[ui & 3] >> TW_NAME_BIT(w0)) & 1)
					cand = tw_line_candidate(x, w0, *(__u64 *)(q + 8),
								 *(__u64 *)(q + 16));
			}
			cand = tw_opaque(j, cand);
			if (cand < TW_NPFX && !((x->use[ui & 3] >> cand) & 1))
				cand = TW_PFX_NONE;  /* not read on this side or direction */
			if (cand < TW_NPFX) {
				tw_header_kind(ctl, p, x->kind[cand], x->source[cand][ui & 3]);
				state = tw_opaque(j, p->vtoken ? TW_S_HTOK : TW_S_HOWS) & 0xff;
				*(volatile __u32 *)&j->wpos = pos + (x->len[cand] & 0xff) + 1;
				continue;
			}
			if (cand == TW_PFX_NONE) {
				/* Nothing to take from this line: skip to its end. */
				p->hkind = H_OTHER;
				p->prev_identity = 0;
				state = tw_opaque(j, TW_S_SKIP) & 0xff;
				step = TW_STEP_SKIP;
			}
		} else if (step == TW_STEP_METHOD && left >= 16) {
			/* A request line's method, a word at a time: capitals up to a space. */
			__u64 w = *(__u64 *)q;
			__u64 y = w ^ 0x2020202020202020ull;
			__u64 sp = (y - 0x0101010101010101ull) & ~y & 0x8080808080808080ull;
			__u32 k = tw_opaque(j, sp ? tw_first_flag(sp) : 0) & 7;
			__u64 low = (1ull << (8 * k)) - 1;
			if (k && (tw_capitals(w) & low) == (0x8080808080808080ull & low)) {
				__u64 method = __builtin_bswap64(w & low) >> (8 * (8 - k));
				p->word = method;
				p->method = method;
				if (method == 0x48454144ull)  /* "HEAD" */
					p->mflags |= M_HEAD;
				state = tw_opaque(j, TW_S_TARGET0) & 0xff;
				*(volatile __u32 *)&j->wpos = pos + k + 1;
				continue;
			}
		} else if (step == TW_STEP_VERSION && left >= 16) {
			/* A request line's version and line end. */
			__u32 adv = 0;
			if (tw_is_http1(*(__u64 *)q)) {
				if (q[8] == '\n')
					adv = 9;
				else if (q[8] == '\r' && q[9] == '\n')
					adv = 10;
			}
			adv = tw_opaque(j, adv) & 15;
			if (adv) {
				state = tw_opaque(j, TW_S_HS) & 0xff;
				*(volatile __u32 *)&j->wpos = pos + adv;
				continue;
			}
		} else if (step == TW_STEP_STATUS && left >= 16) {
			/* A status line up to its reason phrase: "HTTP/1.x DDD". */
			__u32 d0 = q[9] - '0', d1 = q[10] - '0', d2 = q[11] - '0';
			__u32 ok = tw_is_http1(*(__u64 *)q) && q[8] == ' ' && d0 < 10 && d1 < 10 &&
				   d2 < 10;
			if (tw_opaque(j, ok) & 1) {
				p->status = d0 * 100 + d1 * 10 + d2;
				state = tw_opaque(j, TW_S_LREST) & 0xff;
				*(volatile __u32 *)&j->wpos = pos + 12;
				continue;
			}
		}
		if (step == TW_STEP_SKIP || step == TW_STEP_TARGET) {
			/* Bytes with nothing to do up to a line end (or the end of a request
			 * target): TW_SKIP_WORDS words a step; the byte after them, or the one that
			 * ends the run, goes through the DFA below. */
			int target = step == TW_STEP_TARGET;
			__u32 adv = 8 * TW_SKIP_WORDS;
			for (__u32 k = 0; k < TW_SKIP_WORDS; k++) {
				__u64 w = *(__u64 *)(q + 8 * k);
				__u64 m = target ? tw_target_stops(w) : tw_lf_bytes(w);
				if (m) {
					adv = 8 * k + tw_first_flag(m);
					break;
				}
			}
			if (!target) {
				/* A skipped line: its '\n' leads to HS with no action in every
				 * TW_STEP_SKIP state (kernel/dfa.py, tested), so no DFA byte for it;
				 * no line end in these words: the next step goes on from there. */
				if (adv < 8 * TW_SKIP_WORDS && pos + adv < n) {
					state = tw_opaque(j, TW_S_HS) & 0xff;
					adv += 1;
				}
				*(volatile __u32 *)&j->wpos = pos + adv;
				continue;
			}
			*(volatile __u32 *)&j->wpos = pos + adv;
			pos = *(volatile __u32 *)&j->wpos;
			if (pos >= n)
				continue;  /* the line end after the last byte (not one of the data) */
		}
		__u8 ch = buf[pos & (TW_READ - 1)];
		__u32 cls = d->cls[ch] & (TW_NCLASSES - 1);
		__u32 st = state & (TW_NSTATES - 1);
		__u32 e = d->trans[st][cls];
		state = e & 0xff;
		__u32 act = (e >> TW_ACTION_SHIFT) & 0xff;
		*(volatile __u32 *)&j->wpos = pos + 1;
		if (act == TW_A_NONE)
			continue;  /* most bytes: a token, a target, an uninteresting value */
		if (act == TW_A_NAME) {  /* the next most common: a header-name byte */
			h = (h ^ d->lower[ch]) * TW_FNV_PRIME1;
			npos = (npos + 1) & 0xffff;
			continue;
		}
		if (act == TW_E_CHUNK_LINE && p->num && p->num < n - pos) {
			/* A chunk whose data ends inside this window: skip it here, not in a run of
			 * its own (a tail call per chunk ran pipelined chunked bodies out of budget). */
			*(volatile __u32 *)&j->wpos = pos + 1 + (__u32)p->num;
			p->num = 0;
			state = tw_opaque(j, TW_S_CCRLF) & 0xff;
			continue;
		}
		if (act >= TW_E_FIRST) {
			event = act;
			from = st;
			used = pos + 1;
			break;
		}
		switch (act) {
		case TW_A_NAME_FIRST:
			p->name0 = d->lower[ch];
			p->hkind = H_OTHER;
			h = (ctl->seed1 ^ d->lower[ch]) * TW_FNV_PRIME1;
			npos = tw_opaque(j, 1) & 0xffff;  /* a known 1, 2, 3 ... would split paths */
			break;
		case TW_A_NAME_END:
			p->h1 = h;
			p->pos = npos;
			tw_header_name(ctl, p, ui);
			if (p->hkind == H_OTHER) {
				/* Nothing to take from this value: skip to the line end. */
				p->prev_identity = 0;
				state = tw_opaque(j, TW_S_SKIP) & 0xff;
			} else if (p->vtoken) {
				/* A bearer token value follows: the next byte hands it to tw_token. */
				state = tw_opaque(j, TW_S_HTOK) & 0xff;
			}
			break;
		case TW_A_VALUE_BAD:
			p->vflags |= TW_F_BAD_BYTE;
			/* fall through */
		case TW_A_VALUE:
			tw_value_byte(c, p, d, ch, cls);
			if (p->vflags & TW_F_TOO_LONG) {
				/* Nothing more to take from an identity value over TW_VALUE_MAX: it
				 * ends here, and the rest of its line is skipped a word at a time. */
				tw_header_end(p);
				state = tw_opaque(j, TW_S_SKIP) & 0xff;
			}
			break;
		case TW_A_BAD:
			p->vflags |= TW_F_BAD_BYTE;
			break;
		case TW_A_LINE_END:
			tw_header_end(p);
			break;
		case TW_A_METHOD:
			p->word = (p->word << 8) | ch;
			break;
		case TW_A_METHOD_END:
			p->method = p->word;
			if (p->word == 0x48454144ull)  /* "HEAD" */
				p->mflags |= M_HEAD;
			break;
		case TW_A_STATUS:
			p->status = p->status * 10 + d->dval[ch];
			break;
		case TW_A_HEX:
			p->num = (p->num << 4) | d->hval[ch];
			break;
		case TW_A_FOLD:
			if (p->prev_identity)
				p->best_flags |= TW_F_FOLDED;
			break;
		case TW_A_NUM_RESET:
			p->num = 0;
			break;
		}
	}
	if (!event && used == n)
		used = j->wpos < n ? j->wpos : n;  /* out of iterations: the rest in the next run */
	p->state = state;
	if (state == TW_S_HNAME) {
		p->h1 = h;
		p->pos = npos;
	}
	if (event == TW_E_TOKEN) {
		/* The byte that raised it is the token's: tw_token reads from there. */
		used -= 1;
		p->state = TW_S_HTOK;
		j->mode = TW_PROG_TOKEN;
	}
	j->seg_off += used;
	j->remaining -= used;
	if (event == TW_E_HEAD_END) {
		tw_head_end(ctx, ctl, c, p, is_req, j);
		if (!j->emit)
			tw_skip_rest(p, j, is_req);  /* the body ends the syscall: no further run */
	} else if (event == TW_E_CHUNK_LINE) {
		if (p->num == 0) {
			p->state = TW_S_TS;  /* last chunk: trailers up to a blank line */
		} else if (p->num > 0xfffffffffffull) {
			tw_lose_on(c, TW_LOST_RESYNC);
			tw_resync(c, p, is_req);
		} else {
			p->skip = p->num;
			p->num = 0;
			p->after_skip = AFTER_CHUNK;
			p->state = TW_S_CCRLF;
		}
	} else if (event == TW_E_MESSAGE_END) {
		tw_message_reset(p, is_req);
	} else if (event == TW_E_DEAD) {
		/* A start line that is not HTTP/1.x (TLS, the HTTP/2 preface, binary) is
		 * no loss; losing track inside headers or a body is.  States before HS
		 * are the start-line states (kernel/dfa.py keeps that order). */
		if (from >= TW_S_HS) {
			tw_lose_on(c, TW_LOST_RESYNC);
			tw_resync(c, p, is_req);
		}
	}

done:
	if (j->remaining > 0 || j->emit) {
		if (j->tails < TW_MAX_TAILS) {
			j->tails++;
			tw_tail(ctx, j->emit ? TW_PROG_EMIT : (j->mode & 3));
			/* only reached when the tail call failed */
		}
		j->emit = 0;
		j->mode = TW_PROG_PARSE;
		if (j->remaining == 0)
			goto charge;
		/* The rest of this syscall was not parsed: the parser is out of step
		 * with the stream until a syscall starts a new message (tw_exit). */
		if (is_req && p->state >= TW_S_HS && p->state <= TW_S_HLF) {
			/* Cut inside a request's headers: count the request with the identity
			 * seen so far (its response still completes it). */
			tw_request_done(ctl, c, p, j->ts_ns, j);
		}
		/* After tw_request_done: the loss goes to the identity the cut request (and the
		 * CPU spent on it) was counted under. */
		tw_lose_on(c, TW_LOST_SCAN_BUDGET);
		tw_resync(c, p, is_req);
		p->skip = 0;
	}
charge:
	tw_charge_bytes(ctl, c, j);
	tw_charge_losses(ctl, c);
	/* Its CPU from now on goes to this connection's request; to nobody while the connection
	 * is out of step (its requests are not seen, so they must not be charged to the last one
	 * that was). */
	tw_thread_set(tw_in_step(c) ? c : 0);
	return 0;
}
