/* h2.c: HTTP/2 detection and events (included by http.c; the frame walker is tw_h2 in
 * h2_frames.c, the decoding is user space's: tenantwatch/h2). */

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
