/* cpu.c: on-CPU time of target threads, charged to the tenant they work for.
 * Included by http.c (one bcc module: the CPU probes read the connection state
 * the HTTP probes keep).
 *
 * A target thread's current identity is the request of the connection of its
 * latest traced syscall (set by tw_thread_set() from http.c).  Its on-CPU time is cut when
 * a traced syscall that moved bytes returns, before its bytes are parsed (tw_cpu_mark): the
 * piece since the previous cut (over context switches, the syscall itself included) goes, for
 * a read, to the identity current during it, for a write, to what the write sends; in tw_cpu
 * keyed by (identity, process, CPU, side).  So an event loop that serves requests of several
 * tenants in one slice (nginx, HAProxy, Envoy) charges each its own work, not the whole slice
 * to the last one.  Pieces of the same identity add up in the thread's slot (acc_ns) and reach
 * the map when the identity changes or the slice ends.  A thread with no current request is
 * charged to TW_KEY_UNATTRIBUTED, so the entries of a process add up to its CPU time.
 * Wakeup -> running delays of target threads go to the tw_runq histogram.
 *
 * Cost: sched_switch runs for every context switch on the machine; for non-target tasks
 * it is two array lookups and a timestamp.  A target's traced syscall exit adds a thread-slot
 * lookup (the timestamp is the job's) and, when the identity changed since the last cut, one
 * tw_cpu update.  At the exit, not the entry: the entry programs then only stash arguments.
 */

/* CPU entries per tick: identities x processes x CPUs.  Set by the loader to four per
 * identity of TW_MAX_IDENTITIES, at least 16384 (1000 busy tenants on 8 workers over 2 CPUs);
 * beyond it time folds into the overflow entry (lost cpu_map_full). */
#ifndef TW_MAX_CPU_ENTRIES
#define TW_MAX_CPU_ENTRIES 16384
#endif

struct tw_thread {
	__u64 id;        /* pid_tgid of the thread owning the slot, 0 free */
	__u64 key;       /* identity it works for */
	__u64 wake_ns;   /* last wakeup, 0 when not waiting */
	__u32 side;
	__u32 attributed; /* key is a request's identity (else TW_KEY_UNATTRIBUTED) */
	__u64 mark_ns;   /* the last cut of its on-CPU time (tw_cpu_mark), 0 none yet */
	__u64 acc_ns;    /* on-CPU time since earlier cuts, not yet in tw_cpu: acc_key's */
	__u64 acc_key;
	__u32 acc_side;
	__u32 _pad;
	__u64 pend_ns;   /* the piece before a write: its owner is known at the next cut */
	__u64 open_ns;   /* on-CPU time since the last cut, over context switches: whose depends
			  * on the next syscall (a read: the current identity's; a write: what
			  * it sends) */
};

/* A thread's open piece is charged at a context switch, to its current identity, once it
 * holds this much (with what is pending): a thread that stops making syscalls (a loop that
 * never ends) is still charged, and late by at most this much. */
#define TW_CPU_OPEN_MAX_NS 50000000ull

BPF_ARRAY(tw_threads, struct tw_thread, TW_MAX_THREADS);
BPF_PERCPU_ARRAY(tw_cpu_start, __u64, 1);  /* when the running task got this CPU */
/* One map for both generations (tw_cpu_key.gen = tw_ctl.active & 1): with two maps
 * clang merges the two update calls into an indirect call the kernel rejects. */
BPF_HASH(tw_cpu, struct tw_cpu_key, __u64, 2 * TW_MAX_CPU_ENTRIES);
BPF_PERCPU_ARRAY(tw_runq, __u64, TW_RUNQ_BUCKETS + 2);  /* buckets, +Inf, sum_ns */

static __always_inline struct tw_thread *tw_thread_slot(__u32 tid)
{
	__u32 slot = tid & (TW_MAX_THREADS - 1);
	return tw_threads.lookup(&slot);
}

/* The current thread now works for identity `key` on `side` (attributed 0: for nobody). */
static __always_inline void tw_thread_work(__u64 key, __u32 side, __u32 attributed)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tw_thread *t = tw_thread_slot((__u32)id);
	if (!t)
		return;
	if (t->id != id) {
		t->id = id;
		t->wake_ns = 0;
		t->mark_ns = 0;
		t->acc_ns = 0;
		t->pend_ns = 0;
		t->open_ns = 0;
	}
	if (attributed) {
		t->key = key;
		t->side = side;
		t->attributed = 1;
	} else {
		t->key = TW_KEY_UNATTRIBUTED;
		t->side = TW_SIDE_SERVER;
		t->attributed = 0;
	}
}

/* Called from http.c: the current thread now works for connection c (0: none). */
static __always_inline void tw_thread_set(struct tw_conn *c)
{
	if (c && c->opened)
		tw_thread_work(c->cur_key, c->side, 1);
	else
		tw_thread_work(0, 0, 0);
}

/* The CPU key of HTTP/2 stream `sid` of connection `h2id` (tenantwatch/h2/tracker.py computes
 * the same): the side's TW_CPU_H2 bit tells it from an identity key. */
static __always_inline __u64 tw_h2_stream_key(__u64 h2id, __u32 sid)
{
	return h2id * 0x9e3779b97f4a7c15ull + sid;
}

/* After a syscall on HTTP/2 connection c: the thread works for the stream of the last frame it
 * moved (docs/http2.md, "CPU"); none yet: nobody's. */
static __always_inline void tw_thread_set_h2(struct tw_conn *c)
{
	if (c->h2sid && !c->h2mid)
		tw_thread_work(tw_h2_stream_key(c->h2id, c->h2sid), (c->side & 1) | TW_CPU_H2, 1);
	else
		tw_thread_work(0, 0, 0);
}

static __always_inline void tw_cpu_charge(struct tw_ctl *ctl, struct tw_cpu_key *k, __u64 ns)
{
	k->gen = ctl->active & 1;
	__u64 *v = tw_cpu.lookup(k);
	if (!v) {
		__u64 zero = 0;
		tw_cpu.update(k, &zero);
		v = tw_cpu.lookup(k);
	}
	if (!v) {
		tw_lose(TW_LOST_CPU_MAP_FULL);
		struct tw_cpu_key o = {.key = TW_KEY_OVERFLOW, .gen = k->gen};
		v = tw_cpu.lookup(&o);
		if (!v)
			return;
	}
	__sync_fetch_and_add(v, ns);
}

/* Thread t's accumulated time to tw_cpu, under the identity it was earned for. */
static __always_inline void tw_cpu_flush(struct tw_ctl *ctl, struct tw_thread *t, __u64 id)
{
	if (!t->acc_ns)
		return;
	struct tw_cpu_key k = {
		.key = t->acc_key,
		.tgid = id >> 32,
		.cpu = (__u16)bpf_get_smp_processor_id(),
		.side = (__u8)t->acc_side,
	};
	tw_cpu_charge(ctl, &k, t->acc_ns);
	t->acc_ns = 0;
}

/* A piece of thread t's on-CPU time, `ns`, belongs to its current identity: added to what it
 * holds for that identity, after flushing what it held for another one. */
static __always_inline void tw_cpu_cut(struct tw_ctl *ctl, struct tw_thread *t, __u64 id,
				       __u64 ns)
{
	__u64 key = t->attributed ? t->key : TW_KEY_UNATTRIBUTED;
	__u32 side = t->attributed ? t->side : TW_SIDE_SERVER;
	if (t->acc_ns && (t->acc_key != key || t->acc_side != side))
		tw_cpu_flush(ctl, t, id);
	t->acc_key = key;
	t->acc_side = side;
	t->acc_ns += ns;
}

/* A traced syscall of a target thread moved bytes (now: its return, before its bytes are
 * parsed).  The work since the thread's last cut, the syscall's own included:
 * - up to a read, it was for the thread's current identity (the request of its previous
 *   syscall's connection: reads charge forward);
 * - up to a write, it was for what the write sends (building a response, or a request to an
 *   upstream): held as pending, and given at the next cut to the identity current then, which
 *   the write's own parse set (writes charge backward).  So a thread that reads several
 *   requests at once (HTTP/2 streams, pipelining) and answers or proxies each in turn charges
 *   each its own work.
 * A thread that owns no slot yet (no parsed syscall) is charged at the context switch, as
 * unattributed. */
static __always_inline void tw_cpu_mark(__u32 is_write, __u64 now)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tw_thread *t = tw_thread_slot((__u32)id);
	if (!t || t->id != id)
		return;
	__u32 zero = 0;
	__u64 *start = tw_cpu_start.lookup(&zero);
	struct tw_ctl *ctl = tw_ctl.lookup(&zero);
	if (!start || !ctl)
		return;
	__u64 from = t->mark_ns > *start ? t->mark_ns : *start;
	__u64 piece = t->open_ns + (from && now > from ? now - from : 0);
	t->open_ns = 0;
	if (t->pend_ns) {
		tw_cpu_cut(ctl, t, id, t->pend_ns);
		t->pend_ns = 0;
	}
	if (is_write)
		t->pend_ns = piece;
	else if (piece)
		tw_cpu_cut(ctl, t, id, piece);
	t->mark_ns = now;
}

/* A target thread exits: its last piece (since its last traced syscall) goes to its current
 * identity now, and what its slot holds to tw_cpu; the switch after the exit adds only the
 * few µs from here (left open, not charged). */
static __always_inline void tw_cpu_exit(void)
{
	tw_cpu_mark(0, bpf_ktime_get_ns());
	__u64 id = bpf_get_current_pid_tgid();
	struct tw_thread *t = tw_thread_slot((__u32)id);
	__u32 zero = 0;
	struct tw_ctl *ctl = tw_ctl.lookup(&zero);
	if (t && t->id == id && ctl)
		tw_cpu_flush(ctl, t, id);
}

/* sched_switch (the TRACEPOINT_PROBE lines live in http.c: bcc generates the
 * tracepoint argument structs only for probes in the main file). */
static __always_inline int tw_sched_switch(__u32 next_pid)
{
	__u32 zero = 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 *start = tw_cpu_start.lookup(&zero);
	if (!start)
		return 0;
	__u64 began = *start;
	*start = now;
	struct tw_ctl *ctl = 0;

	/* The task leaving the CPU (the current task here) ran since `began`; the part before
	 * its last cut was charged at the cut (tw_cpu_mark). */
	if (began && now > began && tw_is_target() && (ctl = tw_ctl.lookup(&zero))) {
		__u64 id = bpf_get_current_pid_tgid();
		struct tw_thread *t = tw_thread_slot((__u32)id);
		if (t && t->id == id) {
			/* The piece since the last cut stays open: the next syscall says whose it
			 * is (tw_cpu_mark); unless it grew too long. */
			__u64 from = t->mark_ns > began ? t->mark_ns : began;
			t->open_ns += now > from ? now - from : 0;
			t->mark_ns = now;
			if (t->open_ns + t->pend_ns >= TW_CPU_OPEN_MAX_NS) {
				tw_cpu_cut(ctl, t, id, t->pend_ns + t->open_ns);
				t->pend_ns = 0;
				t->open_ns = 0;
			}
			tw_cpu_flush(ctl, t, id);
		} else {
			struct tw_cpu_key k = {
				.key = TW_KEY_UNATTRIBUTED,
				.tgid = id >> 32,
				.cpu = (__u16)bpf_get_smp_processor_id(),
				.side = TW_SIDE_SERVER,
			};
			tw_cpu_charge(ctl, &k, now - began);
		}
	}

	/* The task getting the CPU: if it is a target thread that was woken up,
	 * its wait in the run queue ends now. */
	struct tw_thread *n = tw_thread_slot(next_pid);
	if (!n || (__u32)n->id != next_pid || !n->wake_ns)
		return 0;
	__u64 delay = now > n->wake_ns ? now - n->wake_ns : 0;
	n->wake_ns = 0;
	if (!ctl)
		ctl = tw_ctl.lookup(&zero);
	if (!ctl)
		return 0;
	__u32 idx = TW_BUCKET_INDEX(delay, ctl->runq_bounds_ns, ctl->nrunq, TW_RUNQ_BUCKETS);
	if (idx > TW_RUNQ_BUCKETS)
		return 0;
	__u64 *b = tw_runq.lookup(&idx);
	if (b)
		*b += 1;
	__u32 sum_idx = TW_RUNQ_BUCKETS + 1;
	__u64 *sum = tw_runq.lookup(&sum_idx);
	if (sum)
		*sum += delay;
	return 0;
}

static __always_inline int tw_wakeup(__u32 pid)
{
	struct tw_thread *t = tw_thread_slot(pid);
	if (t && (__u32)t->id == pid && t->id)
		t->wake_ns = bpf_ktime_get_ns();
	return 0;
}
