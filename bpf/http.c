/* http.c: per-tenant HTTP/1.x attribution on the target's sockets (bcc dialect): the module's
 * wiring.  The loader hands bcc this file with its `#include "X.c"` lines expanded (bcc
 * rewrites map calls only in the file it is given); each concern is a file of its own:
 *
 *   include/tw_abi.h   what crosses to user space      include/tw_state.h  kernel-side structs
 *   maps.c             the maps                        targets.c           traced processes
 *   cpu.c              on-CPU time per tenant          aggregate.c         counting
 *   parser.c           the HTTP/1.x parser's helpers   parse.c             tw_parse, its loop
 *   token.c            bearer tokens (tw_token ...)    h2.c, h2_frames.c   HTTP/2
 *   conn.c             connections, jobs               tls.c               libssl uprobes
 *   syscalls.c         what the tracepoints below do
 *
 * Syscall tracepoints on target processes stash the arguments at entry and, at exit, hand
 * the bytes that really moved to tw_parse (tail calls), which finds the identity headers,
 * counts each request head in the active aggregate map (double-buffered: user space drains
 * the other one each tick), and on the response head records status class and latency in
 * exact buckets.  No per-request event goes to user space.  docs/pipeline.md has the flow.
 *
 * Settings come as -D defines (TW_MAX_CONNS, TW_ITERS, TW_HAVE_*) and the tw_ctl, tw_dfa
 * and tw_pfx arrays.
 */
#include <uapi/linux/ptrace.h>
#include "tw_abi.h"
#include "tw_dfa.h"
#include "tw_state.h"

#include "maps.c"
#include "targets.c"
#include "cpu.c"
#include "aggregate.c"
#include "parser.c"
#include "h2.c"

/* The tail-called programs (tw_progs), tracepoint-type: the syscall tracepoints call them. */
static __always_inline void tw_tail_tp(void *ctx, __u32 prog)
{
	tw_progs.call(ctx, prog);
}
#define TW_TAIL_PROG(name) int name(void *ctx)
#define tw_tail(ctx, prog) tw_tail_tp(ctx, prog)
#include "parse.c"
#include "token.c"
#include "h2_frames.c"
#undef TW_TAIL_PROG
#undef tw_tail

#ifdef TW_HAVE_TLS
/* The same programs, kprobe-type (NAME_k, in tw_progs_k): a tail call must stay within one
 * program type, and the TLS uprobes are kprobe-type. */
static __always_inline void tw_tail_k(void *ctx, __u32 prog)
{
	tw_progs_k.call(ctx, prog);
}
#define TW_TAIL_PROG(name) int name##_k(void *ctx)
#define tw_tail(ctx, prog) tw_tail_k(ctx, prog)
#include "parse.c"
#include "token.c"
#include "h2_frames.c"
#undef TW_TAIL_PROG
#undef tw_tail
#endif

#include "conn.c"
#include "tls.c"
#include "syscalls.c"

/* ---------------------------------------------------------------- tracepoints */

TRACEPOINT_PROBE(syscalls, sys_enter_read) { return tw_enter(args->fd, (__u64)args->buf, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return tw_enter(args->fd, (__u64)args->ubuf, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return tw_enter(args->fd, (__u64)args->vec, args->vlen, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return tw_enter_msg(args->fd, (__u64)args->msg, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return tw_enter(args->fd, (__u64)args->buf, 0, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return tw_enter(args->fd, (__u64)args->buff, 0, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return tw_enter(args->fd, (__u64)args->vec, args->vlen, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return tw_enter_msg(args->fd, (__u64)args->msg, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return tw_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return tw_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { return tw_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return tw_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return tw_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return tw_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return tw_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return tw_exit(args, args->ret); }

/* sendfile: body bytes from a file; they only advance a response body skip. */
TRACEPOINT_PROBE(syscalls, sys_enter_sendfile64)
{
	if (!tw_is_target())
		return 0;
	return tw_stash(args->out_fd, 0, 0, 1);
}

TRACEPOINT_PROBE(syscalls, sys_exit_sendfile64) { return tw_sendfile_exit(args->ret); }

/* accept, connect: a new connection on this fd, whatever was there before is gone. */
TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
	if (args->ret < 0 || !tw_is_target())
		return 0;
	return tw_reset_fd(args->ret, TW_SIDE_SERVER);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
	if (args->ret < 0 || !tw_is_target())
		return 0;
	return tw_reset_fd(args->ret, TW_SIDE_SERVER);
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
	if (!tw_is_target())
		return 0;
	return tw_reset_fd(args->fd, TW_SIDE_CLIENT);
}

/* close: requests still in flight end without a response ("none"). */
TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
	if (!tw_is_target())
		return 0;
	return tw_close(args, args->fd);
}

/* ---------------------------------------------------------------- targets */

/* A target's children are targets (nginx master -> new workers on reload). */
TRACEPOINT_PROBE(sched, sched_process_fork)
{
	if (!tw_is_target())
		return 0;
	tw_target_set(args->child_pid, 1);
	return 0;
}

/* After exec the process is a target exactly when its new name is configured. */
TRACEPOINT_PROBE(sched, sched_process_exec) { return tw_exec(); }

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	if (tw_is_target())
		tw_cpu_exit();  /* every thread of a target: its last CPU piece (cpu.c) */
	__u64 id = bpf_get_current_pid_tgid();
	if ((__u32)id != (__u32)(id >> 32))
		return 0;  /* a thread, not the process */
	tw_target_set(id >> 32, 0);
	return 0;
}

/* ---------------------------------------------------------------- CPU (cpu.c) */

TRACEPOINT_PROBE(sched, sched_switch) { return tw_sched_switch(args->next_pid); }
TRACEPOINT_PROBE(sched, sched_wakeup) { return tw_wakeup(args->pid); }
TRACEPOINT_PROBE(sched, sched_wakeup_new) { return tw_wakeup(args->pid); }
