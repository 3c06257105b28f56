/* aggregate.c: counting into the active aggregate map: request heads, responses (status
 * class, latency), bytes, connections, slow-request events (included by http.c). */

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

/* The entry for key in the active map, created (with the value from vbuf when given) if
 * missing; 0 when the map is full. */
static __always_inline struct tw_agg_val *tw_agg_try(struct tw_ctl *ctl, __u64 key, __u32 side,
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
	return tw_agg_lookup(&k, active);
}

/* The entry for key in the active map; created (with the value from vbuf when
 * given) if missing, the overflow entry when the map is full. */
static __always_inline struct tw_agg_val *tw_agg_get(struct tw_ctl *ctl, __u64 key, __u32 side,
						     struct tw_conn *c, struct tw_parser *p,
						     int with_value)
{
	struct tw_agg_val *v = tw_agg_try(ctl, key, side, c, p, with_value);
	if (v)
		return v;
	tw_lose(TW_LOST_IDENTITY_MAP_FULL);
	struct tw_agg_key k = {.key = TW_KEY_OVERFLOW, .side = side};
	return tw_agg_lookup(&k, ctl->active & 1);
}

/* A loss that may have raised the numbers of identity `key` (counts or CPU charged to it that
 * were not its own): counted by reason, and in that identity's entry, so that user space holds
 * back flags and caps of that tenant only (docs/detection.md, "Completeness").  c may be 0. */
static __always_inline void tw_lose_key(struct tw_ctl *ctl, __u32 reason, __u64 key, __u32 side,
					struct tw_conn *c)
{
	tw_lose(reason);
	struct tw_agg_val *v = tw_agg_get(ctl, key, side, c, c ? &c->req : 0, 0);
	if (v)
		__sync_fetch_and_add(&v->lost, 1);
}

/* A loss on connection c: counted by reason now, and charged at the end of the run
 * (tw_charge_losses) to the identity the connection's work goes to then (c->cur_key): one
 * aggregate lookup per run, not one inlined at every place a loss is found (the verifier walks
 * each of those once per state the parser loop can leave in). */
static __always_inline void tw_lose_on(struct tw_conn *c, __u32 reason)
{
	tw_lose(reason);
	c->lost_pending += 1;
}

/* The run's losses on c, charged to c->cur_key.  Before its first request head a connection's
 * CPU is nobody's (tw_thread_set), so nothing is charged. */
static __always_inline void tw_charge_losses(struct tw_ctl *ctl, struct tw_conn *c)
{
	__u32 n = c->lost_pending;
	if (!n)
		return;
	c->lost_pending = 0;
	if (!c->opened)
		return;
	struct tw_agg_val *v = tw_agg_get(ctl, c->cur_key, c->side, c, &c->req, 0);
	if (v)
		__sync_fetch_and_add(&v->lost, n);
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
		tw_lose_key(ctl, TW_LOST_PIPELINE_OVERFLOW, key, c->side, c);
		tw_count_end(ctl, c, key, TW_CLASS_NONE, 0, 0, j);
		return;
	}
	struct tw_inflight *f = &c->fifo[tail & (TW_FIFO - 1)];
	f->key = key;
	f->start_ns = ts;
	f->mflags = p->mflags;
	f->method = p->method;
	f->vh = p->best_h1;
	f->src = p->best_src;
	f->vflags = p->best_flags;
	f->target[0] = p->target[0];
	f->target[1] = p->target[1];
	f->target[2] = p->target[2];
	f->target[3] = p->target[3];
	f->tlen = p->tlen;
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
	if (!tw_rate_take(r, bpf_ktime_get_ns(), ctl->slow_per_cpu_per_sec)) {
		tw_lose(TW_LOST_SLOW_RATE_LIMITED);
		return;
	}
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

/* A connection's time under its conn_key ends (a close, or a WebSocket upgrade moving it):
 * counted in that identity's entry, or when the map is full, in tw_closes under the same key.
 * Never in the overflow entry: its open was counted under conn_key, and the open minus the
 * closes of each identity is the connections it has open. */
static __always_inline void tw_conn_close(struct tw_ctl *ctl, struct tw_conn *c, __u64 now)
{
	__u64 dur = now > c->open_ns ? now - c->open_ns : 0;
	struct tw_agg_val *v = tw_agg_try(ctl, c->conn_key, c->side, c, &c->req, 0);
	if (v) {
		__sync_fetch_and_add(&v->conn_closed, 1);
		__sync_fetch_and_add(&v->conn_dur_ns, dur);
		return;
	}
	struct tw_close_key k = {.key = c->conn_key, .side = c->side, .gen = ctl->active & 1};
	struct tw_close_val *s = tw_closes.lookup(&k);
	if (!s) {
		struct tw_close_val z = {};
		tw_closes.insert(&k, &z);  /* BPF_NOEXIST: a racing creator's count stays */
		s = tw_closes.lookup(&k);
		if (!s) {
			tw_lose(TW_LOST_CLOSE_MAP_FULL);
			return;
		}
	}
	__sync_fetch_and_add(&s->closed, 1);
	__sync_fetch_and_add(&s->dur_ns, dur);
}

static __always_inline void tw_iso_count(__u32 side, __u32 what)
{
	__u32 i = ((side & 1) * TW_ISO_N + what) & (2 * TW_ISO_N - 1);
	__u64 *n = tw_iso.lookup(&i);
	if (n)
		*n += 1;
}

/* A breach: counted in tw_breach under (requester, served) with the served value's bytes, and
 * sent as an event within the rate. */
static __always_inline void tw_breach_report(void *ctx, struct tw_ctl *ctl, struct tw_conn *c,
					     struct tw_parser *p, struct tw_inflight *f,
					     __u32 status, __u64 ts, struct tw_job *j)
{
	__u32 zero = 0;
	__u32 row = (p->vcur ^ 1) & 3;  /* the best (first) served value's row */
	struct tw_breach_key k = {.req_key = f->key, .served_h1 = p->best_h1,
				  .side = c->side & 1, .gen = ctl->active & 1};
	struct tw_breach_val *v = tw_breach.lookup(&k);
	if (!v) {
		struct tw_breach_val *t = tw_breach_tmpl.lookup(&zero);
		if (t) {
			t->count = 0;
			t->served_len = p->best_len;
			__builtin_memcpy(t->served, c->vbuf[row], TW_VALUE_MAX);
			tw_breach.update(&k, t);
			v = tw_breach.lookup(&k);
		}
	}
	if (v)
		__sync_fetch_and_add(&v->count, 1);
	else
		tw_lose(TW_LOST_BREACH_MAP_FULL);
	struct tw_rate *r = tw_breach_rate.lookup(&zero);
	if (!r)
		return;
	if (!tw_rate_take(r, bpf_ktime_get_ns(), ctl->breach_per_cpu_per_sec)) {
		tw_lose(TW_LOST_BREACH_RATE_LIMITED);
		return;
	}
	struct tw_breach_event *e = tw_breach_scratch.lookup(&zero);
	if (!e)
		return;
	e->ts_ns = ts;
	e->req_key = f->key;
	e->served_h1 = p->best_h1;
	e->method = f->method;
	e->target[0] = f->target[0];
	e->target[1] = f->target[1];
	e->target[2] = f->target[2];
	e->target[3] = f->target[3];
	e->target_len = f->tlen < TW_TARGET_BYTES ? f->tlen : TW_TARGET_BYTES;
	e->tgid = j->conn >> 32;
	e->fd = (__u32)j->conn;
	e->side = c->side & 1;
	e->status = status;
	e->served_len = p->best_len;
	__builtin_memcpy(e->served, c->vbuf[row], TW_VALUE_MAX);
#ifdef TW_HAVE_RINGBUF
	if (tw_breach_events.ringbuf_output(e, sizeof(*e), 0) != 0)
		tw_lose(TW_LOST_BREACH_BUFFER_FULL);
#else
	if (tw_breach_events.perf_submit(ctx, e, sizeof(*e)) != 0)
		tw_lose(TW_LOST_BREACH_BUFFER_FULL);
#endif
}

/* The response-side tenant check (docs/isolation.md): does the response's served-tenant
 * header name the tenant of the request it answers?  Only a request whose identity came clean
 * from a checked source (a trusted header: the gateway wrote it) is compared, so a client's
 * claim can never raise a breach against another tenant. */
static __always_inline void tw_isolation(void *ctx, struct tw_ctl *ctl, struct tw_conn *c,
					 struct tw_parser *p, struct tw_inflight *f, __u32 status,
					 __u64 ts, struct tw_job *j)
{
	__u32 side = c->side & 1;
	if (!((ctl->check_sides >> side) & 1))
		return;
	if (f->src < 0 || !((ctl->check_sources >> (f->src & 31)) & 1) ||
	    (f->vflags & (TW_F_DUPLICATE | TW_F_FOLDED | TW_F_BAD_BYTE | TW_F_TOO_LONG |
			  TW_F_COLLISION | TW_F_NO_IDENTITY | TW_F_ADOPTED))) {
		tw_iso_count(side, TW_ISO_REQUEST_IDENTITY);
		return;
	}
	if (p->best_src < 0) {
		tw_iso_count(side, TW_ISO_NO_HEADER);
		return;
	}
	if (p->best_flags & (TW_F_DUPLICATE | TW_F_FOLDED | TW_F_BAD_BYTE | TW_F_TOO_LONG)) {
		tw_iso_count(side, TW_ISO_MALFORMED);
		return;
	}
	tw_iso_count(side, TW_ISO_CHECKED);
	if (p->best_h1 == f->vh)
		return;
	tw_iso_count(side, TW_ISO_BREACHES);
	tw_breach_report(ctx, ctl, c, p, f, status, ts, j);
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
	tw_isolation(ctx, ctl, c, p, f, status, ts, j);
	/* An adopted connection that answers with an HTTP status line speaks HTTP: its next
	 * requests are real request heads, not a frame or body that looks like one. */
	c->adopted = 0;
	if (status == 101 && c->opened && c->conn_key != f->key) {
		/* Upgraded (WebSocket): from now on the connection is the upgrade's tenant's,
		 * not the tenant of an earlier keep-alive request on it.  Moved as a close under
		 * the old identity and an open under the new one. */
		tw_conn_close(ctl, c, ts);
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
