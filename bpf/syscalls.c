/* syscalls.c: what the syscall tracepoints of http.c do at exit, accept, connect and close
 * (included by http.c, after tls.c). */

static __always_inline int tw_exit(void *ctx, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tw_args args;
	if (!tw_unstash(id, &args) || ret <= 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	tw_cpu_mark(args.is_write, now);  /* the work up to here: whose (cpu.c) */
	__u32 tgid = id >> 32;
	__u64 ck = ((__u64)tgid << 32) | args.fd;
	__u64 first = args.buf;
	__u64 first_len = ret;
	if (args.iovcnt) {
		struct tw_iovec v = {};
		if (tw_read_user(&v, sizeof(v), (void *)args.buf) != 0) {
			tw_lose(TW_LOST_READ_FAULT);
			return 0;
		}
		first = v.base;
		first_len = v.len < (__u64)ret ? v.len : (__u64)ret;  /* bytes, not room */
	}
	struct tw_conn *c = tw_conns.lookup(&ck);
	if (tw_ssl_syscall(id, ck, c))
		return 0;  /* TLS records: the plaintext is parsed at SSL_read/SSL_write (tls.c) */
	if (!c)
		c = tw_conn_adopt(ck, first, first_len, args.is_write);
	if (!c)
		return 0;
	int prog = tw_job_start(c, ck, args.iovcnt ? args.buf : 0, args.iovcnt, first, first_len,
				ret, args.is_write, now);
	if (prog >= 0)
		tw_progs.call(ctx, prog);
	return 0;
}

/* sendfile: body bytes from a file; they only advance a response body skip. */
static __always_inline int tw_sendfile_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tw_args a;
	if (!tw_unstash(id, &a) || ret <= 0)
		return 0;
	tw_cpu_mark(1, bpf_ktime_get_ns());
	__u32 fd = a.fd;
	__u64 ck = (id & 0xffffffff00000000ull) | fd;
	struct tw_conn *c = tw_conns.lookup(&ck);
	if (!c)
		return 0;
	struct tw_parser *p = c->side == TW_SIDE_SERVER ? &c->resp : &c->req;
	__u64 left = tw_skip(p, ret);
	if (left && !p->skip && p->after_skip == AFTER_MESSAGE)
		tw_message_reset(p, c->side != TW_SIDE_SERVER);
	__u32 zero = 0;
	struct tw_ctl *ctl = tw_ctl.lookup(&zero);
	if (ctl && c->opened) {
		struct tw_agg_val *v = tw_agg_get(ctl, c->cur_key, c->side, c, &c->req, 0);
		if (v)
			__sync_fetch_and_add(&v->tx_bytes, ret);
	}
	return 0;
}

/* A new connection on this fd: whatever was there before is gone. */
static __always_inline int tw_reset_fd(__u32 fd, __u32 side)
{
	__u64 ck = (bpf_get_current_pid_tgid() & 0xffffffff00000000ull) | fd;
	if (tw_conns.delete(&ck) == 0)
		tw_conn_counted(1);
	tw_fd_unmark(ck);
	if (!tw_side_traced(side))
		return 0;  /* capture.sides: this leg is not followed */
	tw_conn_new(ck, side);
	if (side == TW_SIDE_SERVER)
		tw_thread_set(0);  /* accepting is nobody's request yet */
	return 0;
}

/* close: requests still in flight end without a response ("none"). */
static __always_inline int tw_close(void *ctx, __u32 fd)
{
	if (!tw_is_target())
		return 0;
	__u64 ck = (bpf_get_current_pid_tgid() & 0xffffffff00000000ull) | fd;
	tw_fd_unmark(ck);
	struct tw_conn *c = tw_conns.lookup(&ck);
	if (!c)
		return 0;
	__u32 zero = 0;
	if (c->h2) {  /* user space forgets the connection's HTTP/2 state */
		struct tw_h2_event *ev = tw_h2_scratch.lookup(&zero);
		if (ev) {
			ev->conn = c->h2id;
			ev->ts_ns = bpf_ktime_get_ns();
			ev->side = c->side;
			ev->is_req = 1;
			ev->flags = TW_H2_F_CLOSED;
			ev->len = 0;
			tw_h2_flush(ctx, ev, c, 1);
		}
	}
	struct tw_ctl *ctl = tw_ctl.lookup(&zero);
	if (ctl) {
		for (int i = 0; i < TW_FIFO; i++) {
			__u32 head = c->fifo_head;
			if (head == c->fifo_tail)
				break;
			struct tw_inflight *f = &c->fifo[head & (TW_FIFO - 1)];
			tw_count_end(ctl, c, f->key, TW_CLASS_NONE, 0, 0, 0);
			c->fifo_head = head + 1;
		}
		if (c->opened)
			tw_conn_close(ctl, c, bpf_ktime_get_ns());
	}
	if (tw_conns.delete(&ck) == 0)
		tw_conn_counted(1);
	return 0;
}
