/* h2_frames.c: tw_h2, the HTTP/2 frame walker.
 * Included twice by http.c: tracepoint-type, and kprobe-type for the TLS uprobes when
 * TW_HAVE_TLS.  TW_TAIL_PROG names the program, tw_tail() calls through the matching program
 * array. */

/* HTTP/2: walk the frames of the job's bytes.  A DATA frame's payload is skipped by
 * arithmetic; frame headers and every other payload (HEADERS, CONTINUATION, SETTINGS,
 * RST_STREAM ...) are copied into tw_h2_events for user space, which splits the frames and
 * decodes HPACK (tenantwatch/h2).  The state between syscalls: p->skip (DATA payload left),
 * p->num (other payload left), p->pos and c->h2hdr (a frame header cut by a syscall). */
TW_TAIL_PROG(tw_h2)
{
	__u32 zero = 0;
	struct tw_job *j = tw_jobs.lookup(&zero);
	if (!j)
		return 0;
	__u64 ck = j->conn;
	struct tw_conn *c = tw_conns.lookup(&ck);
	if (!c)
		return 0;
	__u32 d = j->is_req & 1;
	struct tw_parser *p = d ? &c->req : &c->resp;
	struct tw_h2_event *ev = tw_h2_scratch.lookup(&zero);
	if (!ev)
		return 0;
	ev->conn = c->h2id;
	ev->ts_ns = j->ts_ns;
	ev->side = c->side;
	ev->is_req = d;
	ev->flags = c->h2mid ? TW_H2_F_MIDSTREAM : 0;
	ev->len = 0;
	if (c->h2 == 2)
		j->remaining = 0;  /* cut earlier: the frames cannot be found again */
	for (int it = 0; it < TW_H2_PIECES; it++) {
		if (j->remaining == 0)
			break;
		__u64 avail = j->seg_len - j->seg_off;
		if (avail > j->remaining)
			avail = j->remaining;
		if (avail == 0) {
			if (!tw_next_segment(j)) {
				j->remaining = 0;
				break;
			}
			continue;
		}
		if (p->skip) {  /* a DATA payload (or the rest of the preface) */
			__u64 take = p->skip < avail ? p->skip : avail;
			p->skip -= take;
			j->seg_off += take;
			j->remaining -= take;
			continue;
		}
		__u32 off = ev->len;
		if (off >= TW_H2_CHUNK) {
			tw_h2_flush(ctx, ev, c, d);
			continue;
		}
		if (p->num) {  /* a payload user space needs: copy it */
			__u64 take = p->num < avail ? p->num : avail;
			if (take > TW_H2_CHUNK - 1)
				take = TW_H2_CHUNK - 1;
			__u32 t = take;
			tw_barrier_var(t);
			t &= TW_H2_CHUNK - 1;
			if (t == 0)
				break;
			if (tw_read_user(ev->b + (off & (TW_H2_CHUNK - 1)), t,
					 (void *)(j->buf + j->seg_off)) != 0) {
				tw_lose(TW_LOST_READ_FAULT);
				j->remaining = 0;
				break;
			}
			ev->len = off + t;
			p->num -= t;
			j->seg_off += t;
			j->remaining -= t;
			continue;
		}
		/* A frame header: 9 bytes, maybe cut by the end of a syscall. */
		__u32 pos = p->pos;
		if (pos > 8)
			pos = 0;
		__u32 need = 9 - pos;
		__u32 t = avail < need ? (__u32)avail : need;
		tw_barrier_var(t);
		t &= 15;
		if (t == 0)
			break;
		if (tw_read_user(&c->h2hdr[d][pos & 15], t, (void *)(j->buf + j->seg_off)) != 0) {
			tw_lose(TW_LOST_READ_FAULT);
			j->remaining = 0;
			break;
		}
		j->seg_off += t;
		j->remaining -= t;
		pos += t;
		if (pos < 9) {
			p->pos = pos;
			continue;
		}
		p->pos = 0;
		__u8 *h = c->h2hdr[d];
		__builtin_memcpy(ev->b + (off & (TW_H2_CHUNK - 1)), h, 9);
		ev->len = off + 9;
		__u64 flen = ((__u64)h[0] << 16) | ((__u64)h[1] << 8) | h[2];
		if (h[3] == 0 || h[3] == 1 || h[3] == 9) {  /* DATA, HEADERS, CONTINUATION */
			__u32 sid = (((__u32)h[5] & 0x7f) << 24) | ((__u32)h[6] << 16) |
				    ((__u32)h[7] << 8) | h[8];
			if (sid)
				c->h2sid = sid;
		}
		if (h[3] == 0)
			p->skip = flen;  /* DATA: its payload never leaves the kernel */
		else
			p->num = flen;
	}
	if (ev->len)
		tw_h2_flush(ctx, ev, c, d);
	if (j->remaining > 0 && j->tails < TW_MAX_TAILS) {
		j->tails++;
		tw_tail(ctx, TW_PROG_H2);
	}
	if (j->remaining > 0) {
		/* Cut: the next frame boundary is unknown.  A skipped seq tells user space. */
		tw_lose(TW_LOST_SCAN_BUDGET);
		c->h2seq[d] += 1;
		c->h2 = 2;
	}
	tw_thread_set_h2(c);  /* its CPU goes to the stream of the last frame moved */
	return 0;
}
