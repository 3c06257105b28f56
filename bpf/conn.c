/* conn.c: syscall arguments, connection state, and the job a syscall's bytes become
 * (included by http.c). */

static __always_inline int tw_stash(__u32 fd, __u64 buf, __u64 iovcnt, __u32 is_write)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 slot = (__u32)id & (TW_MAX_THREADS - 1);
	struct tw_args *a = tw_args.lookup(&slot);
	if (!a)
		return 0;
	if (a->id && a->id != id)
		tw_lose(TW_LOST_ARGS_MAP_FULL);  /* another traced thread holds the slot */
	a->id = id;
	a->buf = buf;
	a->iovcnt = iovcnt;
	a->fd = fd;
	a->is_write = is_write;
	return 0;
}

/* The arguments this thread stashed at syscall entry, taken out of its slot. */
static __always_inline int tw_unstash(__u64 id, struct tw_args *out)
{
	__u32 slot = (__u32)id & (TW_MAX_THREADS - 1);
	struct tw_args *a = tw_args.lookup(&slot);
	if (!a || a->id != id)
		return 0;
	*out = *a;
	a->id = 0;
	return 1;
}

/* The word of tw_fdmarks.bits that holds fd's bit for this direction (fd < TW_FILE_FDS). */
static __always_inline __u32 tw_fd_word(__u32 fd, __u32 is_write)
{
	__u32 w = (is_write & 1) * (TW_FILE_FDS / 64) + (fd >> 6);
	tw_barrier_var(w);  /* keep the mask: clang folds it into the shifts, the verifier needs it */
	return w & (2 * TW_FILE_FDS / 64 - 1);
}

/* Was fd of this process found to carry no HTTP in this direction, this tick? */
static __always_inline int tw_fd_nohttp(__u32 fd, __u32 is_write)
{
	if (fd >= TW_FILE_FDS)
		return 0;
	__u32 zero = 0;
	struct tw_ctl *ctl = tw_ctl.lookup(&zero);
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 slot = tgid & (TW_FILE_SLOTS - 1);
	struct tw_fdmarks *m = tw_nohttp.lookup(&slot);
	if (!ctl || !m)
		return 0;
	if (m->tgid != tgid || m->gen != ctl->active)
		return 0;
	return (m->bits[tw_fd_word(fd, is_write)] >> (fd & 63)) & 1;
}

/* fd of process tgid carries no HTTP in this direction (its bytes were not a message start):
 * its syscalls in that direction stop at entry until the next tick. */
static __always_inline void tw_fd_mark(__u32 tgid, __u32 fd, __u32 is_write)
{
	if (fd >= TW_FILE_FDS)
		return;
	__u32 zero = 0;
	struct tw_ctl *ctl = tw_ctl.lookup(&zero);
	__u32 slot = tgid & (TW_FILE_SLOTS - 1);
	struct tw_fdmarks *m = tw_nohttp.lookup(&slot);
	if (!ctl || !m)
		return;
	if (m->tgid != tgid || m->gen != ctl->active) {
		/* Another process's slot, or marks of an earlier tick: they start again. */
		m->tgid = tgid;
		m->gen = ctl->active;
		for (int i = 0; i < 2 * TW_FILE_FDS / 64; i++)
			m->bits[i] = 0;
	}
	m->bits[tw_fd_word(fd, is_write)] |= 1ull << (fd & 63);
}

/* A connection on fd (ck = tgid << 32 | fd): its marks go. */
static __always_inline void tw_fd_unmark(__u64 ck)
{
	__u32 fd = (__u32)ck;
	if (fd >= TW_FILE_FDS)
		return;
	__u32 tgid = ck >> 32;
	__u32 slot = tgid & (TW_FILE_SLOTS - 1);
	struct tw_fdmarks *m = tw_nohttp.lookup(&slot);
	if (!m || m->tgid != tgid)
		return;
	__u64 bit = 1ull << (fd & 63);
	__u32 r = tw_fd_word(fd, 0), w = tw_fd_word(fd, 1);
	if ((m->bits[r] | m->bits[w]) & bit) {
		m->bits[r] &= ~bit;
		m->bits[w] &= ~bit;
	}
}

static __always_inline int tw_enter(__u32 fd, __u64 buf, __u64 iovcnt, __u32 is_write)
{
	if (!tw_is_target() || tw_fd_nohttp(fd, is_write))
		return 0;
	return tw_stash(fd, buf, iovcnt, is_write);
}

static __always_inline int tw_enter_msg(__u32 fd, __u64 msg, __u32 is_write)
{
	if (!tw_is_target() || tw_fd_nohttp(fd, is_write))
		return 0;
	/* struct user_msghdr: msg_iov at offset 16, msg_iovlen at offset 24. */
	__u64 iov[2] = {};
	if (tw_read_user(iov, sizeof(iov), (void *)(msg + 16)) != 0) {
		tw_lose(TW_LOST_READ_FAULT);
		return 0;
	}
	return tw_enter(fd, iov[0], iov[1] ? iov[1] : 1, is_write);
}

static __always_inline struct tw_conn *tw_conn_new(__u64 ck, __u32 side)
{
	__u32 zero = 0;
	struct tw_conn *t = tw_conn_tmpl.lookup(&zero);
	if (!t)
		return 0;
	/* No memset: nothing else writes the template, and every field set here is set on each
	 * call, so the rest stays zero (a memset of a struct this size is a call bcc's clang
	 * cannot emit). */
	t->side = side;
	t->open_ns = bpf_ktime_get_ns();
	t->req.best_src = -1;
	t->resp.best_src = -1;
	t->req.cur_src = -1;
	t->resp.cur_src = -1;
	t->resp.state = TW_S_RS0;
	t->resp.vcur = 2;  /* the served-tenant value's rows of vbuf */
	tw_fd_unmark(ck);
	if (tw_conns.update(&ck, t) != 0) {
		tw_lose(TW_LOST_CONN_MAP_FULL);
		return 0;
	}
	tw_conn_counted(0);
	return tw_conns.lookup(&ck);
}

/* Does this look like the start of a request line?  3..7 capitals and a space. */
static __always_inline int tw_request_line_start(const __u8 *b)
{
	int i;
	for (i = 0; i < 8; i++) {
		if (b[i] == ' ')
			break;
		if (b[i] < 'A' || b[i] > 'Z')
			return 0;
	}
	return i >= 3 && i <= 7;
}

static __always_inline int tw_looks_like_request(__u64 buf)
{
	__u8 b[8] = {};
	if (tw_read_user(b, sizeof(b), (void *)buf) != 0)
		return 0;
	return tw_request_line_start(b);
}

/* Does this start a status line ("HTTP/1.")? */
static __always_inline int tw_looks_like_status(__u64 buf)
{
	__u64 w = 0;
	if (tw_read_user(&w, sizeof(w), (void *)buf) != 0)
		return 0;
	return (w & 0xffffffffffffffull) == 0x2e312f50545448ull;  /* little-endian */
}

/* An unknown fd (a file, a pipe, or a connection older than the daemon) is tracked only
 * when its bytes start a request head, or HTTP/2 frames; the direction gives the side.
 * Adopted: its values are not trusted before its first HTTP response (TW_F_ADOPTED).
 * Bytes that are neither (or a leg capture.sides leaves out) mark the fd as carrying no HTTP
 * in this direction for the rest of the tick (tw_fd_mark): an access log's writes then cost
 * a bitmap test at entry, not this read. */
static __always_inline struct tw_conn *tw_conn_adopt(__u64 ck, __u64 first, __u64 first_len,
						     __u32 is_write)
{
	int h2 = 0;
	if (!tw_side_traced(is_write ? TW_SIDE_CLIENT : TW_SIDE_SERVER)) {
		tw_fd_mark(ck >> 32, (__u32)ck, is_write);
		return 0;
	}
	if (first_len < 8)
		return 0;
	__u8 b[9] = {};  /* one read for both checks: most unknown fds are files (an access log) */
	if (tw_read_user(b, first_len < 9 ? 8 : 9, (void *)first) != 0)
		return 0;
	if (!tw_request_line_start(b)) {
		/* HTTP/2 frames: counted in user space, never decoded (TW_H2_F_MIDSTREAM).  Both
		 * peers send frames, so their direction does not tell the leg: only where both legs
		 * are traced, else every connection of the untraced leg (an upstream nginx speaks
		 * HTTP/2 to, grpc_pass) would be adopted as the traced one and counted twice. */
		if (TW_TRACE_SIDES != 3 || !tw_looks_like_h2_frames(first, first_len, b)) {
			tw_fd_mark(ck >> 32, (__u32)ck, is_write);
			return 0;
		}
		h2 = 1;
	}
	struct tw_conn *c = tw_conn_new(ck, is_write ? TW_SIDE_CLIENT : TW_SIDE_SERVER);
	if (!c)
		tw_thread_set(0);  /* a message on a connection we cannot track: nobody's CPU */
	if (c) {
		c->adopted = 1;
		if (h2) {
			tw_h2_begin(c, first_len);
			c->h2mid = 1;
		}
	}
	return c;
}

/* Fill the per-CPU job for bytes that moved on connection c (from a syscall, or from SSL_read/
 * SSL_write) and give the tw_progs index to tail-call: TW_PROG_PARSE, TW_PROG_H2, or -1 when
 * there is nothing to parse (a connection waiting to resync, or bytes that are all body). */
/* On a checked side (tenancy.response_check), a request that starts a syscall: keep its
 * request line's first TW_TARGET_BYTES bytes for a breach event.  Here, once per syscall, not in
 * tw_parse's loop (where even a few stores cost the verifier tens of thousands of
 * instructions); a request that starts later in the syscall (pipelined) keeps none. */
static __always_inline void tw_request_line_peek(struct tw_conn *c, struct tw_parser *p,
						 __u64 first, __u64 first_len)
{
	__u32 zero = 0;
	struct tw_ctl *ctl = tw_ctl.lookup(&zero);
	if (!ctl || !((ctl->check_sides >> (c->side & 1)) & 1) || first_len == 0)
		return;
	__u32 n = first_len < TW_TARGET_BYTES ? first_len : TW_TARGET_BYTES;
	if (tw_read_user(p->target, n & (2 * TW_TARGET_BYTES - 1), (void *)first) != 0)
		return;
	p->tlen = n;
}

static __always_inline int tw_job_start(struct tw_conn *c, __u64 ck, __u64 iov, __u32 iovcnt,
					__u64 first, __u64 first_len, __u64 total,
					__u32 is_write, __u64 now)
{
	__u32 zero = 0;
	struct tw_job *j = tw_jobs.lookup(&zero);
	if (!j)
		return -1;
	j->conn = ck;
	j->ts_ns = now;
	j->iov = iov;
	j->iovcnt = iovcnt;
	j->iov_idx = 0;
	j->buf = first;
	j->seg_len = first_len;
	j->seg_off = 0;
	j->remaining = total;
	j->total = total;
	j->is_write = is_write;
	/* server side: requests are read; client side: requests are written */
	j->is_req = (c->side == TW_SIDE_SERVER) ? !is_write : is_write;
	j->tails = 0;
	j->charged = 0;
	j->mode = TW_PROG_PARSE;
	j->emit = 0;
	struct tw_parser *p = j->is_req ? &c->req : &c->resp;
	if (p->state == TW_S_RESYNC) {
		/* Lost our place earlier: wait for bytes that start a message (for requests, not
		 * before the exchange in flight has ended: tw_resync). */
		if (j->is_req && c->req_hold) {
			tw_thread_set(0);  /* work we cannot see: nobody's (tw_in_step) */
			return -1;
		}
		int start = first_len >= 8 &&
			    (j->is_req ? tw_looks_like_request(first) : tw_looks_like_status(first));
		if (!start) {
			tw_thread_set(0);
			return -1;
		}
		tw_message_reset(p, j->is_req);
		p->skip = 0;
	}
	if (tw_h2_detect(c, first, first_len, j->is_req))
		j->mode = TW_PROG_H2;
	else if (tw_skip_rest(p, j, j->is_req)) {
		/* All body (a large response written in pieces): nothing to parse, no tail call. */
		struct tw_ctl *ctl = tw_ctl.lookup(&zero);
		if (ctl)
			tw_charge_bytes(ctl, c, j);
		tw_thread_set(tw_in_step(c) ? c : 0);
		return -1;
	}
	if (j->is_req && j->mode == TW_PROG_PARSE && p->state == TW_S_RQ0 && !p->skip)
		tw_request_line_peek(c, p, first, first_len);
	return j->mode;
}
