/* parser.c: the HTTP/1.x parser's helpers: message and header state, the word-step
 * primitives (name prefixes, SWAR), value bytes, body skips (included by http.c; the loop
 * itself is tw_parse in parse.c). */

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

/* Both directions of c know where they are in the stream (the CPU hand-over asks). */
static __always_inline int tw_in_step(struct tw_conn *c)
{
	return c->req.state != TW_S_RESYNC && c->resp.state != TW_S_RESYNC;
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
	p->tlen = 0;
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
			tw_lose_on(c, TW_LOST_RESYNC);
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
		tw_lose_on(c, TW_LOST_RESYNC);
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

/* Set up the header line whose name is of `kind` (TW_NAME_*, 0 for none); `src` is its
 * struct tw_name source for this side and direction (-1: none).  The value's hashes start from
 * the seeds.  On a response, a served-tenant header (TW_SRC_SERVED) is read like an identity
 * value (a repeat is TW_F_DUPLICATE), into the response parser's rows of vbuf. */
static __always_inline void tw_header_kind(struct tw_ctl *ctl, struct tw_parser *p, __u32 kind,
					   __s32 src)
{
	p->hkind = H_OTHER;
	p->cur_src = -1;
	if (kind == H_IDENTITY) {
		if (src >= 0) {
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

/* Classify a header name that ended with ':' (the byte-wise path: one hash lookup); ui is
 * side * 2 + is_req. */
static __always_inline void tw_header_name(struct tw_ctl *ctl, struct tw_parser *p, __u32 ui)
{
	__u64 h = p->h1;
	__u32 len = p->pos;
	struct tw_name *nm = 0;
	tw_barrier_var(len);
	if (len <= TW_NAME_MAX && (ctl->name_first[len] & (1u << (p->name0 & 31))))
		nm = tw_names.lookup(&h);
	if (nm && nm->len == len)
		tw_header_kind(ctl, p, nm->kind, nm->source[ui & 3]);
	else
		tw_header_kind(ctl, p, 0, -1);
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
 * callers use). */
static __always_inline __u64 tw_lf_bytes(__u64 w)
{
	const __u64 ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
	__u64 y = w ^ (ones * '\n');
	return (y - ones) & ~y & highs;
}

/* The same for what ends a request target: every byte <= ' ' ('\n' among them), and DEL. */
static __always_inline __u64 tw_target_stops(__u64 w)
{
	const __u64 ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
	__u64 z = w ^ (ones * 0x7f);
	__u64 t = ((w - ones * 0x21) & ~w) | ((z - ones) & ~z);
	return t & highs;
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
			c->vbuf[p->vcur & 3][j & (TW_VALUE_MAX - 1)] = ch;
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
