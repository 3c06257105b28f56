/* http.c: per-tenant HTTP/1.x attribution on the target's sockets (bcc dialect).
 *
 * Syscall tracepoints on target processes stash the arguments at entry and, at
 * exit, hand the bytes that really moved to tw_parse, a streaming HTTP/1.x parser
 * whose state lives in the connection's map entry (not in registers), so the
 * verifier sees one state per loop iteration.  tw_parse handles one window of
 * up to TW_READ bytes in up to TW_ITERS steps per run and tail-calls itself for the
 * rest.  Bytes with nothing to do (uninteresting header lines, request targets, reason
 * phrases) are skipped a word at a time; header names are compared a word at a time
 * against the few the parser acts on; message bodies are skipped by arithmetic.
 *
 * Per request the kernel: finds the configured identity headers, hashes the
 * winning value with two secret-seeded hashes, counts the request in the active
 * aggregate map (double-buffered: user space drains the other one each tick),
 * and on the response head records status class and latency in exact buckets.
 * No per-request event goes to user space.
 *
 * Settings come as -D defines (TW_MAX_CONNS, TW_HAVE_PROBE_READ_USER) and the
 * tw_ctl / tw_sources arrays.
 */
#include <uapi/linux/ptrace.h>
#include "tw_abi.h"
#include "tw_dfa.h"

#ifndef TW_MAX_CONNS
#define TW_MAX_CONNS 65536
#endif
/* Loop iterations per tw_parse run: one iteration is one DFA byte, a header line's name
 * compared a word at a time, or up to 64 bytes skipped eight words a step.  Verification
 * costs the iterations times the paths through one; the loader tries TW_ITERS from large
 * to small (older verifiers prune less).  A power of two. */
#ifndef TW_ITERS
#define TW_ITERS 256
#endif
/* Bytes of a bearer token value tw_token hashes per run (a byte loop, no DFA). */
#define TW_TOKEN_RUN (4 * TW_ITERS)
/* Bytes read from user memory per run (a power of two): the word steps take a run far
 * past TW_ITERS bytes; a run ends at its window, its iterations, a head end or a body. */
#define TW_READ 2048
/* Words a skip step looks at: the buffer has room for them past the last byte read. */
#define TW_SKIP_WORDS 4
/* Tail calls per syscall: the kernel allows 33.  A run ends at its window or its
 * iterations, at a head end and at a body start, so one syscall parses up to 32 runs
 * (docs/limits.md: the head bytes that makes) or 32 messages; the rest is counted
 * lost(scan_budget). */
#define TW_MAX_TAILS 32
/* Distinct identities per tick (both sides).  4096 covers max_tenants=1000 with
 * room for claimed junk values; a flood beyond it folds into __other__. */
#define TW_MAX_IDENTITIES 4096
/* Slots for syscall arguments (a power of two: the slot is tid & (N - 1)). */
#define TW_MAX_THREADS 16384
/* Traced processes. */
#define TW_MAX_TARGETS 4096
/* Words of the target bitmap: pid_max / 64, set by the loader from
 * /proc/sys/kernel/pid_max (default: the kernel's largest pid_max, 2^22). */
#ifndef TW_TARGET_WORDS
#define TW_TARGET_WORDS 65536
#endif

/* Index of the first bound >= value among the first n of bounds[max]; n when none
 * (the +Inf slot).  A macro, not a function: both histograms (latency here, run-queue
 * delay in cpu.c) need their array's constant size for the verifier.  The barriers keep
 * the i < max exit (6.1 cannot bound "i == n") and hide the result's range from clang. */
#define TW_BUCKET_INDEX(value, bounds, n, max) ({				\
	__u32 __n = (n);							\
	tw_barrier_var(__n);							\
	__u32 __idx = 0;							\
	for (__u32 __i = 0; __i < (max); __i++) {				\
		tw_barrier_var(__i);						\
		if (__i >= __n)							\
			break;							\
		if ((value) <= (bounds)[__i])					\
			break;							\
		__idx++;							\
	}									\
	tw_barrier_var(__idx);							\
	__idx;									\
})

/* Hide a value's known range from clang.  Without it clang folds
 * "i < MAX && i < n" (n <= MAX known) into "i != n", which the verifier cannot
 * bound: it then walks i past MAX. */
#define tw_barrier_var(var) asm volatile("" : "+r"(var))

#ifdef TW_HAVE_PROBE_READ_USER
#define tw_read_user bpf_probe_read_user
#else
#define tw_read_user bpf_probe_read
#endif

/* What the current header line is. */
enum { H_OTHER = 0, H_IDENTITY = TW_NAME_IDENTITY, H_CLEN = TW_NAME_CONTENT_LENGTH, H_TE = TW_NAME_TRANSFER_ENCODING };

/* Per-message flags. */
#define M_CHUNKED   1u
#define M_CLEN      2u
#define M_HEAD      4u   /* request method HEAD: its response has no body */
#define M_BAD_CLEN  8u

/* After a body skip ends, continue here. */
#define AFTER_MESSAGE 0
#define AFTER_CHUNK   1

struct tw_parser {
	__u64 skip;       /* body bytes still to skip */
	__u64 h1;         /* running hash: header name, then value */
	__u64 h2;         /* second value hash */
	__u64 word;       /* last bytes packed (method, "chunked" check) */
	__u64 num;        /* content-length / chunk size / status being read */
	__u64 best_h1;    /* winning identity value of this message */
	__u64 best_h2;
	__u32 state;
	__u32 pos;        /* position inside the current token */
	__u32 mflags;     /* M_* */
	__u32 hkind;      /* H_* of the current header line */
	__s32 cur_src;    /* source of the current header line, -1 */
	__s32 best_src;   /* best (lowest index) source seen in this message, -1 */
	__u32 vflags;     /* TW_F_* of the current value */
	__u32 best_flags;
	__u32 vlen;       /* bytes of the current value */
	__u32 best_len;
	__u32 vcur;       /* which vbuf holds the current value (the other holds the best) */
	__u32 status;     /* response status */
	__u32 after_skip; /* AFTER_* */
	__u32 prev_identity; /* previous header line was an identity header (obs-fold) */
	__u32 name0;      /* first byte of the header name, lowercased */
	__u32 vtoken;     /* the current identity header is a bearer token (tw_token reads it) */
	__u64 method;     /* packed method bytes of the current request */
};

struct tw_inflight {
	__u64 key;
	__u64 start_ns;
	__u64 method;   /* packed method bytes (for slow-request events) */
	__u32 mflags;
	__u32 _pad;
};

struct tw_conn {
	/* First, the fields of struct tw_conn_head (tw_abi.h), in its order. */
	__u64 cur_key;          /* identity of the latest request (bytes are charged to it) */
	__u64 conn_key;         /* identity the connection was counted under */
	__u32 side;             /* TW_SIDE_* */
	__u32 opened;           /* counted in conn_opened */
	__u64 open_ns;          /* start of its time under conn_key (conn_dur_ns at its close) */
	struct tw_parser req;   /* requests: read on server side, written on client side */
	struct tw_parser resp;  /* responses: the other direction */
	struct tw_inflight fifo[TW_FIFO];
	__u32 fifo_head;        /* next to complete */
	__u32 fifo_tail;        /* next free */
	__u8 vbuf[2][TW_VALUE_MAX];
	__u32 adopted;          /* first seen mid-stream (tw_exit), not at accept/connect, and no
				 * HTTP response parsed on it yet */
	__u32 tls;              /* TLS: parsed from SSL_read/SSL_write (tls.c), never from syscalls */
	__u32 h2;               /* HTTP/2 (the client preface was seen): bytes go to tw_h2 */
	__u32 h2seq[2];         /* next tw_h2_event seq, by is_req */
	__u32 h2mid;            /* HTTP/2 seen mid-stream (older than the daemon): TW_H2_F_MIDSTREAM */
	__u64 h2id;             /* this HTTP/2 connection's id in events: fds are reused at once */
	__u32 req_hold;         /* requests resync only after a response ends the exchange (tw_resync) */
	__u32 _pad2;
	__u8 h2hdr[2][32];      /* a frame header being collected, by is_req (9 bytes used) */
};
_Static_assert(__builtin_offsetof(struct tw_conn, opened) ==
	       __builtin_offsetof(struct tw_conn_head, opened), "tw_conn_head is tw_conn's prefix");
_Static_assert(__builtin_offsetof(struct tw_conn, open_ns) ==
	       __builtin_offsetof(struct tw_conn_head, open_ns), "tw_conn_head is tw_conn's prefix");

/* Syscall arguments between enter and exit. */
struct tw_args {
	__u64 id;      /* pid_tgid of the thread in the syscall; 0 when the slot is free */
	__u64 buf;     /* user buffer, or iovec array */
	__u64 iovcnt;  /* 0: plain buffer */
	__u32 fd;
	__u32 is_write;
};

/* One syscall's bytes being parsed across tail calls (per CPU: the chain of tail
 * calls runs on one CPU without preemption by another traced syscall's chain). */
struct tw_job {
	__u64 conn;      /* tgid << 32 | fd */
	__u64 ts_ns;
	__u64 buf;       /* current segment */
	__u64 seg_len;
	__u64 seg_off;
	__u64 iov;       /* iovec array, 0 for a plain buffer */
	__u64 remaining; /* bytes of the syscall not yet parsed */
	__u64 total;     /* bytes the syscall moved */
	__u32 iovcnt;
	__u32 iov_idx;
	__u32 is_req;    /* parse with the request parser */
	__u32 is_write;
	__u32 tails;
	__u32 charged;   /* the syscall's bytes are already charged to an identity */
	__u32 mode;      /* program for the next window: TW_PROG_* */
	__u32 emit;      /* a new token to send (tw_token_emit) before parsing on */
	__u64 emit_key;  /* its identity key */
	__u32 emit_len;  /* its length */
	__u32 wpos;      /* tw_parse: position in the current window */
	__u32 opaque;    /* tw_opaque */
	__u32 _pad;
};

/* Programs in tw_progs. */
#define TW_PROG_PARSE 0  /* tw_parse: the HTTP/1.x DFA */
#define TW_PROG_TOKEN 1  /* tw_token: the bytes of a bearer token value */
#define TW_PROG_EMIT  2  /* tw_token_emit: send a new token to user space */
#define TW_PROG_H2    3  /* tw_h2: HTTP/2 frames, DATA payloads skipped */
#define TW_NPROGS     4
/* Byte ranges (skip, copy, header) tw_h2 handles per run. */
#define TW_H2_PIECES 24
/* A token already sent is sent again after this long (user space may have forgotten it). */
#define TW_TOKEN_RESEND_NS 60000000000ull
/* Connections in the middle of a token value at once (tw_tokbufs). */
#define TW_MAX_TOKEN_CONNS 1024
/* Distinct tokens remembered as sent (tw_tok_seen). */
#define TW_MAX_TOKENS_SEEN 16384


struct tw_iovec {
	__u64 base;
	__u64 len;
};

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
BPF_F_TABLE("hash", __u64, struct tw_conn, tw_conns, TW_MAX_CONNS, BPF_F_NO_PREALLOC);
BPF_HASH(tw_agg0, struct tw_agg_key, struct tw_agg_val, TW_MAX_IDENTITIES);
BPF_HASH(tw_agg1, struct tw_agg_key, struct tw_agg_val, TW_MAX_IDENTITIES);
BPF_PERCPU_ARRAY(tw_lost, __u64, TW_LOST_MAX);
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
 * caller's program type): the loader copies the TW_TAIL_PROGRAMS section with
 * tw_progs_k in place of tw_progs when TLS capture is on. */
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

#define TW_FNV_PRIME1 0x100000001b3ull
#define TW_FNV_PRIME2 0x9e3779b97f4a7c15ull

static __always_inline void tw_lose(__u32 reason)
{
	__u64 *n = tw_lost.lookup(&reason);
	if (n)
		*n += 1;
}

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

#include "cpu.c"

/* ---------------------------------------------------------------- aggregates */

static __always_inline struct tw_agg_val *tw_agg_lookup(struct tw_agg_key *k, __u32 active)
{
	return active ? tw_agg1.lookup(k) : tw_agg0.lookup(k);
}

/* Record the identity value of the parser's best source in an aggregate entry. */
static __always_inline void tw_agg_fill(struct tw_agg_val *t, struct tw_conn *c,
					struct tw_parser *p)
{
	t->source = p->best_src;
	t->flags = p->best_flags;
	t->hash2 = p->best_h2;
	if (p->best_src >= 0 && !(p->best_flags & TW_F_COLLISION)) {
		/* The first TW_VALUE_MAX bytes; value_len is the whole length (a bearer token
		 * longer than that reaches user space as a struct tw_token_event). */
		__u32 b = (p->vcur ^ 1) & 1;
		__builtin_memcpy(t->value, c->vbuf[b], TW_VALUE_MAX);
		t->value_len = p->best_len;
	} else {
		t->value_len = 0;
	}
}

/* The entry for key in the active map; created (with the value from vbuf when
 * given) if missing, the overflow entry when the map is full. */
static __always_inline struct tw_agg_val *tw_agg_get(struct tw_ctl *ctl, __u64 key, __u32 side,
						     struct tw_conn *c, struct tw_parser *p,
						     int with_value)
{
	struct tw_agg_key k = {.key = key, .side = side};
	__u32 active = ctl->active & 1;
	struct tw_agg_val *v = tw_agg_lookup(&k, active);
	if (v)
		return v;
	__u32 zero = 0;
	struct tw_agg_val *t = tw_val_tmpl.lookup(&zero);
	if (!t)
		return 0;
	__builtin_memset(t, 0, sizeof(*t));
	t->value_len = TW_VALUE_UNKNOWN;
	t->source = -1;
	if (with_value)
		tw_agg_fill(t, c, p);
	if (active)
		tw_agg1.update(&k, t);  /* BPF_ANY: a racing creator wins either way */
	else
		tw_agg0.update(&k, t);
	v = tw_agg_lookup(&k, active);
	if (v)
		return v;
	tw_lose(TW_LOST_IDENTITY_MAP_FULL);
	k.key = TW_KEY_OVERFLOW;
	return tw_agg_lookup(&k, active);
}

/* Charge the syscall's bytes to v, once per syscall: an entry already in hand saves
 * tw_charge_bytes a second hash lookup. */
static __always_inline void tw_charge(struct tw_agg_val *v, struct tw_job *j)
{
	if (!j || j->charged)
		return;
	j->charged = 1;
	if (j->is_write)
		__sync_fetch_and_add(&v->tx_bytes, j->total);
	else
		__sync_fetch_and_add(&v->rx_bytes, j->total);
}

static __always_inline void tw_count_end(struct tw_ctl *ctl, struct tw_conn *c, __u64 key,
					 __u32 cls, __u64 lat_ns, int with_latency,
					 struct tw_job *j)
{
	struct tw_agg_val *v = tw_agg_get(ctl, key, c->side, c, &c->req, 0);
	if (!v)
		return;
	tw_charge(v, j);
	tw_barrier_var(cls);  /* clang knows cls < 6 from status / 100; the verifier does not */
	if (cls < TW_NCLASS)
		__sync_fetch_and_add(&v->req_by_class[cls], 1);
	if (!with_latency)
		return;
	__u32 idx = TW_BUCKET_INDEX(lat_ns, ctl->bounds_ns, ctl->nbuckets, TW_MAX_BUCKETS);
	if (idx <= TW_MAX_BUCKETS)
		__sync_fetch_and_add(&v->lat_buckets[idx], 1);
	__sync_fetch_and_add(&v->lat_sum_ns, lat_ns);
}

/* A request head has ended: key it by its identity and put it in flight. */
static __always_inline void tw_request_done(struct tw_ctl *ctl, struct tw_conn *c,
					    struct tw_parser *p, __u64 ts, struct tw_job *j)
{
	__u64 key;
	if (c->adopted)
		p->best_flags |= TW_F_ADOPTED;
	if (p->best_src < 0) {
		p->best_flags |= TW_F_NO_IDENTITY;
		p->best_h1 = 0;
		p->best_h2 = 0;
	}
	key = p->best_h1 * TW_FNV_PRIME2 + (__u64)(p->best_src + 2) * 0x100000001ull +
	      (__u64)p->best_flags * 0x10001ull;
	if (key <= TW_KEY_RESERVED_MAX)
		key += TW_KEY_RESERVED_MAX + 1;
	struct tw_agg_val *v = tw_agg_get(ctl, key, c->side, c, p, 1);
	if (v && (v->flags & TW_F_OVERFLOW))
		key = TW_KEY_OVERFLOW;  /* the map is full: the overflow entry took it */
	else if (v && v->value_len == TW_VALUE_UNKNOWN)
		tw_agg_fill(v, c, p);  /* created earlier this tick by a response: add the value */
	else if (v &&
	    (v->hash2 != p->best_h2 || v->flags != p->best_flags)) {
		/* Same 64-bit key, different value: never merge two tenants. */
		tw_lose(TW_LOST_HASH_COLLISION);
		p->best_flags |= TW_F_COLLISION;
		key = TW_KEY_COLLISION;
		v = tw_agg_get(ctl, key, c->side, c, p, 1);
	}
	if (v) {
		tw_charge(v, j);
		__sync_fetch_and_add(&v->heads, 1);
		if (!c->opened) {
			__sync_fetch_and_add(&v->conn_opened, 1);
			c->opened = 1;
			c->conn_key = key;
		}
	}
	c->cur_key = key;
	if (p->best_len > TW_VALUE_MAX && p->best_src >= 0 && key > TW_KEY_RESERVED_MAX &&
	    ((ctl->token_sources >> (p->best_src & 31)) & 1) &&
	    !(p->best_flags & (TW_F_DUPLICATE | TW_F_FOLDED | TW_F_BAD_BYTE | TW_F_TOO_LONG |
			       TW_F_COLLISION))) {
		/* A long bearer token: user space gets it whole, once (tw_token_emit). */
		j->emit = 1;
		j->emit_key = key;
		j->emit_len = p->best_len;
	}
	__u32 tail = c->fifo_tail;
	if (tail - c->fifo_head >= TW_FIFO) {
		tw_lose(TW_LOST_PIPELINE_OVERFLOW);
		tw_count_end(ctl, c, key, TW_CLASS_NONE, 0, 0, j);
		return;
	}
	struct tw_inflight *f = &c->fifo[tail & (TW_FIFO - 1)];
	f->key = key;
	f->start_ns = ts;
	f->mflags = p->mflags;
	f->method = p->method;
	c->fifo_tail = tail + 1;
}

/* A response head has ended with p->status. Returns the M_HEAD flag of its request. */
/* A slow request: one event to user space (a trace span), rate-limited per CPU. */
static __always_inline void tw_slow(void *ctx, struct tw_ctl *ctl, struct tw_conn *c,
				    struct tw_inflight *f, __u64 lat, __u32 status)
{
	__u32 zero = 0;
	struct tw_rate *r = tw_slow_rate.lookup(&zero);
	if (!r)
		return;
	__u64 now = bpf_ktime_get_ns();
	if (now - r->window_ns >= 1000000000ull) {
		r->window_ns = now;
		r->sent = 0;
	}
	if (r->sent >= ctl->slow_per_cpu_per_sec) {
		tw_lose(TW_LOST_SLOW_RATE_LIMITED);
		return;
	}
	r->sent++;
	struct tw_slow_event e = {
		.key = f->key, .start_ns = f->start_ns, .latency_ns = lat, .method = f->method,
		.tgid = bpf_get_current_pid_tgid() >> 32, .side = c->side, .status = status,
	};
#ifdef TW_HAVE_RINGBUF
	if (tw_slow_events.ringbuf_output(&e, sizeof(e), 0) != 0)
		tw_lose(TW_LOST_SLOW_BUFFER_FULL);
#else
	if (tw_slow_events.perf_submit(ctx, &e, sizeof(e)) != 0)
		tw_lose(TW_LOST_SLOW_BUFFER_FULL);
#endif
}

/* A connection's time under its conn_key ends (a close, or a WebSocket upgrade moving it). */
static __always_inline void tw_conn_end(struct tw_agg_val *v, struct tw_conn *c, __u64 now)
{
	__sync_fetch_and_add(&v->conn_closed, 1);
	if (now > c->open_ns)
		__sync_fetch_and_add(&v->conn_dur_ns, now - c->open_ns);
}

static __always_inline __u32 tw_response_done(void *ctx, struct tw_ctl *ctl, struct tw_conn *c,
					      struct tw_parser *p, __u64 ts, struct tw_job *j)
{
	__u32 status = p->status;
	if (status >= 100 && status < 200 && status != 101)
		return 0;  /* interim response: the request goes on */
	__u32 head = c->fifo_head;
	if (head == c->fifo_tail)
		return 0;  /* a response nobody asked for (or asked before we started) */
	struct tw_inflight *f = &c->fifo[head & (TW_FIFO - 1)];
	__u32 cls = TW_CLASS_NONE;
	if (status >= 100 && status < 600)
		cls = status / 100 - 1;
	__u64 lat = ts > f->start_ns ? ts - f->start_ns : 0;
	__u32 mflags = f->mflags;
	tw_count_end(ctl, c, f->key, cls, lat, 1, j);
	/* An adopted connection that answers with an HTTP status line speaks HTTP: its next
	 * requests are real request heads, not a frame or body that looks like one. */
	c->adopted = 0;
	if (status == 101 && c->opened && c->conn_key != f->key) {
		/* Upgraded (WebSocket): from now on the connection is the upgrade's tenant's,
		 * not the tenant of an earlier keep-alive request on it.  Moved as a close under
		 * the old identity and an open under the new one. */
		struct tw_agg_val *old = tw_agg_get(ctl, c->conn_key, c->side, c, &c->req, 0);
		if (old)
			tw_conn_end(old, c, ts);
		struct tw_agg_val *nv = tw_agg_get(ctl, f->key, c->side, c, &c->req, 0);
		if (nv)
			__sync_fetch_and_add(&nv->conn_opened, 1);
		c->conn_key = f->key;
		c->open_ns = ts;  /* the session's own duration runs from its upgrade */
	}
	if (ctl->slow_ns && lat >= ctl->slow_ns)
		tw_slow(ctx, ctl, c, f, lat, status);
	c->fifo_head = head + 1;
	return mflags;
}

/* ---------------------------------------------------------------- parser */

/* The parser lost its place in this direction: it waits for bytes that start a message
 * (tw_job_start).  For requests it waits longer: until a response head has ended with no
 * request left in flight.  Until then the bytes may be the body of a request whose end it
 * could not see, and a body must never become a request (a forged head in it would count). */
static __always_inline void tw_resync(struct tw_conn *c, struct tw_parser *p, int is_req)
{
	p->state = TW_S_RESYNC;
	if (is_req)
		c->req_hold = 1;
}

static __always_inline void tw_message_reset(struct tw_parser *p, int is_req)
{
	p->state = is_req ? TW_S_RQ0 : TW_S_RS0;
	p->pos = 0;
	p->mflags = 0;
	p->hkind = H_OTHER;
	p->best_src = -1;
	p->best_flags = 0;
	p->best_len = 0;
	p->best_h1 = 0;
	p->best_h2 = 0;
	p->num = 0;
	p->word = 0;
	p->status = 0;
	p->prev_identity = 0;
}

/* The head ended (blank line): count it and decide how its body ends. */
static __always_inline void tw_head_end(void *ctx, struct tw_ctl *ctl, struct tw_conn *c,
					struct tw_parser *p, int is_req, struct tw_job *j)
{
	__u32 mflags = p->mflags;
	__u64 clen = p->num;
	if (is_req) {
		tw_request_done(ctl, c, p, j->ts_ns, j);
		tw_message_reset(p, 1);
		if (mflags & M_BAD_CLEN) {
			/* Conflicting or malformed Content-Length: where the body ends is unknown. */
			tw_lose(TW_LOST_RESYNC);
			tw_resync(c, p, is_req);
		} else if (mflags & M_CHUNKED) {
			p->state = TW_S_CS;
		} else if ((mflags & M_CLEN) && clen > 0) {
			p->skip = clen;
			p->after_skip = AFTER_MESSAGE;
		}
		return;
	}
	__u32 status = p->status;
	__u32 req_flags = tw_response_done(ctx, ctl, c, p, j->ts_ns, j);
	tw_message_reset(p, 0);
	if (c->fifo_head == c->fifo_tail && (status >= 200 || status == 101))
		c->req_hold = 0;  /* the exchange is over: the next request bytes start a head */
	if (status == 101) {
		/* Upgraded (WebSocket ...): what follows is not HTTP/1.x. */
		p->state = TW_S_DEAD;
		c->req.state = TW_S_DEAD;
		return;
	}
	if ((status >= 100 && status < 200) || status == 204 || status == 304 ||
	    (req_flags & M_HEAD))
		return;
	if (mflags & M_BAD_CLEN) {
		tw_lose(TW_LOST_RESYNC);
		tw_resync(c, p, is_req);
	} else if (mflags & M_CHUNKED) {
		p->state = TW_S_CS;
	} else if (mflags & M_CLEN) {
		if (clen > 0) {
			p->skip = clen;
			p->after_skip = AFTER_MESSAGE;
		}
	} else {
		p->state = TW_S_UNTIL_CLOSE;
	}
}

/* End of a header line. */
static __always_inline void tw_header_end(struct tw_parser *p)
{
	__u32 kind = p->hkind;
	if (kind == H_IDENTITY) {
		__s32 src = p->cur_src;
		if (src == p->best_src) {
			p->best_flags |= TW_F_DUPLICATE;
		} else if (p->best_src < 0 || src < p->best_src) {
			/* A better source: its value becomes the best; the other buffer is free. */
			p->best_src = src;
			p->best_h1 = p->h1;
			p->best_h2 = p->h2;
			p->best_len = p->vlen;
			p->best_flags = p->vflags;
			p->vcur ^= 1;
		}
		p->prev_identity = 1;
		return;
	}
	p->prev_identity = 0;
	if (kind == H_TE) {
		/* "chunked" must be the last coding: the last 7 bytes, lowercased. */
		if ((p->word & 0xffffffffffffffull) == 0x6368756e6b6564ull)
			p->mflags |= M_CHUNKED;
	}
}

/* Set up the header line whose name is of `kind` (TW_NAME_*, 0 for none); `src` is the
 * identity source reading it on this side (-1: none).  The value's hashes start from the seeds. */
static __always_inline void tw_header_kind(struct tw_ctl *ctl, struct tw_parser *p, int is_req,
					   __u32 side, __u32 kind, __s32 src)
{
	p->hkind = H_OTHER;
	p->cur_src = -1;
	if (kind == H_IDENTITY) {
		if (is_req && src >= 0) {
			p->hkind = H_IDENTITY;
			p->cur_src = src;
			p->vtoken = (ctl->token_sources >> (src & 31)) & 1;
		}
	} else if (kind == H_CLEN) {
		p->hkind = H_CLEN;
		if (p->mflags & M_CLEN)
			p->mflags |= M_BAD_CLEN;  /* repeated: refuse to guess */
		p->mflags |= M_CLEN;
		p->num = 0;
	} else if (kind == H_TE) {
		p->hkind = H_TE;
		p->word = 0;
	}
	p->h1 = ctl->seed1;
	p->h2 = ctl->seed2;
	p->vlen = 0;
	p->vflags = 0;
	if (p->hkind != H_IDENTITY)
		p->vtoken = 0;
}

/* Classify a header name that ended with ':' (the byte-wise path: one hash lookup). */
static __always_inline void tw_header_name(struct tw_ctl *ctl, struct tw_parser *p, int is_req,
					   __u32 side)
{
	__u64 h = p->h1;
	__u32 len = p->pos;
	struct tw_name *nm = 0;
	tw_barrier_var(len);
	if (len <= TW_NAME_MAX && (ctl->name_first[len] & (1u << (p->name0 & 31))))
		nm = tw_names.lookup(&h);
	if (nm && nm->len == len)
		tw_header_kind(ctl, p, is_req, side, nm->kind, nm->source[side & 1]);
	else
		tw_header_kind(ctl, p, is_req, side, 0, -1);
}

/* Which candidate of tw_pfx the header line starting with words w0..w2 names: its index when
 * the name is whole in the words, TW_PFX_SLOW when only its first TW_PFX_BYTES matched (the
 * line goes through the byte-wise path), TW_PFX_NONE when none matches.  Whether the
 * candidate applies to this side and direction is the caller's test (a name that does not
 * apply names an uninteresting line): a per-candidate test of the `use` bits here is hoisted
 * by clang into spilled constants that the verifier then tells apart, path by path. */
#define TW_PFX_NONE 0xffu
#define TW_PFX_SLOW 0xfeu
static __always_inline __u32 tw_line_candidate(struct tw_pfx *x, __u64 w0, __u64 w1, __u64 w2)
{
	for (__u32 i = 0; i < TW_NPFX; i++) {
		if (((w0 | x->fold[i][0]) & x->mask[i][0]) != x->want[i][0] ||
		    ((w1 | x->fold[i][1]) & x->mask[i][1]) != x->want[i][1] ||
		    ((w2 | x->fold[i][2]) & x->mask[i][2]) != x->want[i][2])
			continue;
		return x->exact[i] ? i : TW_PFX_SLOW;
	}
	return TW_PFX_NONE;
}

/* SWAR: 0x80 in each byte of w that is '\n' (exact for the lowest one, which is all the
 * callers use); with `target` also every byte <= ' ' and DEL (what ends a request target). */
static __always_inline __u64 tw_stop_bytes(__u64 w, __u64 target)
{
	const __u64 ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
	__u64 y = w ^ (ones * '\n');
	__u64 m = (y - ones) & ~y;
	__u64 z = w ^ (ones * 0x7f);
	__u64 t = ((w - ones * 0x21) & ~w) | ((z - ones) & ~z);
	return (m | (t & target)) & highs;
}

/* v, through the job's memory: the verifier cannot know the value read back.  Paths of one
 * loop iteration that set different constants (a state, a candidate) then end in the same
 * verifier state and are pruned as one, instead of being explored on to the loop's end each. */
static __always_inline __u32 tw_opaque(struct tw_job *j, __u32 v)
{
	*(volatile __u32 *)&j->opaque = v;
	return *(volatile __u32 *)&j->opaque;
}

/* Index of the lowest byte flagged 0x80 in m (m != 0). */
static __always_inline __u32 tw_first_flag(__u64 m)
{
	__u64 b = m & (~m + 1);
	return ((((b >> 7) - 1) & 0x0101010101010101ull) * 0x0101010101010101ull) >> 56;
}

/* 0x80 in each byte of w that is an ASCII capital letter (exact per byte). */
static __always_inline __u64 tw_capitals(__u64 w)
{
	const __u64 ones = 0x0101010101010101ull, low7 = 0x7f7f7f7f7f7f7f7full;
	__u64 x = w & low7;
	return ((ones * (127 + 0x5b) - x) & ~w & (x + ones * (127 - 0x40))) & (ones * 0x80);
}

/* "HTTP/1." and a digit, little-endian (a request's version, a status line's start). */
#define TW_HTTP1_WORD 0x2e312f50545448ull  /* "HTTP/1." */

static __always_inline int tw_is_http1(__u64 w)
{
	__u8 minor = w >> 56;
	return (w & 0xffffffffffffffull) == TW_HTTP1_WORD && minor >= '0' && minor <= '9';
}

/* One byte of a header value, for the kind of header it is. */
static __always_inline void tw_value_byte(struct tw_conn *c, struct tw_parser *p,
					  struct tw_dfa *d, __u8 ch, __u32 cls)
{
	__u32 kind = p->hkind;
	if (kind == H_IDENTITY) {
		__u32 n = p->vlen;
		if (n < TW_VALUE_MAX) {
			__u32 j = n;
			tw_barrier_var(j);  /* keep the mask: 6.1 reloads n from an unbounded spill */
			c->vbuf[p->vcur & 1][j & (TW_VALUE_MAX - 1)] = ch;
			p->h1 = (p->h1 ^ ch) * TW_FNV_PRIME1;
			p->h2 = (p->h2 ^ ch) * TW_FNV_PRIME2 + 1;
			p->vlen = n + 1;
		} else {
			p->vflags |= TW_F_TOO_LONG;
		}
		if (cls == TW_C_CTL)
			p->vflags |= TW_F_BAD_BYTE;
	} else if (kind == H_CLEN) {
		if (cls == TW_C_DIGIT || cls == TW_C_ONE) {
			if (p->num > 0xffffffffffull)  /* > 1 TB: nonsense */
				p->mflags |= M_BAD_CLEN;
			p->num = p->num * 10 + d->dval[ch];
		} else if (cls != TW_C_SP && cls != TW_C_HTAB) {
			p->mflags |= M_BAD_CLEN;
		}
	} else if (kind == H_TE) {
		if (cls != TW_C_SP && cls != TW_C_HTAB)
			p->word = (p->word << 8) | d->lower[ch];
	}
}

/* Consume body bytes by arithmetic.  Returns how many of avail were consumed. */
static __always_inline __u64 tw_skip(struct tw_parser *p, __u64 avail)
{
	__u64 take = p->skip < avail ? p->skip : avail;
	p->skip -= take;
	return take;
}

/* When the rest of the syscall is body that the parser skips anyway (a response head and its
 * body in one writev, most often), consume it by arithmetic: no iovec walk, no further run.
 * Returns 1 when it did. */
static __always_inline int tw_skip_rest(struct tw_parser *p, struct tw_job *j, int is_req)
{
	if (!p->skip || p->skip < j->remaining)
		return 0;
	p->skip -= j->remaining;
	j->remaining = 0;
	if (!p->skip && p->after_skip == AFTER_MESSAGE)
		tw_message_reset(p, is_req);
	return 1;
}

/* Move the job to its next iovec segment. Returns 0 when there is none. */
static __always_inline int tw_next_segment(struct tw_job *j)
{
	if (!j->iov || j->iov_idx + 1 >= j->iovcnt)
		return 0;
	j->iov_idx++;
	struct tw_iovec v = {};
	if (tw_read_user(&v, sizeof(v), (void *)(j->iov + (__u64)j->iov_idx * sizeof(v))) != 0) {
		tw_lose(TW_LOST_READ_FAULT);
		return 0;
	}
	j->buf = v.base;
	j->seg_len = v.len;
	j->seg_off = 0;
	return 1;
}

static __always_inline void tw_charge_bytes(struct tw_ctl *ctl, struct tw_conn *c, struct tw_job *j)
{
	if (!c->opened || j->charged)
		return;  /* no tenant yet (bytes before the first head), or already charged */
	struct tw_agg_val *v = tw_agg_get(ctl, c->cur_key, c->side, c, &c->req, 0);
	if (!v)
		return;
	if (j->is_write)
		__sync_fetch_and_add(&v->tx_bytes, j->total);
	else
		__sync_fetch_and_add(&v->rx_bytes, j->total);
}

/* Send the bytes gathered in ev (or a close) as one tw_h2_event; the seq advances even when
 * the buffer is full, so user space sees the gap. */
static __always_inline void tw_h2_flush(void *ctx, struct tw_h2_event *ev, struct tw_conn *c,
					__u32 d)
{
	ev->seq = c->h2seq[d & 1];
	c->h2seq[d & 1] = ev->seq + 1;
	__u32 size = ev->len & (2 * TW_H2_CHUNK - 1);
	size += __builtin_offsetof(struct tw_h2_event, b);
	tw_barrier_var(size);
	if (size > sizeof(*ev))
		size = sizeof(*ev);
#ifdef TW_HAVE_RINGBUF
	int err = tw_h2_events.ringbuf_output(ev, size, 0);
#else
	int err = tw_h2_events.perf_submit(ctx, ev, size);
#endif
	if (err != 0)
		tw_lose(TW_LOST_H2_BUFFER_FULL);
	ev->len = 0;
}

/* TW_TAIL_PROGRAMS_BEGIN (tenantwatch/kernel/loader.py copies this section for TLS) */
/* The parser: one window of the current job, then a tail call to itself. */
int tw_parse(void *ctx)
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
	if (!c)
		return 0;
	int is_req = j->is_req;
	struct tw_parser *p = is_req ? &c->req : &c->resp;
	struct tw_window *win = tw_scratch.lookup(&zero);
	if (!win)
		return 0;
	__u8 *buf = win->b;

	/* Skip body bytes, segment by segment (bounded: a few iovecs at most). */
	for (int s = 0; s < 8; s++) {
		if (j->remaining == 0)
			break;
		__u64 avail = j->seg_len - j->seg_off;
		if (avail > j->remaining)
			avail = j->remaining;
		if (avail == 0) {
			if (!tw_next_segment(j))
				goto done;
			continue;
		}
		if (p->state == TW_S_DEAD || p->state == TW_S_UNTIL_CLOSE ||
		    p->state == TW_S_RESYNC) {
			j->remaining = 0;
			goto done;
		}
		if (!p->skip)
			break;
		__u64 took = tw_skip(p, avail);
		j->seg_off += took;
		j->remaining -= took;
		if (!p->skip && p->after_skip == AFTER_MESSAGE)
			tw_message_reset(p, is_req);
	}
	if (j->remaining == 0 || p->skip)
		goto done;
	if (p->state == TW_S_HTOK) {
		j->mode = TW_PROG_TOKEN;  /* inside a bearer token value: tw_token reads it */
		goto done;
	}

	__u64 avail = j->seg_len - j->seg_off;
	if (avail > j->remaining)
		avail = j->remaining;
	__u32 n = avail > TW_READ ? TW_READ : (__u32)avail;
	if (n == 0)
		goto done;
	if (tw_read_user(buf, n & (TW_READ - 1) ? n & (TW_READ - 1) : TW_READ,
			 (void *)(j->buf + j->seg_off)) != 0) {
		tw_lose(TW_LOST_READ_FAULT);
		j->remaining = 0;
		goto done;
	}
	struct tw_dfa *d = tw_dfa.lookup(&zero);
	if (!d)
		goto done;
	struct tw_pfx *x = tw_pfx.lookup(&zero);
	if (!x)
		goto done;
	__u32 ui = ((c->side & 1) << 1) | (is_req & 1);
	tw_barrier_var(ui);  /* keep the mask where it is used: the 6.1 verifier loses this bound */
	/* More of this segment follows the window: a header line starting too close to the
	 * window's end for the word compare ends the run there, so the next window starts
	 * with it. */
	int more = avail > n;
	__u32 used = n;
	__u32 event = 0;
	__u32 from = 0;
	/* The state lives in a register inside the loop (no action reads p->state);
	 * a store and reload per byte was the loop's critical path. */
	__u32 state = p->state;
	/* The header-name hash and length also live in registers while a name is read
	 * (p->h1/p->pos are written at the name's end, or when a window ends inside it). */
	__u64 h = p->h1;
	__u32 npos = p->pos & 0xffff;
	/* The position in the window lives in the job (map memory), not in a register: each
	 * iteration reads it back as a value the verifier knows nothing of, so the paths through
	 * one iteration (a word step, a line skipped, a byte of the DFA) end in the same state
	 * and are pruned, instead of multiplying by the positions they reached. */
	j->wpos = 0;
	/* A line end after the last byte read: the word steps stop there at the latest. */
	if (n <= TW_READ)
		buf[n] = '\n';
	tw_barrier_var(n);
	for (__u32 it = 0; it < TW_ITERS; it++) {
		__u32 pos = *(volatile __u32 *)&j->wpos;
		if (pos >= n)
			break;
		/* Every path of the last iteration starts this one alike (tw_opaque): the tests
		 * below would otherwise leave a known state on some, and the verifier would walk
		 * the iteration again for each. */
		state = tw_opaque(j, state) & 0xff;
		__u32 left = n - pos;
		/* What this step does, from a table: the verifier never learns the state. */
		__u32 step = d->step[state & (TW_NSTATES - 1)];
		__u8 *q = buf + (pos & (TW_READ - 1));
		if (step == TW_STEP_LINE && q[0] > ' ') {
			/* A header line (not a fold, not the blank line): its name, a word at a time. */
			if (left < TW_PFX_BYTES && more) {
				used = pos;  /* the next run starts a window with this line */
				break;
			}
			__u32 cand = TW_PFX_SLOW;
			if (left >= TW_PFX_BYTES)
				cand = tw_line_candidate(x, *(__u64 *)q, *(__u64 *)(q + 8),
							 *(__u64 *)(q + 16));
			cand = tw_opaque(j, cand);
			if (cand < TW_NPFX && !((x->use[ui & 3] >> cand) & 1))
				cand = TW_PFX_NONE;  /* not read on this side or direction */
			if (cand < TW_NPFX) {
				tw_header_kind(ctl, p, is_req, c->side, x->kind[cand],
					       x->source[cand][c->side & 1]);
				state = tw_opaque(j, p->vtoken ? TW_S_HTOK : TW_S_HOWS) & 0xff;
				*(volatile __u32 *)&j->wpos = pos + (x->len[cand] & 0xff) + 1;
				continue;
			}
			if (cand == TW_PFX_NONE) {
				/* Nothing to take from this line: skip to its end. */
				p->hkind = H_OTHER;
				p->prev_identity = 0;
				state = tw_opaque(j, TW_S_SKIP) & 0xff;
				step = TW_STEP_SKIP;
			}
		} else if (step == TW_STEP_METHOD && left >= 16) {
			/* A request line's method, a word at a time: capitals up to a space. */
			__u64 w = *(__u64 *)q;
			__u64 y = w ^ 0x2020202020202020ull;
			__u64 sp = (y - 0x0101010101010101ull) & ~y & 0x8080808080808080ull;
			__u32 k = tw_opaque(j, sp ? tw_first_flag(sp) : 0) & 7;
			__u64 low = (1ull << (8 * k)) - 1;
			if (k && (tw_capitals(w) & low) == (0x8080808080808080ull & low)) {
				__u64 method = __builtin_bswap64(w & low) >> (8 * (8 - k));
				p->word = method;
				p->method = method;
				if (method == 0x48454144ull)  /* "HEAD" */
					p->mflags |= M_HEAD;
				state = tw_opaque(j, TW_S_TARGET0) & 0xff;
				*(volatile __u32 *)&j->wpos = pos + k + 1;
				continue;
			}
		} else if (step == TW_STEP_VERSION && left >= 16) {
			/* A request line's version and line end. */
			__u32 adv = 0;
			if (tw_is_http1(*(__u64 *)q)) {
				if (q[8] == '\n')
					adv = 9;
				else if (q[8] == '\r' && q[9] == '\n')
					adv = 10;
			}
			adv = tw_opaque(j, adv) & 15;
			if (adv) {
				state = tw_opaque(j, TW_S_HS) & 0xff;
				*(volatile __u32 *)&j->wpos = pos + adv;
				continue;
			}
		} else if (step == TW_STEP_STATUS && left >= 16) {
			/* A status line up to its reason phrase: "HTTP/1.x DDD". */
			__u32 d0 = q[9] - '0', d1 = q[10] - '0', d2 = q[11] - '0';
			__u32 ok = tw_is_http1(*(__u64 *)q) && q[8] == ' ' && d0 < 10 && d1 < 10 &&
				   d2 < 10;
			if (tw_opaque(j, ok) & 1) {
				p->status = d0 * 100 + d1 * 10 + d2;
				state = tw_opaque(j, TW_S_LREST) & 0xff;
				*(volatile __u32 *)&j->wpos = pos + 12;
				continue;
			}
		}
		if (step == TW_STEP_SKIP || step == TW_STEP_TARGET) {
			/* Bytes with nothing to do up to a line end (or the end of a request
			 * target): TW_SKIP_WORDS words a step; the byte after them, or the one that
			 * ends the run, goes through the DFA below. */
			__u64 target = step == TW_STEP_TARGET ? ~0ull : 0;
			__u32 adv = 8 * TW_SKIP_WORDS;
			for (__u32 k = 0; k < TW_SKIP_WORDS; k++) {
				__u64 m = tw_stop_bytes(*(__u64 *)(q + 8 * k), target);
				if (m) {
					adv = 8 * k + tw_first_flag(m);
					break;
				}
			}
			*(volatile __u32 *)&j->wpos = pos + adv;
			pos = *(volatile __u32 *)&j->wpos;
			if (pos >= n)
				continue;  /* the line end after the last byte (not one of the data) */
		}
		__u8 ch = buf[pos & (TW_READ - 1)];
		__u32 cls = d->cls[ch] & (TW_NCLASSES - 1);
		__u32 st = state & (TW_NSTATES - 1);
		__u32 e = d->trans[st][cls];
		state = e & 0xff;
		__u32 act = (e >> TW_ACTION_SHIFT) & 0xff;
		*(volatile __u32 *)&j->wpos = pos + 1;
		if (act == TW_A_NONE)
			continue;  /* most bytes: a token, a target, an uninteresting value */
		if (act == TW_A_NAME) {  /* the next most common: a header-name byte */
			h = (h ^ d->lower[ch]) * TW_FNV_PRIME1;
			npos = (npos + 1) & 0xffff;
			continue;
		}
		if (act == TW_E_CHUNK_LINE && p->num && p->num < n - pos) {
			/* A chunk whose data ends inside this window: skip it here, not in a run of
			 * its own (a tail call per chunk ran pipelined chunked bodies out of budget). */
			*(volatile __u32 *)&j->wpos = pos + 1 + (__u32)p->num;
			p->num = 0;
			state = tw_opaque(j, TW_S_CCRLF) & 0xff;
			continue;
		}
		if (act >= TW_E_FIRST) {
			event = act;
			from = st;
			used = pos + 1;
			break;
		}
		switch (act) {
		case TW_A_NAME_FIRST:
			p->name0 = d->lower[ch];
			p->hkind = H_OTHER;
			h = (ctl->seed1 ^ d->lower[ch]) * TW_FNV_PRIME1;
			npos = tw_opaque(j, 1) & 0xffff;  /* a known 1, 2, 3 ... would split paths */
			break;
		case TW_A_NAME_END:
			p->h1 = h;
			p->pos = npos;
			tw_header_name(ctl, p, is_req, c->side);
			if (p->hkind == H_OTHER) {
				/* Nothing to take from this value: skip to the line end. */
				p->prev_identity = 0;
				state = tw_opaque(j, TW_S_SKIP) & 0xff;
			} else if (p->vtoken) {
				/* A bearer token value follows: the next byte hands it to tw_token. */
				state = tw_opaque(j, TW_S_HTOK) & 0xff;
			}
			break;
		case TW_A_VALUE_BAD:
			p->vflags |= TW_F_BAD_BYTE;
			/* fall through */
		case TW_A_VALUE:
			tw_value_byte(c, p, d, ch, cls);
			if (p->vflags & TW_F_TOO_LONG) {
				/* Nothing more to take from an identity value over TW_VALUE_MAX: it
				 * ends here, and the rest of its line is skipped a word at a time. */
				tw_header_end(p);
				state = tw_opaque(j, TW_S_SKIP) & 0xff;
			}
			break;
		case TW_A_BAD:
			p->vflags |= TW_F_BAD_BYTE;
			break;
		case TW_A_LINE_END:
			tw_header_end(p);
			break;
		case TW_A_METHOD:
			p->word = (p->word << 8) | ch;
			break;
		case TW_A_METHOD_END:
			p->method = p->word;
			if (p->word == 0x48454144ull)  /* "HEAD" */
				p->mflags |= M_HEAD;
			break;
		case TW_A_STATUS:
			p->status = p->status * 10 + d->dval[ch];
			break;
		case TW_A_HEX:
			p->num = (p->num << 4) | d->hval[ch];
			break;
		case TW_A_FOLD:
			if (p->prev_identity)
				p->best_flags |= TW_F_FOLDED;
			break;
		case TW_A_NUM_RESET:
			p->num = 0;
			break;
		}
	}
	if (!event && used == n)
		used = j->wpos < n ? j->wpos : n;  /* out of iterations: the rest in the next run */
	p->state = state;
	if (state == TW_S_HNAME) {
		p->h1 = h;
		p->pos = npos;
	}
	if (event == TW_E_TOKEN) {
		/* The byte that raised it is the token's: tw_token reads from there. */
		used -= 1;
		p->state = TW_S_HTOK;
		j->mode = TW_PROG_TOKEN;
	}
	j->seg_off += used;
	j->remaining -= used;
	if (event == TW_E_HEAD_END) {
		tw_head_end(ctx, ctl, c, p, is_req, j);
		if (!j->emit)
			tw_skip_rest(p, j, is_req);  /* the body ends the syscall: no further run */
	} else if (event == TW_E_CHUNK_LINE) {
		if (p->num == 0) {
			p->state = TW_S_TS;  /* last chunk: trailers up to a blank line */
		} else if (p->num > 0xfffffffffffull) {
			tw_lose(TW_LOST_RESYNC);
			tw_resync(c, p, is_req);
		} else {
			p->skip = p->num;
			p->num = 0;
			p->after_skip = AFTER_CHUNK;
			p->state = TW_S_CCRLF;
		}
	} else if (event == TW_E_MESSAGE_END) {
		tw_message_reset(p, is_req);
	} else if (event == TW_E_DEAD) {
		/* A start line that is not HTTP/1.x (TLS, the HTTP/2 preface, binary) is
		 * no loss; losing track inside headers or a body is.  States before HS
		 * are the start-line states (kernel/dfa.py keeps that order). */
		if (from >= TW_S_HS) {
			tw_lose(TW_LOST_RESYNC);
			tw_resync(c, p, is_req);
		}
	}

done:
	if (j->remaining > 0 || j->emit) {
		if (j->tails < TW_MAX_TAILS) {
			j->tails++;
			tw_progs.call(ctx, j->emit ? TW_PROG_EMIT : (j->mode & 3));
			/* only reached when the tail call failed */
		}
		j->emit = 0;
		j->mode = TW_PROG_PARSE;
		if (j->remaining == 0)
			goto charge;
		/* The rest of this syscall was not parsed: the parser is out of step
		 * with the stream until a syscall starts a new message (tw_exit). */
		tw_lose(TW_LOST_SCAN_BUDGET);
		if (is_req && p->state >= TW_S_HS && p->state <= TW_S_HLF) {
			/* Cut inside a request's headers: count the request with the identity
			 * seen so far (its response still completes it). */
			tw_request_done(ctl, c, p, j->ts_ns, j);
		}
		tw_resync(c, p, is_req);
		p->skip = 0;
	}
charge:
	tw_charge_bytes(ctl, c, j);
	tw_thread_set(c);  /* its CPU from now on goes to this connection's request */
	return 0;
}

/* The bytes of a bearer token value (the header line of a jwt source), up to the CR or
 * LF that ends it, which is left to tw_parse: hashed like any identity value, the first
 * TW_VALUE_MAX kept for the aggregate entry, all of them (up to TW_TOKEN_MAX) kept in
 * the connection's tw_tokbufs entry for tw_token_emit.  A loop with no DFA: far fewer
 * instructions per byte than tw_parse, so a token costs less than other header bytes. */
int tw_token(void *ctx)
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
		tw_progs.call(ctx, j->mode & 3);
	}
	/* The tail call failed: count it like tw_parse's out-of-budget case. */
	j->mode = TW_PROG_PARSE;
	if (j->remaining > 0) {
		tw_lose(TW_LOST_SCAN_BUDGET);
		tw_resync(c, p, j->is_req);
		p->skip = 0;
	}
	return 0;
}

/* Send a long bearer token to user space, once per distinct token (tw_tok_seen) and
 * rate-limited per CPU, then parse on. */
int tw_token_emit(void *ctx)
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
		tw_lose(TW_LOST_TOKEN_INCOMPLETE);
		goto next;
	}
	struct tw_rate *r = tw_tok_rate.lookup(&zero);
	if (!r)
		goto next;
	if (now - r->window_ns >= 1000000000ull) {
		r->window_ns = now;
		r->sent = 0;
	}
	if (r->sent >= ctl->token_per_cpu_per_sec) {
		tw_lose(TW_LOST_TOKEN_RATE_LIMITED);
		goto next;
	}
	r->sent++;
	tb->key = key;
	tb->side = c->side;
#ifdef TW_HAVE_RINGBUF
	int err = tw_token_events.ringbuf_output(tb, sizeof(*tb), 0);
#else
	int err = tw_token_events.perf_submit(ctx, tb, sizeof(*tb));
#endif
	if (err != 0) {
		tw_lose(TW_LOST_TOKEN_BUFFER_FULL);
		goto next;
	}
	tw_tok_seen.update(&key, &now);
next:
	if (j->tails < TW_MAX_TAILS) {
		j->tails++;
		tw_progs.call(ctx, TW_PROG_PARSE);
	}
	return 0;
}

/* HTTP/2: walk the frames of the job's bytes.  A DATA frame's payload is skipped by
 * arithmetic; frame headers and every other payload (HEADERS, CONTINUATION, SETTINGS,
 * RST_STREAM ...) are copied into tw_h2_events for user space, which splits the frames and
 * decodes HPACK (tenantwatch/h2).  The state between syscalls: p->skip (DATA payload left),
 * p->num (other payload left), p->pos and c->h2hdr (a frame header cut by a syscall). */
int tw_h2(void *ctx)
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
		if (h[3] == 0)
			p->skip = flen;  /* DATA: its payload never leaves the kernel */
		else
			p->num = flen;
	}
	if (ev->len)
		tw_h2_flush(ctx, ev, c, d);
	if (j->remaining > 0 && j->tails < TW_MAX_TAILS) {
		j->tails++;
		tw_progs.call(ctx, TW_PROG_H2);
	}
	if (j->remaining > 0) {
		/* Cut: the next frame boundary is unknown.  A skipped seq tells user space. */
		tw_lose(TW_LOST_SCAN_BUDGET);
		c->h2seq[d] += 1;
		c->h2 = 2;
	}
	tw_thread_set(0);  /* HTTP/2 CPU is not split per stream: __unattributed__ */
	return 0;
}

/* TW_TAIL_PROGRAMS_END */

/* ---------------------------------------------------------------- syscalls */

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

static __always_inline int tw_enter(__u32 fd, __u64 buf, __u64 iovcnt, __u32 is_write)
{
	if (!tw_is_target())
		return 0;
	return tw_stash(fd, buf, iovcnt, is_write);
}

static __always_inline int tw_enter_msg(__u32 fd, __u64 msg, __u32 is_write)
{
	if (!tw_is_target())
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
	__builtin_memset(t, 0, sizeof(*t));
	t->side = side;
	t->open_ns = bpf_ktime_get_ns();
	t->req.best_src = -1;
	t->resp.best_src = -1;
	t->req.cur_src = -1;
	t->resp.cur_src = -1;
	t->resp.state = TW_S_RS0;
	if (tw_conns.update(&ck, t) != 0) {
		tw_lose(TW_LOST_CONN_MAP_FULL);
		return 0;
	}
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

/* A connection becomes HTTP/2: both directions go to tw_h2 from a frame boundary on. */
static __always_inline void tw_h2_begin(struct tw_conn *c, __u64 salt)
{
	c->h2 = 1;
	c->h2id = (bpf_ktime_get_ns() << 20) ^ ((__u64)bpf_get_smp_processor_id() << 8) ^ salt;
	c->req.skip = 0;
	c->req.num = 0;
	c->req.pos = 0;
	c->resp.skip = 0;
	c->resp.num = 0;
	c->resp.pos = 0;
}

/* Frame headers checked before a connection older than the daemon is taken for HTTP/2. */
#define TW_H2_PROBE_FRAMES 4
/* SETTINGS_MAX_FRAME_SIZE's default: a peer may allow more, which only makes us not adopt. */
#define TW_H2_MAX_FRAME 16384

/* Do these bytes start with HTTP/2 frames?  For a connection first seen mid-stream (older than
 * the daemon) that sends no request line: up to TW_H2_PROBE_FRAMES frame headers must each keep
 * their type's rules (RFC 9113 section 6: length, flags, stream id) and chain to the end of the
 * bytes (or pass all TW_H2_PROBE_FRAMES checks).  TLS records and text fail the length check at
 * once (their first byte would be a frame length over 1 MiB).  `first`: the first 9 bytes. */
static __always_inline int tw_looks_like_h2_frames(__u64 buf, __u64 len, const __u8 *first)
{
	__u64 off = 0;
	for (int k = 0; k < TW_H2_PROBE_FRAMES; k++) {
		if (off == len)
			return k > 0;
		if (off + 9 > len)
			return 0;  /* a cut frame header: not at a boundary, or not HTTP/2 */
		__u8 h[9] = {};
		if (k == 0)
			__builtin_memcpy(h, first, sizeof(h));  /* the caller has read them */
		else if (tw_read_user(h, sizeof(h), (void *)(buf + off)) != 0)
			return 0;
		__u32 flen = ((__u32)h[0] << 16) | ((__u32)h[1] << 8) | h[2];
		__u32 sid = ((__u32)(h[5] & 0x7f) << 24) | ((__u32)h[6] << 16) |
			    ((__u32)h[7] << 8) | h[8];
		__u8 fl = h[4];
		if ((h[5] & 0x80) || flen > TW_H2_MAX_FRAME)
			return 0;
		switch (h[3]) {
		case 0:  /* DATA: END_STREAM, PADDED */
			if (!sid || (fl & ~0x09))
				return 0;
			break;
		case 1:  /* HEADERS: END_STREAM, END_HEADERS, PADDED, PRIORITY */
			if (!sid || (fl & ~0x2d))
				return 0;
			break;
		case 2:  /* PRIORITY */
			if (!sid || flen != 5 || fl)
				return 0;
			break;
		case 3:  /* RST_STREAM */
			if (!sid || flen != 4 || fl)
				return 0;
			break;
		case 4:  /* SETTINGS: ACK */
			if (sid || flen % 6 || (fl & ~0x01))
				return 0;
			break;
		case 6:  /* PING: ACK */
			if (sid || flen != 8 || (fl & ~0x01))
				return 0;
			break;
		case 7:  /* GOAWAY */
			if (sid || flen < 8 || fl)
				return 0;
			break;
		case 8:  /* WINDOW_UPDATE */
			if (flen != 4 || fl)
				return 0;
			break;
		case 9:  /* CONTINUATION: END_HEADERS */
			if (!sid || (fl & ~0x04))
				return 0;
			break;
		default:  /* PUSH_PROMISE never comes from a client; unknown types: not sure */
			return 0;
		}
		off += 9 + flen;
		if (off > len)
			return k > 0;  /* the last frame goes on in the next syscall */
	}
	return 1;
}

/* HTTP/2: the client preface starts the request direction of a fresh connection ("PRI * HT",
 * then "TP/2.0\r\n\r\nSM\r\n\r\n").  From then on both directions go to tw_h2, which
 * skips the 24 preface bytes.  Checked once per connection (before its first request). */
static __always_inline int tw_h2_detect(struct tw_conn *c, __u64 first, __u64 first_len,
					int is_req)
{
	if (c->h2)
		return 1;
	if (!is_req || c->opened || c->fifo_tail || first_len < 8 || c->req.state != TW_S_RQ0)
		return 0;
	__u64 w = 0;
	if (tw_read_user(&w, sizeof(w), (void *)first) != 0)
		return 0;
	if (w != 0x5448202a20495250ull)  /* "PRI * HT", little-endian */
		return 0;
	tw_h2_begin(c, first_len);
	c->req.skip = 24;
	return 1;
}

/* An unknown fd (a file, a pipe, or a connection older than the daemon) is tracked only
 * when its bytes start a request head, or HTTP/2 frames; the direction gives the side.
 * Adopted: its values are not trusted before its first HTTP response (TW_F_ADOPTED). */
static __always_inline struct tw_conn *tw_conn_adopt(__u64 ck, __u64 first, __u64 first_len,
						     __u32 is_write)
{
	int h2 = 0;
	if (first_len < 8)
		return 0;
	__u8 b[9] = {};  /* one read for both checks: most unknown fds are files (an access log) */
	if (tw_read_user(b, first_len < 9 ? 8 : 9, (void *)first) != 0)
		return 0;
	if (!tw_request_line_start(b)) {
		/* HTTP/2 frames: counted in user space, never decoded (TW_H2_F_MIDSTREAM). */
		if (!tw_looks_like_h2_frames(first, first_len, b))
			return 0;
		h2 = 1;
	}
	struct tw_conn *c = tw_conn_new(ck, is_write ? TW_SIDE_CLIENT : TW_SIDE_SERVER);
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
static __always_inline int tw_job_start(struct tw_conn *c, __u64 ck, __u64 iov, __u32 iovcnt,
					__u64 first, __u64 first_len, __u64 total,
					__u32 is_write)
{
	__u32 zero = 0;
	struct tw_job *j = tw_jobs.lookup(&zero);
	if (!j)
		return -1;
	j->conn = ck;
	j->ts_ns = bpf_ktime_get_ns();
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
		if (j->is_req && c->req_hold)
			return -1;
		int start = first_len >= 8 &&
			    (j->is_req ? tw_looks_like_request(first) : tw_looks_like_status(first));
		if (!start)
			return -1;
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
		tw_thread_set(c);
		return -1;
	}
	return j->mode;
}

#include "tls.c"

static __always_inline int tw_exit(void *ctx, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tw_args args;
	if (!tw_unstash(id, &args) || ret <= 0)
		return 0;
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
				ret, args.is_write);
	if (prog >= 0)
		tw_progs.call(ctx, prog);
	return 0;
}

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

TRACEPOINT_PROBE(syscalls, sys_exit_sendfile64)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tw_args a;
	long ret = args->ret;
	if (!tw_unstash(id, &a) || ret <= 0)
		return 0;
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
	tw_conns.delete(&ck);
	tw_conn_new(ck, side);
	if (side == TW_SIDE_SERVER)
		tw_thread_set(0);  /* accepting is nobody's request yet */
	return 0;
}

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
	__u64 ck = (bpf_get_current_pid_tgid() & 0xffffffff00000000ull) | args->fd;
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
			tw_h2_flush(args, ev, c, 1);
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
		if (c->opened) {
			struct tw_agg_val *v = tw_agg_get(ctl, c->conn_key, c->side, c, &c->req, 0);
			if (v)
				tw_conn_end(v, c, bpf_ktime_get_ns());
		}
	}
	tw_conns.delete(&ck);
	return 0;
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
TRACEPOINT_PROBE(sched, sched_process_exec)
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

TRACEPOINT_PROBE(sched, sched_process_exit)
{
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
