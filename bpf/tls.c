/* tls.c: HTTP inside TLS, from uprobes on the target's libssl (included by http.c).
 *
 * SSL_read/SSL_read_ex/SSL_write/SSL_write_ex of the target are probed at entry (the
 * buffer, and the SSL object) and at return (how many plaintext bytes moved).  The
 * plaintext goes through the same parser as plain HTTP: tw_ssl_return fills the per-CPU
 * job and tail-calls the kprobe-type copy of tw_parse (tw_progs_k).
 *
 * Which socket an SSL object uses is learned from the syscalls it makes: a read or write
 * syscall of a thread that is inside an SSL call belongs to that SSL object
 * (tw_ssl_syscall, called from tw_exit).  Those syscalls carry TLS records, never parsed;
 * nor are the syscalls of a connection known to be TLS (handshakes, alerts).
 */

struct tw_ssl_args {
	__u64 id;    /* pid_tgid of the thread inside the SSL call; 0 when the slot is free */
	__u64 ssl;   /* the SSL object */
	__u64 buf;   /* plaintext buffer */
	__u64 nptr;  /* _ex variants: where the byte count is written; 0 otherwise */
	__u32 is_write;
	__u32 _pad;
};

struct tw_ssl_key {
	__u64 ssl;
	__u32 tgid;
	__u32 _pad;
};

/* One slot per thread id modulo TW_MAX_THREADS, as tw_args. */
BPF_ARRAY(tw_ssl_args, struct tw_ssl_args, TW_MAX_THREADS);
/* SSL object -> its socket (tgid << 32 | fd).  LRU: objects of closed connections age out. */
BPF_F_TABLE("lru_hash", struct tw_ssl_key, __u64, tw_ssl_fds, TW_MAX_CONNS, 0);

/* Called by tw_exit for every target syscall that moved bytes: 1 when the syscall's bytes
 * are TLS records (do not parse them). */
/* The first plaintext of a connection: whatever the syscall path parsed before was the
 * handshake (TLS records), so both parsers start over. */
static __always_inline void tw_ssl_begin(struct tw_conn *c)
{
	c->tls = 1;
	tw_message_reset(&c->req, 1);
	tw_message_reset(&c->resp, 0);
	c->req.skip = 0;
	c->resp.skip = 0;
}

static __always_inline int tw_ssl_syscall(__u64 id, __u64 ck, struct tw_conn *c)
{
#ifndef TW_HAVE_TLS
	return 0;  /* TLS capture off: no lookup on the syscall path */
#endif
	__u32 slot = (__u32)id & (TW_MAX_THREADS - 1);
	struct tw_ssl_args *a = tw_ssl_args.lookup(&slot);
	if (a && a->id == id) {
		struct tw_ssl_key k = {.ssl = a->ssl, .tgid = id >> 32};
		tw_ssl_fds.update(&k, &ck);
		if (c && !c->tls)
			tw_ssl_begin(c);
		return 1;
	}
	return c && c->tls;
}

static __always_inline int tw_ssl_stash(__u64 ssl, __u64 buf, __u64 nptr, __u32 is_write)
{
	if (!tw_is_target())
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 slot = (__u32)id & (TW_MAX_THREADS - 1);
	struct tw_ssl_args *a = tw_ssl_args.lookup(&slot);
	if (!a)
		return 0;
	if (a->id && a->id != id)
		tw_lose(TW_LOST_ARGS_MAP_FULL);
	a->id = id;
	a->ssl = ssl;
	a->buf = buf;
	a->nptr = nptr;
	a->is_write = is_write;
	return 0;
}

/* SSL_set_fd(ssl, fd): the socket of an SSL object, known before its handshake.  Without it a
 * request that arrives with the client's Finished (read by SSL_do_handshake) would reach the
 * first SSL_read with no syscall to learn the fd from, and a reused SSL address would point at
 * the old connection's socket. */
int tw_ssl_set_fd_enter(struct pt_regs *ctx)
{
	if (!tw_is_target())
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct tw_ssl_key k = {.ssl = PT_REGS_PARM1(ctx), .tgid = id >> 32};
	__u64 ck = (id & 0xffffffff00000000ull) | (__u32)PT_REGS_PARM2(ctx);
	tw_ssl_fds.update(&k, &ck);
	return 0;
}

int tw_ssl_read_enter(struct pt_regs *ctx)
{
	return tw_ssl_stash(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, 0);
}

int tw_ssl_read_ex_enter(struct pt_regs *ctx)
{
	return tw_ssl_stash(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM4(ctx), 0);
}

int tw_ssl_write_enter(struct pt_regs *ctx)
{
	return tw_ssl_stash(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, 1);
}

int tw_ssl_write_ex_enter(struct pt_regs *ctx)
{
	return tw_ssl_stash(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM4(ctx), 1);
}

/* Return of any of the four: parse the plaintext that moved. */
int tw_ssl_return(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 slot = (__u32)id & (TW_MAX_THREADS - 1);
	struct tw_ssl_args *a = tw_ssl_args.lookup(&slot);
	if (!a || a->id != id)
		return 0;
	struct tw_ssl_args args = *a;
	a->id = 0;
	/* All four return an int: -1 is 0xffffffff in rax (the upper half is not sign-extended). */
	int ret = (int)PT_REGS_RC(ctx);
	__u64 n = 0;
	if (args.nptr) {
		if (ret == 1 && tw_read_user(&n, sizeof(n), (void *)args.nptr) != 0)
			n = 0;
	} else if (ret > 0) {
		n = ret;
	}
	if (n == 0)
		return 0;
	struct tw_ssl_key k = {.ssl = args.ssl, .tgid = id >> 32};
	__u64 *ckp = tw_ssl_fds.lookup(&k);
	if (!ckp) {
		/* No syscall of this SSL object seen yet (a connection older than the daemon
		 * whose records were buffered): nothing to tie the bytes to. */
		tw_lose(TW_LOST_TLS_NO_FD);
		return 0;
	}
	__u64 ck = *ckp;
	struct tw_conn *c = tw_conns.lookup(&ck);
	if (!c) {
		c = tw_conn_adopt(ck, args.buf, n, args.is_write);
		if (!c)
			return 0;
		c->tls = 1;
	} else if (!c->tls) {
		tw_ssl_begin(c);  /* no syscall inside an SSL call yet (the fd came from SSL_set_fd) */
	}
	int prog = tw_job_start(c, ck, 0, 0, args.buf, n, n, args.is_write, bpf_ktime_get_ns());
	if (prog >= 0)
		tw_progs_k.call(ctx, prog);
	return 0;
}
