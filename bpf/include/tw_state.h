/* tw_state.h: the kernel side's own sizes, flags and structs (nothing here crosses to user
 * space: that is tw_abi.h).  Included by http.c. */
#ifndef TW_STATE_H
#define TW_STATE_H

#ifndef TW_MAX_CONNS
#define TW_MAX_CONNS 65536
#endif
/* The legs followed (capture.sides): bit TW_SIDE_*.  A connection on another leg is never
 * created, at accept/connect or by adoption, so its syscalls end at the connection lookup. */
#ifndef TW_TRACE_SIDES
#define TW_TRACE_SIDES 3
#endif
#define tw_side_traced(side) ((TW_TRACE_SIDES >> ((side) & 1)) & 1)

/* Loop iterations per tw_parse run: one iteration is one DFA byte, a header line's name
 * compared a word at a time, or up to 32 bytes skipped TW_SKIP_WORDS (4) words a step.  Verification
 * costs the iterations times the paths through one; the loader tries TW_ITERS from large
 * to small (older verifiers prune less): 64, 28 (6.1 and 5.10: about 0.89M of the 1M
 * instructions; 32 no longer fits since the name filter), 16. */
#ifndef TW_ITERS
#define TW_ITERS 256
#endif
/* Bytes of a bearer token value tw_token hashes per run (a byte loop, no DFA): a power of two (the read length is masked with it), about four per
 * parser step of the kernel's tier. */
#define TW_TOKEN_RUN (TW_ITERS >= 64 ? 256 : TW_ITERS >= 28 ? 128 : 64)
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
/* Distinct identities per tick (both sides): set by the loader from capture.max_identities
 * (by default twice tenancy.max_tenants plus 2048 for claimed junk values, at least 4096);
 * a flood beyond it folds into __other__. */
#ifndef TW_MAX_IDENTITIES
#define TW_MAX_IDENTITIES 4096
#endif
/* Slots for syscall arguments (a power of two: the slot is tid & (N - 1)). */
#define TW_MAX_THREADS 16384
/* Fds that carry no HTTP (tw_nohttp): slots (a power of two: tgid & (N - 1)), and fds per slot
 * (a multiple of 64: fds at or above it are never marked). */
#define TW_FILE_SLOTS 1024
#define TW_FILE_FDS 256
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
	__u64 target[4];  /* the request line's first bytes (TW_TARGET_BYTES; tlen used) */
	__u32 tlen;
	__u32 _tpad;
};

struct tw_inflight {
	__u64 key;
	__u64 start_ns;
	__u64 method;   /* packed method bytes (for slow-request events) */
	__u64 vh;       /* its identity value's hash (best_h1): the response check compares it */
	__u64 target[4];  /* for a breach event */
	__u32 mflags;
	__s32 src;      /* its identity's source, -1 none */
	__u32 vflags;   /* its identity's TW_F_* */
	__u32 tlen;
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
	/* Identity values: rows 0 and 1 are the request parser's (the current value and the best
	 * one, by req.vcur), rows 2 and 3 the response parser's served-tenant value (resp.vcur
	 * starts at 2). */
	__u8 vbuf[4][TW_VALUE_MAX];
	__u32 adopted;          /* first seen mid-stream (tw_exit), not at accept/connect, and no
				 * HTTP response parsed on it yet */
	__u32 tls;              /* TLS: parsed from SSL_read/SSL_write (tls.c), never from syscalls */
	__u32 h2;               /* HTTP/2 (the client preface was seen): bytes go to tw_h2 */
	__u32 h2seq[2];         /* next tw_h2_event seq, by is_req */
	__u32 h2mid;            /* HTTP/2 seen mid-stream (older than the daemon): TW_H2_F_MIDSTREAM */
	__u32 h2sid;            /* the stream of the last HEADERS, CONTINUATION or DATA frame moved
				 * (either direction): the thread's CPU after it is that stream's */
	__u64 h2id;             /* this HTTP/2 connection's id in events: fds are reused at once */
	__u32 req_hold;         /* requests resync only after a response ends the exchange (tw_resync) */
	__u32 lost_pending;     /* losses of this run not yet charged (tw_lose_on, tw_charge_losses) */
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

/* Fds of one target process whose bytes are not HTTP (an access log, a pipe), per direction
 * (reads in the first TW_FILE_FDS bits, writes in the next): their syscalls stop at entry.
 * Valid in the tick `gen` (tw_ctl.active) they were set in: an fd is looked at again after
 * the next tick (a connection older than the daemon, first seen inside a body, is adopted
 * then). */
struct tw_fdmarks {
	__u32 tgid;
	__u32 gen;
	__u64 bits[2 * TW_FILE_FDS / 64];
};

#endif /* TW_STATE_H */
