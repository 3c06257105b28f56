/* maps.c: every map of the module, and the loss counter (included by http.c). */

BPF_ARRAY(tw_ctl, struct tw_ctl, 1);
/* Header names the parser cares about, by seeded name hash: identity sources,
 * content-length, transfer-encoding.  Filled by user space at load. */
BPF_HASH(tw_names, __u64, struct tw_name, TW_MAX_SOURCES + 2);
/* Traced processes: the hash is the set user space lists; the bitmap (bit tgid)
 * answers "is this a target?" on every syscall of every process, which an array
 * lookup does far cheaper than a hash lookup.  Both are written together. */
BPF_HASH(tw_targets, __u32, __u32, TW_MAX_TARGETS);
BPF_ARRAY(tw_target_bits, __u64, TW_TARGET_WORDS);
/* Syscall arguments between enter and exit, one slot per thread id modulo
 * TW_MAX_THREADS: an array slot is far cheaper than a hash update, lookup and
 * delete per syscall.  Two traced threads whose ids share a slot and are in a
 * syscall at once are detected (the id differs) and counted as args_map_full. */
BPF_ARRAY(tw_args, struct tw_args, TW_MAX_THREADS);
/* Fds of target processes that carry no HTTP, by tgid & (TW_FILE_SLOTS - 1) (conn.c). */
BPF_ARRAY(tw_nohttp, struct tw_fdmarks, TW_FILE_SLOTS);
BPF_F_TABLE("hash", __u64, struct tw_conn, tw_conns, TW_MAX_CONNS, BPF_F_NO_PREALLOC);
BPF_HASH(tw_agg0, struct tw_agg_key, struct tw_agg_val, TW_MAX_IDENTITIES);
BPF_HASH(tw_agg1, struct tw_agg_key, struct tw_agg_val, TW_MAX_IDENTITIES);
/* Closes whose identity has no entry in a full aggregate map (aggregate.c, tw_conn_close).
 * Distinct keys in one generation are at most the connections open at its start plus the
 * identities it opened, so this size is never reached; not preallocated: it is used only when
 * the aggregate map is full. */
BPF_F_TABLE("hash", struct tw_close_key, struct tw_close_val, tw_closes,
	    TW_MAX_CONNS + TW_MAX_IDENTITIES, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(tw_lost, __u64, TW_LOST_MAX);
/* tw_conns' fill without walking it: entries created [0] and deleted [1], per CPU (user space
 * adds its own deletes, the sweep's). */
BPF_PERCPU_ARRAY(tw_conn_count, __u64, 2);
BPF_PERCPU_ARRAY(tw_jobs, struct tw_job, 1);
struct tw_window {
	__u8 b[TW_READ + 8 * TW_SKIP_WORDS];  /* room for the word loads past the last byte */
};
BPF_PERCPU_ARRAY(tw_scratch, struct tw_window, 1);
BPF_PERCPU_ARRAY(tw_val_tmpl, struct tw_agg_val, 1);
BPF_PERCPU_ARRAY(tw_conn_tmpl, struct tw_conn, 1);
BPF_ARRAY(tw_dfa, struct tw_dfa, 1);
BPF_ARRAY(tw_pfx, struct tw_pfx, 1);
BPF_PROG_ARRAY(tw_progs, TW_NPROGS);
/* The same programs loaded as kprobe-type for the TLS uprobes (a tail call needs the
 * caller's program type): http.c includes the tail-program files a second time for them. */
BPF_PROG_ARRAY(tw_progs_k, TW_NPROGS);
/* The bytes of the token value a connection is reading (tw_token writes them, tw_token_emit
 * sends them).  LRU: a connection idle in the middle of a token may lose them, which is
 * detected (len) and counted as lost(token_incomplete). */
BPF_F_TABLE("lru_hash", __u64, struct tw_token_event, tw_tokbufs, TW_MAX_TOKEN_CONNS, 0);
BPF_PERCPU_ARRAY(tw_tok_tmpl, struct tw_token_event, 1);
/* Tokens sent to user space: identity key -> when (bpf_ktime_get_ns). */
BPF_F_TABLE("lru_hash", __u64, __u64, tw_tok_seen, TW_MAX_TOKENS_SEEN, 0);
struct tw_rate {
	__u64 window_ns;
	__u64 sent;
};

/* One more event within `per_sec` per CPU, in windows of 1 s that start at the first event
 * after the previous window ended: 1 when it may be sent (and counted as sent), 0 over the
 * rate (the caller counts its loss). */
static __always_inline int tw_rate_take(struct tw_rate *r, __u64 now, __u32 per_sec)
{
	if (now - r->window_ns >= 1000000000ull) {
		r->window_ns = now;
		r->sent = 0;
	}
	if (r->sent >= per_sec)
		return 0;
	r->sent++;
	return 1;
}
BPF_PERCPU_ARRAY(tw_slow_rate, struct tw_rate, 1);
BPF_PERCPU_ARRAY(tw_tok_rate, struct tw_rate, 1);
#ifdef TW_HAVE_RINGBUF
/* 64 KiB: ~1300 events of 48 bytes between two polls (one per tick). */
BPF_RINGBUF_OUTPUT(tw_slow_events, 16);
/* 1 MiB: ~250 new tokens of up to 4 KiB between two polls. */
BPF_RINGBUF_OUTPUT(tw_token_events, 256);
#else
BPF_PERF_OUTPUT(tw_slow_events);
BPF_PERF_OUTPUT(tw_token_events);
#endif
#ifdef TW_HAVE_RINGBUF
/* 4 MiB: HTTP/2 header bytes between two polls (about 40k requests of ~100 bytes). */
BPF_RINGBUF_OUTPUT(tw_h2_events, 1024);
#else
BPF_PERF_OUTPUT(tw_h2_events);
#endif
BPF_PERCPU_ARRAY(tw_h2_scratch, struct tw_h2_event, 1);
/* The response-side tenant check (aggregate.c, tw_isolation): outcomes per side, breaching
 * pairs per generation, breach events. */
#define TW_MAX_BREACH_PAIRS 1024
BPF_PERCPU_ARRAY(tw_iso, __u64, 2 * TW_ISO_N);
BPF_HASH(tw_breach, struct tw_breach_key, struct tw_breach_val, TW_MAX_BREACH_PAIRS);
BPF_PERCPU_ARRAY(tw_breach_tmpl, struct tw_breach_val, 1);
BPF_PERCPU_ARRAY(tw_breach_scratch, struct tw_breach_event, 1);
BPF_PERCPU_ARRAY(tw_breach_rate, struct tw_rate, 1);
#ifdef TW_HAVE_RINGBUF
/* 64 KiB: ~300 events of 208 bytes between two polls (one per tick). */
BPF_RINGBUF_OUTPUT(tw_breach_events, 16);
#else
BPF_PERF_OUTPUT(tw_breach_events);
#endif

#define TW_FNV_PRIME1 0x100000001b3ull
#define TW_FNV_PRIME2 0x9e3779b97f4a7c15ull

static __always_inline void tw_conn_counted(__u32 what)
{
	__u64 *n = tw_conn_count.lookup(&what);
	if (n)
		*n += 1;
}

static __always_inline void tw_lose(__u32 reason)
{
	__u64 *n = tw_lost.lookup(&reason);
	if (n)
		*n += 1;
}
