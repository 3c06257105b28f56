/* probe_floor.c: what attaching costs, before any work (bench/probe_floor.py).
 *
 * Two ways to see the same syscalls, each program doing only what every tenantwatch probe
 * must do first: ask "is the current process a target?" (one array lookup in a bitmap of
 * tgids) and, for a target's syscall of interest, stash/unstash one slot.  No parsing.
 *   FLOOR_SYSCALL_TP: the per-syscall tracepoints bpf/http.c attaches (syscalls:sys_enter_X /
 *                     sys_exit_X: perf-event tracepoints, a record built per hit).
 *   FLOOR_RAW_TP:     raw_syscalls:sys_enter / sys_exit as raw tracepoints (no record; every
 *                     syscall of every process runs the program, which filters on the number).
 * Both also attach sched_switch the same way.
 */
#include <uapi/linux/ptrace.h>

#define FLOOR_WORDS 65536
#define FLOOR_THREADS 16384

BPF_ARRAY(floor_bits, __u64, FLOOR_WORDS);
struct floor_args {
	__u64 id;
	__u64 fd;
};
BPF_ARRAY(floor_args, struct floor_args, FLOOR_THREADS);
BPF_PERCPU_ARRAY(floor_hits, __u64, 4);  /* 0 enter, 1 exit, 2 switch */

static __always_inline int floor_is_target(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 w = tgid >> 6;
	__u64 *bits = floor_bits.lookup(&w);
	return bits && ((*bits >> (tgid & 63)) & 1);
}

static __always_inline void floor_hit(__u32 i)
{
	__u64 *n = floor_hits.lookup(&i);
	if (n)
		*n += 1;
}

static __always_inline int floor_enter(__u64 fd)
{
	if (!floor_is_target())
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 slot = (__u32)id & (FLOOR_THREADS - 1);
	struct floor_args *a = floor_args.lookup(&slot);
	if (a) {
		a->id = id;
		a->fd = fd;
	}
	floor_hit(0);
	return 0;
}

static __always_inline int floor_exit(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 slot = (__u32)id & (FLOOR_THREADS - 1);
	struct floor_args *a = floor_args.lookup(&slot);
	if (!a || a->id != id)
		return 0;
	a->id = 0;
	floor_hit(1);
	return 0;
}

#ifdef FLOOR_SYSCALL_TP
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return floor_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return floor_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return floor_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return floor_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return floor_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return floor_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return floor_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return floor_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendfile64) { return floor_enter(args->out_fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_close) { return floor_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_connect) { return floor_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return floor_exit(); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return floor_exit(); }
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { return floor_exit(); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return floor_exit(); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return floor_exit(); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return floor_exit(); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return floor_exit(); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return floor_exit(); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendfile64) { return floor_exit(); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return floor_exit(); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return floor_exit(); }
TRACEPOINT_PROBE(sched, sched_switch)
{
	if (floor_is_target())
		floor_hit(2);
	return 0;
}
#endif

#ifdef FLOOR_RAW_TP
/* x86_64 syscall numbers (the uapi ABI, fixed). */
static __always_inline int floor_wanted(long nr)
{
	switch (nr) {
	case 0: case 1: case 3: case 19: case 20: case 40: case 42: case 43:
	case 44: case 45: case 46: case 47: case 288:
		return 1;
	}
	return 0;
}

RAW_TRACEPOINT_PROBE(sys_enter)
{
	/* args: struct pt_regs *regs, long id */
	if (!floor_wanted((long)ctx->args[1]) || !floor_is_target())
		return 0;
	/* The arguments, as http.c would need them: di, si, dx of the x86_64 pt_regs
	 * (offsets 112, 104, 96: the syscall ABI frame, not a kernel-internal struct). */
	__u64 regs[3] = {};
	bpf_probe_read(regs, sizeof(regs), (void *)(ctx->args[0] + 96));
	return floor_enter(regs[2]);
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
	return floor_exit();
}

RAW_TRACEPOINT_PROBE(sched_switch)
{
	if (floor_is_target())
		floor_hit(2);
	return 0;
}
#endif

/* TLS: uprobes (attached by probe_floor.py at the public functions or at the internal
 * functions of kernel/ssl_points.py), the stash and unstash bpf/tls.c does first. */
int floor_uprobe_enter(struct pt_regs *ctx)
{
	return floor_enter(PT_REGS_PARM1(ctx));
}

int floor_uprobe_return(struct pt_regs *ctx)
{
	return floor_exit();
}
