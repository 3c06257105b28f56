/* tw_abi.h: only what crosses kernel <-> user space.
 *
 * tenantwatch/kernel/abi.py mirrors every struct here with ctypes, and
 * tests/kernel/test_load.py checks the sizes against the compiled program.
 * Fields are ordered widest first with explicit _pad fields; never packed.
 */
#ifndef TW_ABI_H
#define TW_ABI_H

/* Longest identity value kept: a tenant id is at most 63 bytes by the default
 * pattern, and a Host value needs room for a suffix such as ".api.example.com".
 * 128 keeps the aggregate key entry at one cache-friendly size; longer values are
 * flagged TW_F_TOO_LONG and land in __invalid__. */
#define TW_VALUE_MAX 128
/* Longest bearer token (the value of a jwt source) the kernel hashes whole and
 * hands to user space; longer values are flagged TW_F_TOO_LONG.  Only the first
 * TW_VALUE_MAX bytes go into the aggregate entry: the whole token reaches user space
 * once per distinct token (struct tw_token_event), not per request. */
#define TW_TOKEN_MAX 4096
/* Configured identity sources; one kernel slot each (config.MAX_SOURCES). */
#define TW_MAX_SOURCES 8
/* Header names compared in the kernel; longer names can never be identity headers. */
#define TW_NAME_MAX 32
/* Latency bucket bounds; 24 covers the 16 default bounds with room to spare. */
#define TW_MAX_BUCKETS 24
/* Status classes: 1xx 2xx 3xx 4xx 5xx none (ended without a response). */
#define TW_NCLASS 6
#define TW_CLASS_NONE 5
/* In-flight requests per connection (pipelining depth tracked exactly).  nginx
 * handles pipelined requests one at a time; clients rarely pipeline more than a
 * handful.  Deeper pipelines are counted as lost(pipeline_overflow), the request
 * itself is still counted under status "none". */
#define TW_FIFO 8
/* Process names matched in the kernel on exec (config targets). */
#define TW_MAX_COMMS 8
#define TW_COMM_LEN 16

/* ValueFlag bits (tenantwatch/kernel/records.py). */
#define TW_F_DUPLICATE   (1u << 0)
#define TW_F_FOLDED      (1u << 1)
#define TW_F_BAD_BYTE    (1u << 2)
#define TW_F_TOO_LONG    (1u << 3)
#define TW_F_COLLISION   (1u << 4)
#define TW_F_OVERFLOW    (1u << 5)
#define TW_F_NO_IDENTITY (1u << 6)
#define TW_F_UNATTRIBUTED (1u << 7)  /* the entry of TW_KEY_UNATTRIBUTED */
/* The request is on a connection first seen mid-stream (opened before the daemon, or its
 * accept/connect not seen) that has not yet answered with an HTTP response: after a WebSocket
 * upgrade or inside a body, bytes that look like a request line may be anybody's payload, so
 * such a value is never trusted.  The first parsed response head lifts it for the requests
 * that follow on the connection. */
#define TW_F_ADOPTED     (1u << 8)

/* Reserved aggregate keys.  Ordinary keys are 64-bit keyed hashes; the chance that
 * one equals these is 2^-63 and is handled like any other collision. */
#define TW_KEY_COLLISION 1ull
#define TW_KEY_OVERFLOW  2ull
#define TW_KEY_UNATTRIBUTED 3ull  /* CPU of target threads with no current request */
#define TW_KEY_RESERVED_MAX 3ull

/* Sides (records.Side). */
#define TW_SIDE_SERVER 0
#define TW_SIDE_CLIENT 1

/* Reasons for tenantwatch_events_lost_total, index into tw_lost. */
#define TW_LOST_CONN_MAP_FULL      0  /* connection not tracked: tw_conns full */
#define TW_LOST_IDENTITY_MAP_FULL  1  /* identity folded into __other__: tw_agg full this tick */
#define TW_LOST_SCAN_BUDGET        2  /* bytes of a syscall left unparsed: over the tail-call budget */
#define TW_LOST_PIPELINE_OVERFLOW  3  /* more than TW_FIFO requests in flight on one connection */
#define TW_LOST_HASH_COLLISION     4  /* two values met on one key: counted as __invalid__ */
#define TW_LOST_ARGS_MAP_FULL      5  /* syscall arguments overwritten: two traced threads shared a tw_args slot */
#define TW_LOST_READ_FAULT         6  /* user memory could not be read */
#define TW_LOST_RESYNC             7  /* parser met bytes it cannot place and gave up on a connection */
#define TW_LOST_CPU_MAP_FULL       8  /* CPU time folded into the overflow entry: tw_cpu full */
#define TW_LOST_SLOW_RATE_LIMITED  9  /* a slow request not sent as an event: over the rate */
#define TW_LOST_SLOW_BUFFER_FULL  10  /* a slow-request event did not fit the ring/perf buffer */
#define TW_LOST_TOKEN_RATE_LIMITED 11 /* a new token not sent to user space: over the rate */
#define TW_LOST_TOKEN_BUFFER_FULL 12  /* a new token did not fit the ring/perf buffer */
#define TW_LOST_TOKEN_INCOMPLETE  13  /* a token's bytes were not all captured (buffer evicted) */
#define TW_LOST_TLS_NO_FD         14  /* TLS plaintext whose socket is not known yet: not parsed */
#define TW_LOST_H2_BUFFER_FULL    15  /* HTTP/2 frame bytes did not fit the ring/perf buffer */
#define TW_LOST_BREACH_RATE_LIMITED 16 /* an isolation breach not sent as an event: over the rate */
#define TW_LOST_BREACH_BUFFER_FULL 17 /* an isolation-breach event did not fit the ring/perf buffer */
#define TW_LOST_BREACH_MAP_FULL   18  /* a breach's (requester, served) pair did not fit tw_breach */
#define TW_LOST_CLOSE_MAP_FULL    19  /* a close did not fit its identity's entry nor tw_closes */
#define TW_LOST_MAX               20

/* Run-queue delay buckets (wakeup -> running of target threads): bounds in
 * tw_ctl.runq_bounds_ns, exported as tenantwatch_runqueue_delay_seconds. */
#define TW_RUNQ_BUCKETS 16

/* tw_cpu_key.side bit: the key is an HTTP/2 stream's, tw_h2_stream_key(connection id, stream
 * id); user space maps it to the stream's identity (tenantwatch/h2). */
#define TW_CPU_H2 2

/* CPU time per (identity, process, CPU, side) in one tick; double-buffered by the
 * gen field (= tw_ctl.active & 1) so user space drains a generation nobody writes. */
struct tw_cpu_key {
	__u64 key;    /* identity key as in tw_agg_key, or a TW_KEY_* */
	__u32 tgid;
	__u16 cpu;
	__u8 side;
	__u8 gen;
};

struct tw_agg_key {
	__u64 key;   /* keyed hash of (value, source, flags); or a TW_KEY_* */
	__u32 side;  /* TW_SIDE_* */
	__u32 _pad;
};

/* A connection's close counted apart from the aggregate maps (tw_closes): when the identity it
 * opened under has no entry this tick and the map is full, the close still goes to that same
 * key, never to the overflow entry, so that connections_active comes back to 0. */
struct tw_close_key {
	__u64 key;   /* the connection's conn_key */
	__u32 side;  /* TW_SIDE_* */
	__u32 gen;   /* ctl.active & 1 when it was counted */
};

struct tw_close_val {
	__u64 closed;
	__u64 dur_ns;
};

#define TW_VALUE_UNKNOWN 0xffffffffu  /* value_len when the entry was created without the value */

struct tw_agg_val {
	__u64 req_by_class[TW_NCLASS];
	__u64 heads;
	__u64 rx_bytes;
	__u64 tx_bytes;
	__u64 lat_buckets[TW_MAX_BUCKETS + 1];  /* non-cumulative; last is +Inf */
	__u64 lat_sum_ns;
	__u64 conn_opened;
	__u64 conn_closed;
	__u64 conn_dur_ns; /* connections closed (conn_closed): their summed lifetimes */
	__u64 hash2;       /* second, independent keyed hash of the value: detects collisions */
	__u32 value_len;   /* bytes in value, or TW_VALUE_UNKNOWN */
	__s32 source;      /* index of the winning source, -1 none */
	__u32 flags;       /* TW_F_* */
	__u32 lost;        /* losses that may have raised this identity's numbers (tw_lose_on) */
	__u8 value[TW_VALUE_MAX];
};

/* The first fields of a tw_conns value.  User space reads them when it sweeps the
 * connections of processes that exited without closing them, to count those closes. */
struct tw_conn_head {
	__u64 cur_key;
	__u64 conn_key;   /* identity the connection was counted under */
	__u32 side;       /* TW_SIDE_* */
	__u32 opened;     /* 1 once counted in conn_opened */
	__u64 open_ns;    /* when it started under conn_key (accept/connect, first sight, upgrade) */
};

/* A header name the parser acts on, keyed in tw_names by its seeded hash. */
#define TW_NAME_IDENTITY 1
#define TW_NAME_CONTENT_LENGTH 2
#define TW_NAME_TRANSFER_ENCODING 3
/* The source index of a served-tenant header (tenancy.response_check) on a checked side's
 * responses: read like an identity value by the response parser (never a token source). */
#define TW_SRC_SERVED 31
struct tw_name {
	__u32 kind;       /* TW_NAME_* */
	__u32 len;        /* name length: a second check besides the hash */
	__s32 source[4];  /* by [side * 2 + is_req]: on requests, the index of the identity source
			   * reading this header on that side; on responses, TW_SRC_SERVED for the
			   * served-tenant header of a checked side; -1 for none */
};

/* The same header names as prefixes, compared a word at a time at the start of each header
 * line (tw_pfx[0]): most lines (Cookie, User-Agent, Accept ...) match none and are skipped to
 * their line end 8 bytes a step, with no per-byte work.  Candidate i holds the name and its
 * ':' in TW_PFX_WORDS little-endian words; it matches a line when
 * ((word | fold) & mask) == want for each word, which is an exact case-insensitive compare
 * (fold has 0x20 only where the name has a letter).  A name of TW_PFX_BYTES or more is not
 * exact: a match sends that line through the byte-wise path (tw_names).  An unused
 * candidate asks for a NUL first byte, which a header line never has. */
#define TW_NPFX (TW_MAX_SOURCES + 2)
#define TW_PFX_WORDS 3
#define TW_PFX_BYTES (8 * TW_PFX_WORDS)
struct tw_pfx {
	__u64 want[TW_NPFX][TW_PFX_WORDS];
	__u64 mask[TW_NPFX][TW_PFX_WORDS];
	__u64 fold[TW_NPFX][TW_PFX_WORDS];
	__s32 source[TW_NPFX][4];  /* as struct tw_name */
	__u32 kind[TW_NPFX];       /* TW_NAME_* */
	__u32 len[TW_NPFX];        /* name length: the ':' is at this offset */
	__u32 exact[TW_NPFX];      /* 1 when the name and its ':' fit in TW_PFX_BYTES */
	__u32 use[4];              /* [side * 2 + is_req]: bit i when candidate i can apply */
	/* [side * 2 + is_req]: a 64-bit filter of the candidates that can apply there, bit
	 * tw_name_bit(first 4 bytes of the name and ':').  Most lines fail it, and are skipped
	 * without the compare of every candidate (a candidate of under 4 bytes sets all bits). */
	__u64 filter[4];
};

/* The filter bit of a header line starting with word w: its first 4 bytes with 0x20 set in
 * each (a case fold, and more: only equal names must give equal bits), hashed to 6 bits. */
#define TW_NAME_BIT(w) ((((__u32)(w) | 0x20202020u) * 0x9e3779b1u) >> 26)

/* Global settings, tw_ctl[0]. */
struct tw_ctl {
	__u64 seed1;        /* secret seeds: a client cannot aim a collision at a tenant */
	__u64 seed2;
	__u64 bounds_ns[TW_MAX_BUCKETS];
	__u32 active;       /* ticks so far: tw_agg0/tw_agg1 [active & 1] is the one the kernel
			     * writes; user space drains the other */
	__u32 nsources;
	__u32 nbuckets;
	__u32 ncomms;
	/* Header names worth a tw_names lookup, by length: bit (first byte & 31) is set
	 * when a name of that length starting with that byte (lowercased) is in tw_names.
	 * Most header lines (Date, Server, User-Agent ...) then cost no hash lookup. */
	__u32 name_first[TW_NAME_MAX + 1];
	__u32 nrunq;        /* run-queue bounds in use */
	__u64 runq_bounds_ns[TW_RUNQ_BUCKETS];
	__u64 slow_ns;      /* a request at least this slow is sent to user space (0: none) */
	__u32 slow_per_cpu_per_sec;  /* rate limit of those events, per CPU */
	__u32 token_sources;         /* bit i: source i is a bearer token (jwt) */
	__u32 token_per_cpu_per_sec; /* rate limit of token events, per CPU */
	__u32 check_sides;           /* bit TW_SIDE_*: responses on that side are checked (isolation) */
	__u32 check_sources;         /* bit i: source i's identity is checked against responses */
	__u32 breach_per_cpu_per_sec; /* rate limit of isolation-breach events, per CPU */
	__u32 _pad;
	__u8 comms[TW_MAX_COMMS][TW_COMM_LEN];
};

/* One sampled slow request (a trace span in user space): rate-limited, never one
 * per request in steady state. */
struct tw_slow_event {
	__u64 key;         /* identity key, as in tw_agg_key */
	__u64 start_ns;    /* request head seen (bpf_ktime_get_ns, CLOCK_MONOTONIC) */
	__u64 latency_ns;  /* until the response head */
	__u64 method;      /* up to 8 method bytes, packed big-endian ("GET" = 0x474554) */
	__u32 tgid;
	__u32 side;        /* TW_SIDE_* */
	__u32 status;
	__u32 _pad;
};

/* A bearer token seen for the first time (or again after TW_TOKEN_RESEND_NS): its
 * whole value, so user space can verify it once and map its identity key. */
struct tw_token_event {
	__u64 key;         /* identity key, as in tw_agg_key */
	__u32 len;         /* bytes in b */
	__u32 side;        /* TW_SIDE_* */
	__u8 b[TW_TOKEN_MAX];
};

/* The response-side tenant check (docs/isolation.md): what happened to each response on a
 * checked side, counted per CPU in tw_iso[side * TW_ISO_N + TW_ISO_*]. */
#define TW_ISO_CHECKED 0           /* compared with its request's identity (breaches included) */
#define TW_ISO_BREACHES 1            /* ... and named another tenant */
#define TW_ISO_NO_HEADER 2         /* no served-tenant header: not checked */
#define TW_ISO_REQUEST_IDENTITY 3  /* its request had no clean identity from a checked (trusted)
				    * source: not checked */
#define TW_ISO_MALFORMED 4         /* the served header was repeated, folded, too long or had a
				    * control byte: not checked */
#define TW_ISO_N 8
/* Bytes of the request line kept per request for a breach event (method and target). */
#define TW_TARGET_BYTES 32

/* A (requester identity, served value) pair that breached, in the generation ctl.active & 1: user
 * space drains the other generation each tick, like tw_agg0/1. */
struct tw_breach_key {
	__u64 req_key;    /* the request's identity key, as in tw_agg_key */
	__u64 served_h1;  /* the served value's hash (seed1, as an identity value's) */
	__u32 side;       /* TW_SIDE_* */
	__u32 gen;
};

struct tw_breach_val {
	__u64 count;
	__u32 served_len;    /* bytes of the served value (up to TW_VALUE_MAX kept) */
	__u32 _pad;
	__u8 served[TW_VALUE_MAX];
};

/* One isolation breach for the incident responder: rate-limited per CPU, the counts are in
 * tw_breach whatever the rate. */
struct tw_breach_event {
	__u64 ts_ns;         /* the response head's syscall (bpf_ktime_get_ns) */
	__u64 req_key;
	__u64 served_h1;
	__u64 method;        /* as tw_slow_event */
	__u64 target[4];     /* the request line's first TW_TARGET_BYTES bytes (target_len used) */
	__u32 tgid;
	__u32 fd;            /* the connection's fd in tgid (user space finds its 4-tuple) */
	__u32 side;
	__u32 status;
	__u32 target_len;
	__u32 served_len;
	__u8 served[TW_VALUE_MAX];
};

/* HTTP/2: a connection's bytes, one direction, every DATA frame's payload left out (its
 * 9-byte header is kept).  User space splits the frames and decodes HPACK in order
 * (tenantwatch/h2).  Bytes per event: up to 2 * TW_H2_CHUNK - 1. */
#define TW_H2_CHUNK 4096
#define TW_H2_F_CLOSED 1  /* the connection closed (no bytes) */
#define TW_H2_F_MIDSTREAM 2  /* the connection is older than the daemon (adopted at a frame
			      * boundary): its HPACK state is unknown, never decode it */
struct tw_h2_event {
	__u64 conn;    /* the connection's id (unique: an fd is reused by the next connection) */
	__u64 ts_ns;   /* when the bytes moved (bpf_ktime_get_ns) */
	__u32 seq;     /* per connection and direction: 0, 1, 2 ... (a gap: bytes were lost) */
	__u32 len;     /* bytes in b */
	__u8 side;     /* TW_SIDE_* */
	__u8 is_req;   /* 1: the request direction */
	__u8 flags;    /* TW_H2_F_* */
	__u8 _pad[5];
	__u8 b[2 * TW_H2_CHUNK];
};

#endif /* TW_ABI_H */
