/* token.c: bearer token values (jwt sources).
 * Included twice by http.c: tracepoint-type, and kprobe-type for the TLS uprobes when
 * TW_HAVE_TLS.  TW_TAIL_PROG names the program, tw_tail() calls through the matching program
 * array. */

/* The bytes of a bearer token value (the header line of a jwt source), up to the CR or
 * LF that ends it, which is left to tw_parse: hashed like any identity value, the first
 * TW_VALUE_MAX kept for the aggregate entry, all of them (up to TW_TOKEN_MAX) kept in
 * the connection's tw_tokbufs entry for tw_token_emit.  A loop with no DFA: far fewer
 * instructions per byte than tw_parse, so a token costs less than other header bytes. */
TW_TAIL_PROG(tw_token)
{
	__u32 zero = 0;
	struct tw_job *j = tw_jobs.lookup(&zero);
	if (!j)
		return 0;
	__u64 ck = j->conn;
	struct tw_conn *c = tw_conns.lookup(&ck);
	if (!c)
		return 0;
	struct tw_parser *p = j->is_req ? &c->req : &c->resp;
	struct tw_window *win = tw_scratch.lookup(&zero);
	if (!win)
		return 0;
	struct tw_token_event *tb = tw_tokbufs.lookup(&ck);
	if (!tb) {
		struct tw_token_event *t = tw_tok_tmpl.lookup(&zero);
		if (!t)
			return 0;
		t->len = 0;
		tw_tokbufs.update(&ck, t);
		tb = tw_tokbufs.lookup(&ck);
		if (!tb)
			return 0;
	}
	j->mode = TW_PROG_TOKEN;
	for (int s = 0; s < 4; s++) {  /* an empty iovec segment or two */
		if (j->seg_len - j->seg_off > 0 || !tw_next_segment(j))
			break;
	}
	__u64 avail = j->seg_len - j->seg_off;
	if (avail > j->remaining)
		avail = j->remaining;
	__u32 n = avail > TW_TOKEN_RUN ? TW_TOKEN_RUN : (__u32)avail;
	if (n == 0) {
		j->mode = TW_PROG_PARSE;
		goto next;
	}
	if (tw_read_user(win->b, n & (TW_TOKEN_RUN - 1) ? n & (TW_TOKEN_RUN - 1) : TW_TOKEN_RUN,
			 (void *)(j->buf + j->seg_off)) != 0) {
		tw_lose(TW_LOST_READ_FAULT);
		tw_resync(c, p, j->is_req);  /* these bytes are gone: the place in the stream too */
		j->remaining = 0;
		j->mode = TW_PROG_PARSE;
		goto next;
	}
	/* Leading whitespace is kept as part of the token (user space strips it): one
	 * branch less per byte.  No per-byte check depends on the length so far, so the
	 * verifier sees one state per byte: the room left bounds the loop instead. */
	__u32 start = p->vlen;
	__u32 room = start < TW_TOKEN_MAX ? TW_TOKEN_MAX - start : 0;
	__u32 m = n < room ? n : room;
	__u64 h1 = p->h1, h2 = p->h2;
	__u32 used = m;
	int ended = 0;
	tw_barrier_var(m);
	for (__u32 i = 0; i < TW_TOKEN_RUN; i++) {
		tw_barrier_var(i);
		if (i >= m)
			break;
		__u8 ch = win->b[i];
		if (ch == '\r' || ch == '\n') {
			used = i;  /* the line end is tw_parse's */
			ended = 1;
			break;
		}
		tb->b[(start + i) & (TW_TOKEN_MAX - 1)] = ch;
		h1 = (h1 ^ ch) * TW_FNV_PRIME1;
		h2 = (h2 ^ ch) * TW_FNV_PRIME2 + 1;
	}
	__u32 vlen = start + used;
	p->vlen = vlen;
	p->h1 = h1;
	p->h2 = h2;
	tb->len = vlen;
	if (start < TW_VALUE_MAX)  /* the aggregate entry's copy: the first TW_VALUE_MAX bytes */
		__builtin_memcpy(c->vbuf[p->vcur & 1], tb->b, TW_VALUE_MAX);
	if (ended || used == room) {
		p->state = vlen ? TW_S_HVAL : TW_S_HOWS;
		if (!ended) {
			/* Over TW_TOKEN_MAX: the value ends here, the rest of its line is skipped. */
			p->vflags |= TW_F_TOO_LONG;
			tw_header_end(p);
			p->state = TW_S_SKIP;
		}
		j->mode = TW_PROG_PARSE;
	} else {
		p->state = TW_S_HTOK;  /* the value goes on in the next window or syscall */
	}
	j->seg_off += used;
	j->remaining -= used;
next:
	if (j->tails < TW_MAX_TAILS) {
		j->tails++;
		tw_tail(ctx, j->mode & 3);
	}
	/* The tail call failed: count it like tw_parse's out-of-budget case. */
	j->mode = TW_PROG_PARSE;
	if (j->remaining > 0) {
		tw_lose_on(c, TW_LOST_SCAN_BUDGET);
		struct tw_ctl *ctl = tw_ctl.lookup(&zero);
		if (ctl)
			tw_charge_losses(ctl, c);
		tw_resync(c, p, j->is_req);
		p->skip = 0;
	}
	return 0;
}

/* Send a long bearer token to user space, once per distinct token (tw_tok_seen) and
 * rate-limited per CPU, then parse on. */
TW_TAIL_PROG(tw_token_emit)
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
	j->emit = 0;
	__u64 key = j->emit_key;
	__u64 now = bpf_ktime_get_ns();
	__u64 *sent = tw_tok_seen.lookup(&key);
	if (sent && now - *sent < TW_TOKEN_RESEND_NS)
		goto next;  /* user space has it */
	struct tw_token_event *tb = tw_tokbufs.lookup(&ck);
	if (!c || !tb || tb->len != j->emit_len) {
		tw_lose_key(ctl, TW_LOST_TOKEN_INCOMPLETE, key, c ? c->side : TW_SIDE_SERVER, c);
		goto next;
	}
	struct tw_rate *r = tw_tok_rate.lookup(&zero);
	if (!r)
		goto next;
	if (!tw_rate_take(r, now, ctl->token_per_cpu_per_sec)) {
		tw_lose_key(ctl, TW_LOST_TOKEN_RATE_LIMITED, key, c->side, c);
		goto next;
	}
	tb->key = key;
	tb->side = c->side;
#ifdef TW_HAVE_RINGBUF
	int err = tw_token_events.ringbuf_output(tb, sizeof(*tb), 0);
#else
	int err = tw_token_events.perf_submit(ctx, tb, sizeof(*tb));
#endif
	if (err != 0) {
		tw_lose_key(ctl, TW_LOST_TOKEN_BUFFER_FULL, key, c->side, c);
		goto next;
	}
	tw_tok_seen.update(&key, &now);
next:
	if (j->tails < TW_MAX_TAILS) {
		j->tails++;
		tw_tail(ctx, TW_PROG_PARSE);
	}
	return 0;
}
