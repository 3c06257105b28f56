/* targets.c: which processes are traced (included by http.c). */

static __always_inline int tw_is_target(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 w = tgid >> 6;
	__u64 *bits = tw_target_bits.lookup(&w);
	return bits && ((*bits >> (tgid & 63)) & 1);
}

/* Add or remove a target in both the set and the bitmap.  The bitmap update is a
 * plain read-modify-write (5.4 has no atomic OR): two forks racing on one word can
 * lose a bit, which user space's rescan of the set restores within a second. */
static __always_inline void tw_target_set(__u32 tgid, int on)
{
	__u32 one = 1;
	if (on)
		tw_targets.update(&tgid, &one);
	else
		tw_targets.delete(&tgid);
	__u32 w = tgid >> 6;
	__u64 *bits = tw_target_bits.lookup(&w);
	if (!bits)
		return;
	__u64 bit = 1ull << (tgid & 63);
	if (on)
		*bits |= bit;
	else
		*bits &= ~bit;
}

/* After exec the process is a target exactly when its new name is configured. */
static __always_inline int tw_exec(void)
{
	__u32 zero = 0;
	struct tw_ctl *ctl = tw_ctl.lookup(&zero);
	if (!ctl)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 comm[2] = {};
	bpf_get_current_comm(comm, sizeof(comm));
	int match = 0;
	__u32 n = ctl->ncomms;
	tw_barrier_var(n);
	for (__u32 i = 0; i < TW_MAX_COMMS; i++) {
		tw_barrier_var(i);  /* keep the i < TW_* exit: 6.1 cannot bound i == n */
		if (i >= n)
			break;
		__u64 *want = (__u64 *)ctl->comms[i];
		if (want[0] == comm[0] && want[1] == comm[1]) {
			match = 1;
			break;
		}
	}
	tw_target_set(tgid, match);
	return 0;
}
