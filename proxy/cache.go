package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsluice/pgsluice/cachelayer"
	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/wire"
	"github.com/pgsluice/pgsluice/routing"
)

// The result cache in the proxy. cachelayer stores opaque frames; this file
// decides what is cached, builds keys, captures PostgreSQL's reply while the
// pump forwards it, answers hits without a server and invalidates on
// writes. The rules it keeps:
//
//   - Only statements routing calls Cacheable, that a rule or a cache hint
//     asks for, and that no nocache hint excludes.
//   - Looked up and filled only outside any transaction, with nothing of the
//     client in flight and the session not pinned (SET ROLE, temp tables…):
//     a hit answers with the frames and a ReadyForQuery 'I', exactly what the
//     server would have sent.
//   - Fills run on the node that takes writes, so that a result stored after
//     a write was acknowledged contains that write (a lagging replica could
//     otherwise be cached as current).
//   - The generations are snapshotted before the statement is sent; the
//     result is stored at its CommandComplete if every frame of it was
//     captured, nothing but RowDescription/NoData/DataRow/CommandComplete
//     came, and it fits cache.max_entry_bytes.
//   - A write invalidates the tables it wrote when the statement completes
//     and again when its transaction ends (ReadyForQuery 'I'), before the
//     client sees that ReadyForQuery; opaque writes (CALL, DO, volatile
//     functions, DDL without a table, SQL EXECUTE) flush the database unless
//     cache.on_opaque_write is ignore.
//
// Table names are reduced to their last component ("public.products" and
// "products" are the same table for the cache): a write to a table of the
// same name in another schema invalidates too, never too little.

// serverCache is the Server's cache wiring; nil when cache.backend is off.
type serverCache struct {
	c       cachelayer.Cache
	backend string
	// rules is what may be cached and how: swapped whole by a reload.
	rules atomic.Pointer[cacheRules]

	lookups  *prometheus.CounterVec // result: hit | miss
	skipped  *prometheus.CounterVec // reason
	stores   *prometheus.CounterVec // result
	invals   *prometheus.CounterVec // kind: tables | flush
	nHits    atomic.Uint64
	nMisses  atomic.Uint64
	nSkipped atomic.Uint64
	nStored  atomic.Uint64

	// flights are the fills in progress (cacheflight.go).
	flightMu      sync.Mutex
	flights       map[cachelayer.Key]*flight
	flightOut     *prometheus.CounterVec // outcome: leader | shared | fallthrough | timeout
	flightWaiting prometheus.Gauge
	nFlight       [flightOutcomes]atomic.Uint64
	nWaiting      atomic.Int64

	// rls knows the tables with row-level security (cacherls.go).
	rls *rlsCatalog
}

// cacheRules is the live-reloadable part of the cache configuration: an
// immutable snapshot, replaced whole by Server.Reload.
type cacheRules struct {
	maxEntry      int
	byFP          map[uint64]time.Duration
	byTables      []tableRule
	onOpaqueWrite string
	flightWait    time.Duration
}

// newCacheRules compiles the rules of cfg.
func newCacheRules(cfg config.CacheConfig) (*cacheRules, error) {
	cr := &cacheRules{maxEntry: int(cfg.MaxEntryBytes), byFP: map[uint64]time.Duration{}, onOpaqueWrite: cfg.OnOpaqueWrite, flightWait: cfg.FlightWait}
	if cr.flightWait <= 0 {
		cr.flightWait = time.Second
	}
	for _, r := range cfg.Rules {
		if r.Fingerprint != "" {
			var fp uint64
			if _, err := fmt.Sscanf(r.Fingerprint, "%x", &fp); err != nil {
				return nil, fmt.Errorf("cache.rules: fingerprint %q: %w", r.Fingerprint, err)
			}
			cr.byFP[fp] = r.TTL
			continue
		}
		tr := tableRule{tables: map[string]bool{}, ttl: r.TTL}
		for _, t := range r.Tables {
			tr.tables[cacheTable(strings.ToLower(strings.TrimSpace(t)))] = true
		}
		cr.byTables = append(cr.byTables, tr)
	}
	return cr, nil
}

type tableRule struct {
	tables map[string]bool
	ttl    time.Duration
}

// cacheOpTimeout bounds one cache call made on behalf of a client. The
// Redis tier has its own, shorter timeout.
const cacheOpTimeout = 2 * time.Second

// opCtx returns the context of one lookup's cache calls. The in-process
// tier never blocks nor reads it, so it gets no timer.
func (sc *serverCache) opCtx() (context.Context, context.CancelFunc) {
	if sc.backend == config.CacheMemory {
		return context.Background(), func() {}
	}
	return context.WithTimeout(context.Background(), cacheOpTimeout)
}

func newServerCache(cfg config.CacheConfig, reg prometheus.Registerer, log *slog.Logger) (*serverCache, error) {
	if cfg.Backend == config.CacheOff || cfg.Backend == "" {
		return nil, nil
	}
	sc := &serverCache{backend: cfg.Backend, flights: map[cachelayer.Key]*flight{}, rls: newRLSCatalog()}
	rules, err := newCacheRules(cfg)
	if err != nil {
		return nil, err
	}
	sc.rules.Store(rules)
	mem := func() *cachelayer.Memory {
		return cachelayer.NewMemory(cachelayer.MemoryOptions{MaxBytes: int64(cfg.MaxBytes), MaxEntryBytes: int64(cfg.MaxEntryBytes)}, reg)
	}
	red := func() (*cachelayer.Redis, error) {
		o := cachelayer.RedisOptions{
			Password:      string(cfg.Redis.Password),
			Timeout:       cfg.Redis.Timeout,
			KeyPrefix:     cfg.Redis.KeyPrefix,
			MaxEntryBytes: int(cfg.MaxEntryBytes),
			Logger:        log.With("component", "redis"),
		}
		switch {
		case cfg.Redis.MasterName != "":
			o.MasterName, o.SentinelAddrs = cfg.Redis.MasterName, cfg.Redis.Addrs
		case len(cfg.Redis.Addrs) > 0:
			o.Addrs = cfg.Redis.Addrs
		default:
			o.Addr = cfg.Redis.Addr
		}
		return cachelayer.NewRedis(o, reg)
	}
	switch cfg.Backend {
	case config.CacheMemory:
		sc.c = mem()
	case config.CacheRedis:
		r, err := red()
		if err != nil {
			return nil, err
		}
		sc.c = r
	case config.CacheTiered:
		r, err := red()
		if err != nil {
			return nil, err
		}
		sc.c = cachelayer.NewTiered(mem(), r)
	default:
		return nil, fmt.Errorf("cache.backend: unknown backend %q", cfg.Backend)
	}
	cv := func(name, help string, labels ...string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pgsluice", Subsystem: "cache", Name: name, Help: help}, labels)
		if reg != nil {
			if err := reg.Register(v); err != nil {
				log.Warn("cache metric not registered", "name", name, "err", err)
			}
		}
		return v
	}
	sc.lookups = cv("lookups_total", "Cacheable statements looked up in the cache, by result (hit: answered without a server).", "result")
	sc.skipped = cv("skipped_total", "Statements a cache rule or hint asked for that were not looked up, by reason.", "reason")
	sc.stores = cv("stores_total", "Results captured for the cache, by outcome.", "result")
	sc.invals = cv("write_invalidations_total", "Invalidations caused by writes through the proxy, by kind (tables, flush).", "kind")
	// The same family as cachelayer's Do, under tier="proxy": the proxy's
	// fills do not go through Do (cacheflight.go).
	sc.flightOut = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "pgsluice", Subsystem: "cache", Name: "singleflight_total", Help: cachelayer.SingleFlightHelp,
		ConstLabels: prometheus.Labels{"tier": "proxy"},
	}, []string{"outcome"})
	sc.flightWaiting = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "pgsluice", Subsystem: "cache", Name: "singleflight_waiting",
		Help: "Sessions waiting for another session's fill of the same cache key.",
	})
	if reg != nil {
		for _, c := range []prometheus.Collector{sc.flightOut, sc.flightWaiting} {
			if err := reg.Register(c); err != nil {
				log.Warn("cache metric not registered", "err", err)
			}
		}
	}
	return sc, nil
}

func (sc *serverCache) close() {
	if sc != nil {
		sc.rls.close()
		sc.c.Close()
	}
}

// cacheTable is the name under which the cache tracks a table: its last
// dotted component.
func cacheTable(t string) string {
	if i := strings.LastIndexByte(t, '.'); i >= 0 {
		return t[i+1:]
	}
	return t
}

// fpTable is the pseudo-table every entry of one query shape also reads, so
// that POST /cache/flush?fingerprint= can invalidate that shape. A NUL never
// occurs in a PostgreSQL identifier.
func fpTable(fp uint64) string {
	const hexDigits = "0123456789abcdef"
	b := make([]byte, 4+16)
	copy(b, "\x00fp:")
	for i := 19; i >= 4; i-- {
		b[i] = hexDigits[fp&15]
		fp >>= 4
	}
	return string(b)
}

// ttlFor returns how long d's result may be cached; 0 when no rule or hint
// asks for it.
func (sc *serverCache) ttlFor(d *routing.Decision) time.Duration {
	if d.Hints.NoCache {
		return 0
	}
	if d.Hints.CacheTTL > 0 {
		return d.Hints.CacheTTL
	}
	rules := sc.rules.Load()
	if ttl, ok := rules.byFP[d.Fingerprint]; ok && d.Fingerprint != 0 {
		return ttl
	}
	if len(d.ReadTables) == 0 {
		return 0
	}
next:
	for _, r := range rules.byTables {
		for _, t := range d.ReadTables {
			if !r.tables[cacheTable(t)] {
				continue next
			}
		}
		return r.ttl
	}
	return 0
}

// tablesOf returns the generation slots an entry of d depends on.
func tablesOf(d *routing.Decision) []string {
	out := make([]string, 0, len(d.ReadTables)+1)
	for _, t := range d.ReadTables {
		out = append(out, cacheTable(t))
	}
	return append(out, fpTable(d.Fingerprint))
}

// cacheWrite is what one statement (or a transaction so far) wrote.
type cacheWrite struct {
	tables []string
	flush  bool
}

func (w *cacheWrite) empty() bool { return w == nil || len(w.tables) == 0 && !w.flush }

func (w *cacheWrite) add(o *cacheWrite) {
	if o == nil {
		return
	}
	w.flush = w.flush || o.flush
	for _, t := range o.tables {
		dup := false
		for _, x := range w.tables {
			if x == t {
				dup = true
				break
			}
		}
		if !dup {
			w.tables = append(w.tables, t)
		}
	}
}

// writeOf returns what d may write, or nil for statements that change no
// table data (reads, transaction control, SET, VACUUM…).
func (sc *serverCache) writeOf(d *routing.Decision) *cacheWrite {
	if d.Target != routing.TargetPrimary {
		return nil
	}
	w := &cacheWrite{}
	for _, t := range d.WriteTables {
		w.tables = append(w.tables, cacheTable(t))
	}
	opaque := false
	switch d.Reason {
	case routing.ReasonTransaction, routing.ReasonSet, routing.ReasonShow, routing.ReasonEmpty, routing.ReasonExplain,
		routing.ReasonLock, routing.ReasonSession, routing.ReasonNotify, routing.ReasonCursor, routing.ReasonHint,
		routing.ReasonRead, routing.ReasonHintRejected:
	case routing.ReasonMaintenance:
		// VACUUM, ANALYZE, CLUSTER, REINDEX, CHECKPOINT change no rows;
		// REFRESH MATERIALIZED VIEW names its view.
	case routing.ReasonProcedure, routing.ReasonVolatile, routing.ReasonUnparseable, routing.ReasonPrepared, routing.ReasonUtility:
		opaque = true
	default: // write, ddl, multi_statement
		// GRANT/REVOKE, CREATE FUNCTION…: no table named, results may change.
		opaque = len(w.tables) == 0
	}
	if opaque && sc.rules.Load().onOpaqueWrite == "flush" {
		w.flush = true
	}
	if w.empty() {
		return nil
	}
	return w
}

// cacheCapture collects the frames of one result while the pump forwards
// them. Owned by the pump (under the session mutex) once its op is queued.
type cacheCapture struct {
	key    cachelayer.Key
	gens   cachelayer.Gens
	ttl    time.Duration
	buf    []byte
	bad    bool
	done   bool
	sc     *serverCache
	flight *flight // nil when this fill does not lead a flight
}

// cacheState is a session's cache bookkeeping.
type cacheState struct {
	// fillPrimary makes attach choose the writer for a cache fill.
	fillPrimary bool
	// capture is handed to the next Describe/Execute/Query op queued.
	capture *cacheCapture
	// held are extended-protocol messages (unnamed Parse, Bind, Describe
	// of the unnamed portal) kept back until the Execute that tells
	// whether the cache can answer them. Bodies are copies in x.arena;
	// the slice keeps its capacity between statements.
	held []heldMsg
	// tx accumulates what the current transaction wrote (mu).
	tx cacheWrite
	// keyBuf is cacheKey's input buffer (session goroutine).
	keyBuf []byte
	// x is what the extended-protocol hook reuses from one statement to
	// the next, so that a hit allocates nothing. Allocated at the first
	// Parse a rule may ask for: it holds three Decisions (192 bytes each),
	// which a client that never asks would otherwise carry in its session.
	x *cacheScratch
}

// cacheScratch is the session goroutine's reusable state of the
// extended-protocol hook (cacheState.x).
type cacheScratch struct {
	// arena holds the bodies of the held messages; reset when the first
	// message is held.
	arena []byte
	// parse is the decision of the held Parse (heldMsg.d points here), and
	// parseGen the classifier generation it was made in.
	parse    routing.Decision
	parseGen uint64
	// stmt is heldStmt's answer for a held Parse. Nothing keeps it: a hit
	// copies it into the session's unnamed statement.
	stmt stmtInfo
	// memo is the decision of the last Parse text classified here, so
	// that handleParse does not classify it again; memoQuery is its text,
	// valid while memoSet.
	memoQuery []byte
	memoSet   bool
	memo      routing.Decision
	memoGen   uint64 // the classifier generation memo was made in
}

// cacheX returns the session's cacheScratch, allocating it at first use.
func (s *session) cacheX() *cacheScratch {
	if s.cache.x == nil {
		s.cache.x = new(cacheScratch)
	}
	return s.cache.x
}

type heldMsg struct {
	typ  byte
	body []byte
	d    *routing.Decision // of a held Parse
}

// cacheReadyLocked reports whether the session is between transactions with
// nothing in flight: the only state in which the cache answers or fills.
// mu held.
func (s *session) cacheReadyLocked() (reason string) {
	switch {
	case s.pinned != routing.PinNone:
		return "pinned"
	case s.txStatus != 'I' || s.wrote:
		return "transaction"
	case s.ops.len() != 0 || s.inflight != 0 || s.dirty != nil || s.skipping || s.localSkip || s.fatal != nil:
		return "pipelined"
	}
	return ""
}

// cacheKey hashes everything that selects a result: the statement (stmt,
// a Query or Parse body after the statement name: the text, its NUL and
// what follows it) and parts.
// The text enters as its cache text (routing.AppendCacheText: comments
// dropped), so a traceparent comment that differs per request does not
// make every request a miss; a text without comments enters unchanged.
// Each part is length-prefixed; the input is assembled in a buffer the
// session keeps (session goroutine only), so a lookup allocates nothing.
func (s *session) cacheKey(sig string, kind byte, stmt []byte, parts ...[]byte) cachelayer.Key {
	b := s.cache.keyBuf[:0]
	put := func(p []byte) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	putS := func(p string) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	putS(s.database)
	putS(s.user)
	putS(sig)
	put([]byte{kind})
	text, rest, _ := wire.CString(stmt)
	at := len(b)
	b = append(b, 0, 0, 0, 0)
	b = routing.AppendCacheText(b, text)
	b = append(b, 0)
	b = append(b, rest...)
	binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
	for _, p := range parts {
		put(p)
	}
	if cap(b) <= 64<<10 {
		s.cache.keyBuf = b
	}
	return sha256.Sum256(b)
}

// cacheLookup decides about a statement with decision d that a rule or hint
// asked to cache. It returns the frames of a hit, or a capture to attach to
// the statement's op (nil: bypass). stmt and parts make the key (cacheKey).
func (s *session) cacheLookup(d *routing.Decision, ttl time.Duration, kind byte, stmt []byte, parts ...[]byte) (frames []byte, capture *cacheCapture) {
	sc := s.srv.cache
	if !d.Cacheable {
		sc.skip("not_cacheable")
		return nil, nil
	}
	s.mu.Lock()
	reason := s.cacheReadyLocked()
	sig := s.settings.sig
	s.mu.Unlock()
	if reason == "" {
		reason = s.cacheRLSReason(d)
	}
	if reason != "" {
		sc.skip(reason)
		return nil, nil
	}
	start := time.Now()
	key := s.cacheKey(sig, kind, stmt, parts...)
	ctx, cancel := sc.opCtx()
	defer cancel()
	var tables []string
	if sc.backend != config.CacheMemory {
		// The tables the entry read: Redis verifies them with the read.
		// (The in-process tier ignores them: a memory hit skips them.)
		tables = tablesOf(d)
	}
	if f, ok := sc.c.Get(ctx, s.database, key, tables); ok {
		sc.lookups.WithLabelValues("hit").Inc()
		sc.nHits.Add(1)
		s.observeQuery(d, "cache", time.Since(start), countDataRows(f), false)
		return f, nil
	}
	wait := sc.rules.Load().flightWait
	f, leader := sc.join(key, wait)
	if !leader {
		stored, timedOut := sc.await(f, wait)
		cancel()
		ctx, cancel = sc.opCtx() // the wait may have outlasted the first
		defer cancel()
		if stored {
			if fr, ok := sc.c.Get(ctx, s.database, key, tables); ok {
				sc.flightCount(flightShared)
				sc.lookups.WithLabelValues("shared").Inc()
				sc.nHits.Add(1)
				s.observeQuery(d, "cache", time.Since(start), countDataRows(fr), false)
				return fr, nil
			}
		}
		if !timedOut {
			sc.flightCount(flightFallthrough)
		}
		f = nil // fill without a flight
	}
	sc.lookups.WithLabelValues("miss").Inc()
	sc.nMisses.Add(1)
	capture = &cacheCapture{key: key, ttl: ttl, sc: sc, flight: f}
	if tables == nil {
		tables = tablesOf(d)
	}
	gens, ok := sc.c.Generations(ctx, s.database, tables)
	if !ok {
		sc.stores.WithLabelValues("no_snapshot").Inc()
		capture.finish(false)
		return nil, nil
	}
	// Again after the snapshot: row-level security enabled by DDL that
	// committed before it is seen now (cacherls.go).
	if reason := s.cacheRLSReason(d); reason != "" {
		sc.stores.WithLabelValues(reason).Inc()
		capture.finish(false)
		return nil, nil
	}
	capture.gens = gens
	return nil, capture
}

// countDataRows counts the DataRow messages of a cached result.
func countDataRows(frames []byte) int64 {
	var n int64
	for len(frames) >= 5 {
		l := int(binary.BigEndian.Uint32(frames[1:5]))
		if l < 4 || 1+l > len(frames) {
			break
		}
		if frames[0] == 'D' {
			n++
		}
		frames = frames[1+l:]
	}
	return n
}

func (sc *serverCache) skip(reason string) {
	sc.skipped.WithLabelValues(reason).Inc()
	sc.nSkipped.Add(1)
}

// cacheQuery handles a simple Query a rule or hint asked to cache. done
// means it was answered from the cache. Otherwise a capture may have been
// prepared for the op the caller queues next.
func (s *session) cacheQuery(d *routing.Decision, body []byte) (done bool, err error) {
	sc := s.srv.cache
	ttl := sc.ttlFor(d)
	if ttl <= 0 {
		return false, nil
	}
	frames, capture := s.cacheLookup(d, ttl, 'Q', body)
	if frames != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.pushLocked(op{kind: opSynth, msg: frames})
		s.pushLocked(op{kind: opSynth, msg: readyMsg('I')})
		s.cycle++
		return true, s.flushClientLocked()
	}
	if capture != nil {
		s.cache.capture = capture
		s.cache.fillPrimary = true
	}
	return false, nil
}

// cacheDropCapture forgets a capture that no op took (the statement was
// not sent).
func (s *session) cacheDropCapture() {
	if s.cache.capture != nil {
		s.mu.Lock() // the pump may hold it too (a Describe took it)
		s.cache.capture.finish(false)
		s.mu.Unlock()
		s.cache.capture = nil
	}
	s.cache.fillPrimary = false
}

// cacheNoteOpLocked attaches the pending capture and the statement's writes
// to an op about to be queued (mu held).
func (s *session) cacheNoteOpLocked(o *op, d *routing.Decision) {
	sc := s.srv.cache
	if sc == nil {
		return
	}
	if s.cache.capture != nil {
		o.cap = s.cache.capture
		if o.kind != opDescribe {
			s.cache.capture = nil
			s.cache.fillPrimary = false
		}
	}
	if d == nil {
		return
	}
	if w := sc.writeOf(d); w != nil {
		o.inval = w
		s.cache.tx.add(w)
	}
}

// cacheCaptureLocked records one server message of a captured result and
// stores the result at its CommandComplete. The message itself is still
// forwarded by the caller. mu held.
func (s *session) cacheCaptureLocked(b *backend, head *op, typ byte, n int) {
	c := head.cap
	if c.done {
		return
	}
	switch typ {
	case 'T', 'n', 'D', 'C':
	default:
		// An error, a notice, a suspended portal, an asynchronous
		// message: not a plain result.
		c.abandon()
		if typ != 'E' {
			s.srv.cache.stores.WithLabelValues("not_plain").Inc()
		}
		return
	}
	if !c.bad {
		if len(c.buf)+5+n > s.srv.cache.rules.Load().maxEntry {
			c.bad, c.buf = true, nil
			s.srv.cache.stores.WithLabelValues("too_large").Inc()
		} else if frame, err := b.r.Peek(5 + n); err != nil {
			c.bad, c.buf = true, nil // larger than the read buffer
			s.srv.cache.stores.WithLabelValues("too_large").Inc()
		} else {
			c.buf = append(c.buf, frame...)
		}
	}
	if typ != 'C' || (head.kind != opExecute && head.kind != opQuery) {
		return
	}
	c.done = true
	stored := false
	defer func() { c.finish(stored) }()
	if c.bad {
		return
	}
	if s.node != s.srv.topo.writer() {
		// Filled on a replica (session mode, or attached before): it
		// may lag behind acknowledged writes.
		s.srv.cache.stores.WithLabelValues("replica").Inc()
		return
	}
	frames := c.buf
	c.buf = nil
	ctx, cancel := context.WithTimeout(context.Background(), cacheOpTimeout)
	defer cancel()
	if s.srv.cache.c.Set(ctx, c.key, frames, c.gens, c.ttl) {
		stored = true
		s.srv.cache.stores.WithLabelValues("stored").Inc()
		s.srv.cache.nStored.Add(1)
	} else {
		s.srv.cache.stores.WithLabelValues("refused").Inc()
	}
}

// cacheCompleteLocked runs at a CommandComplete: a statement that wrote
// invalidates what it wrote now (its transaction does so again when it
// ends). mu held.
func (s *session) cacheCompleteLocked(head *op) {
	if head == nil || head.inval == nil || s.srv.cache == nil {
		return
	}
	s.srv.cache.apply(s.database, head.inval)
}

// cacheTxEndLocked runs at each ReadyForQuery from the server, before the
// client sees it: when the transaction has ended, everything it wrote is
// invalidated. mu held.
func (s *session) cacheTxEndLocked(status byte) {
	if status != 'I' || s.srv.cache == nil || s.cache.tx.empty() {
		return
	}
	w := s.cache.tx
	s.cache.tx = cacheWrite{}
	s.srv.cache.apply(s.database, &w)
}

// cacheSessionEnded invalidates what an unfinished transaction wrote when
// its client leaves: a COMMIT may have reached the server without its
// ReadyForQuery reaching us.
func (s *session) cacheSessionEnded() {
	if s.srv.cache == nil {
		return
	}
	s.mu.Lock()
	if s.catalogDDL { // a COMMIT may have reached the server
		s.srv.cache.rls.changed(s.database)
	}
	w := s.cache.tx
	s.cache.tx = cacheWrite{}
	// Fills that will never complete end their flights now, so that no
	// waiter waits for a client or server that is gone.
	for i := 0; i < s.ops.len(); i++ {
		s.ops.at(i).cap.abandon()
	}
	s.cache.capture.abandon()
	s.cache.capture = nil
	s.mu.Unlock()
	if !w.empty() {
		s.srv.cache.apply(s.database, &w)
	}
}

func (sc *serverCache) apply(db string, w *cacheWrite) {
	ctx, cancel := context.WithTimeout(context.Background(), cacheOpTimeout)
	defer cancel()
	if w.flush {
		sc.c.FlushDB(ctx, db)
		sc.invals.WithLabelValues("flush").Inc()
		return
	}
	if len(w.tables) > 0 {
		sc.c.Invalidate(ctx, db, w.tables)
		sc.invals.WithLabelValues("tables").Inc()
	}
}

// ---- extended protocol ----

// cacheExtended runs before a client message is handled when the cache is
// on. It holds back an unnamed Parse, a Bind of the unnamed portal and a
// Describe of it while they may still be answered from the cache, and
// decides at the Execute. done means the message was consumed.
func (s *session) cacheExtended(typ byte, body []byte) (done bool, err error) {
	held := s.cache.held
	switch typ {
	case 'P':
		if len(held) == 0 && len(body) > 0 && body[0] == 0 {
			if _, query, _, ok := parseMsg(body); ok && s.srv.cache.mayAsk(query) {
				// The cache is on, so classify's shortcut for a proxy
				// that neither routes nor caches does not apply.
				x := s.cacheX()
				d, gen := s.classifyText(query)
				x.memoQuery, x.memoSet, x.memo, x.memoGen = append(x.memoQuery[:0], query...), true, d, gen
				if cap(x.memoQuery) > maxScratchBytes {
					x.memoSet, x.memoQuery = false, nil // handleParse classifies it again
				}
				if s.srv.cache.ttlFor(&d) > 0 && d.Cacheable && s.cacheIdle() {
					s.hold(typ, body)
					x.parse, x.parseGen = d, gen
					s.cache.held[0].d = &x.parse
					return true, nil
				}
			}
		}
	case 'B':
		if (len(held) == 0 || len(held) == 1 && held[0].typ == 'P') && len(body) > 2 && body[0] == 0 {
			stmt, _, ok := wire.CString(body[1:])
			if ok && (len(held) == 0 || len(stmt) == 0) {
				if info := s.heldStmt(stmt); info != nil && info.decision.Cacheable &&
					s.srv.cache.ttlFor(&info.decision) > 0 && (len(held) == 1 || s.cacheIdle()) {
					s.hold(typ, body)
					return true, nil
				}
			}
		}
	case 'D':
		if len(held) > 0 && held[len(held)-1].typ == 'B' && len(body) == 2 && body[0] == 'P' && body[1] == 0 {
			s.hold(typ, body)
			return true, nil
		}
	case 'E':
		if len(held) > 0 && len(body) == 5 && body[0] == 0 && binary.BigEndian.Uint32(body[1:]) == 0 {
			return s.cacheExecute(body)
		}
	}
	if len(held) > 0 {
		return false, s.releaseHeld()
	}
	return false, nil
}

// mayAsk reports whether a statement's text could be asked for by a rule
// or a hint, cheaply: without rules only a hint can, and a hint needs the
// word pgsluice in a comment.
func (sc *serverCache) mayAsk(query []byte) bool {
	if r := sc.rules.Load(); len(r.byFP) > 0 || len(r.byTables) > 0 {
		return true
	}
	return routing.MayHaveHint(query)
}

// classifyParse classifies a Parse's text, reusing the decision the cache
// hook just made for it, or the unnamed statement's when the client sends
// the same text again (drivers that do not name statements, pgbench -M
// extended) and the classifier's catalog has not changed since. It also
// returns the classifier generation the decision was made in, which is
// not always the current one (routing.Classifier.Generation).
func (s *session) classifyParse(query []byte) (routing.Decision, uint64) {
	if x := s.cache.x; x != nil && x.memoSet {
		x.memoSet = false
		if bytes.Equal(x.memoQuery, query) {
			d := x.memo
			x.memo = routing.Decision{} // drop its references
			return d, x.memoGen
		}
	}
	return s.classifyText(query)
}

// classifyText classifies a Parse's text, reusing the unnamed statement's
// decision when it holds the same text and the classifier's catalog has
// not changed since.
func (s *session) classifyText(query []byte) (routing.Decision, uint64) {
	c := s.srv.classifier
	if u := s.unnamed; u != nil && u.gen == c.Generation() && unnamedText(u.parse, query) {
		c.NoteHit()
		return u.decision, u.gen
	}
	return c.ClassifyBytesGen(query)
}

// maxScratchBytes bounds what a session keeps of a large statement in its
// reusable buffers (cacheScratch) after the statement is done with.
const maxScratchBytes = 64 << 10

// unnamedText reports whether parse, the body of an unnamed statement's
// Parse (NUL, text, NUL, parameter types), holds exactly the text query.
func unnamedText(parse, query []byte) bool {
	n := len(query)
	return len(parse) > n+1 && parse[0] == 0 && parse[n+1] == 0 && bytes.Equal(parse[1:n+1], query)
}

func (s *session) cacheIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cacheReadyLocked() == ""
}

// hold keeps a copy of a message back (cacheState.held). The copies live
// in the session's arena, which the first held message of a statement
// resets: nothing refers to the bodies once the held messages are
// answered or released (their handlers copy what they keep).
func (s *session) hold(typ byte, body []byte) {
	x := s.cacheX()
	if len(s.cache.held) == 0 {
		if cap(x.arena) > maxScratchBytes {
			x.arena = nil
		}
		x.arena = x.arena[:0]
	}
	at := len(x.arena)
	x.arena = append(x.arena, body...)
	s.cache.held = append(s.cache.held, heldMsg{typ: typ, body: x.arena[at:len(x.arena):len(x.arena)]})
}

// heldStmt returns the statement a Bind refers to: the held Parse, or the
// client's statement of that name. The held Parse's record is the
// session's scratch one: valid until the next call.
func (s *session) heldStmt(name []byte) *stmtInfo {
	if h := s.cache.held; len(h) > 0 && h[0].typ == 'P' {
		x := s.cacheX()
		x.stmt = stmtInfo{decision: *h[0].d, gen: x.parseGen, parse: h[0].body}
		return &x.stmt
	}
	if len(name) == 0 {
		return s.unnamed
	}
	return s.stmts[string(name)]
}

// releaseHeld sends the held messages on their normal way.
func (s *session) releaseHeld() error {
	held := s.cache.held
	s.cache.held = held[:0]
	for _, m := range held {
		var err error
		switch m.typ {
		case 'P':
			err = s.handleParse(m.body)
		case 'B':
			err = s.handleBind(m.body)
		case 'D':
			err = s.handleDescribe(m.body)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// cacheExecute decides a held Parse/Bind/Describe + Execute of the unnamed
// portal: answer from the cache, or send them with a capture.
func (s *session) cacheExecute(exec []byte) (bool, error) {
	held := s.cache.held
	var parse, bind []byte
	describe := false
	for _, m := range held {
		switch m.typ {
		case 'P':
			parse = m.body
		case 'B':
			bind = m.body
		case 'D':
			describe = true
		}
	}
	if bind == nil {
		return false, s.releaseHeld()
	}
	_, rest, _ := wire.CString(bind)
	stmtName, bindRest, _ := wire.CString(rest)
	info := s.heldStmt(stmtName)
	if info == nil {
		return false, s.releaseHeld()
	}
	// The statement: its text and parameter types (the Parse body
	// without the name).
	_, stmtText, _ := wire.CString(info.parse)
	d := &info.decision
	ttl := s.srv.cache.ttlFor(d)
	desc := []byte{0}
	if describe {
		desc[0] = 1
	}
	frames, capture := s.cacheLookup(d, ttl, 'E', stmtText, bindRest, desc)
	if frames == nil {
		if capture != nil {
			s.cache.capture = capture
			s.cache.fillPrimary = true
		}
		err := s.releaseHeld()
		if err == nil {
			err = s.handleExecute(exec)
		}
		s.cacheDropCapture()
		return true, err
	}
	s.cache.held = held[:0]
	if parse != nil {
		// The client's unnamed statement is now this one; it is
		// prepared on a server lazily, when next used there.
		u := s.newStmtInfo("")
		u.decision, u.gen = info.decision, info.gen
		u.parse = append(u.parse, parse...)
		s.recycleUnnamed(s.unnamed)
		s.unnamed = u
		s.unnamedGen++
		s.lastBound = u
	} else {
		s.lastBound = info
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if parse != nil {
		s.pushLocked(op{kind: opSynth, msg: parseComplete})
	}
	s.pushLocked(op{kind: opSynth, msg: bindComplete})
	s.pushLocked(op{kind: opSynth, msg: frames})
	return true, nil
}

var bindComplete = []byte{'2', 0, 0, 0, 4}

// ---- server API ----

// CacheStats is a snapshot of the result cache's counters, for the admin
// console (SHOW CACHE). Enabled is false when cache.backend is off.
type CacheStats struct {
	Enabled       bool
	Backend       string
	Hits          uint64 // statements answered from the cache
	Misses        uint64 // looked up, not found (then filled when possible)
	Skipped       uint64 // asked for by a rule or hint but not looked up (transaction, pinned, not cacheable…)
	Stored        uint64 // results stored
	Bytes         int64  // bytes in the in-process tier
	Entries       int64  // entries in the in-process tier
	Evictions     uint64
	Invalidations uint64
	Bypasses      uint64 // store operations skipped (Redis down or slow)
	// Single flight (cacheflight.go): misses that led a fill, waiters
	// answered by it, waiters that ran the statement themselves because
	// the leader stored nothing or because they waited cache.flight_wait,
	// and sessions waiting now.
	FlightLeaders, FlightShared, FlightFallthrough, FlightTimeouts uint64
	FlightWaiting                                                  int64
}

// CacheStats returns the cache's counters. Safe for concurrent use.
func (s *Server) CacheStats() CacheStats {
	sc := s.cache
	if sc == nil {
		return CacheStats{Backend: config.CacheOff}
	}
	st := sc.c.Stats()
	return CacheStats{
		Enabled: true, Backend: sc.backend,
		Hits: sc.nHits.Load(), Misses: sc.nMisses.Load(), Skipped: sc.nSkipped.Load(), Stored: sc.nStored.Load(),
		Bytes: st.Bytes, Entries: st.Entries, Evictions: st.Evictions, Invalidations: st.Invalidations, Bypasses: st.Bypasses,
		FlightLeaders: sc.nFlight[flightLeader].Load(), FlightShared: sc.nFlight[flightShared].Load(),
		FlightFallthrough: sc.nFlight[flightFallthrough].Load(), FlightTimeouts: sc.nFlight[flightTimeout].Load(),
		FlightWaiting: sc.nWaiting.Load(),
	}
}

// invalidateTables drops every cached result of database that read one of
// tables ("name" or "schema.name"), in every tier and, through Redis, every
// instance. Used by writes through other paths (logical replication).
func (s *Server) invalidateTables(database string, tables []string) {
	if s.cache == nil || len(tables) == 0 {
		return
	}
	w := &cacheWrite{}
	for _, t := range tables {
		w.tables = append(w.tables, cacheTable(t))
	}
	s.cache.apply(database, w)
}

// flushCache drops every cached result of database.
func (s *Server) flushCache(database string) {
	if s.cache == nil {
		return
	}
	s.cache.apply(database, &cacheWrite{flush: true})
}

// flushAllCache drops every cached result.
func (s *Server) flushAllCache() {
	if s.cache == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cacheOpTimeout)
	defer cancel()
	s.cache.c.FlushAll(ctx)
}

// cacheDatabases lists the databases clients of this instance logged into.
func (s *Server) cacheDatabases() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for k := range s.pools {
		if !seen[k.database] {
			seen[k.database] = true
			out = append(out, k.database)
		}
	}
	return out
}

// serveCacheFlush is POST /cache/flush on the admin listener: with no
// parameter it flushes everything; ?table=name (repeatable) invalidates
// tables and ?fingerprint=16hex one query shape, in ?database= or, without
// it, in every database this instance has clients of.
func (s *Server) serveCacheFlush(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	if s.cache == nil {
		http.Error(w, "cache is off (cache.backend)", http.StatusConflict)
		return
	}
	q := r.URL.Query()
	tables := q["table"]
	var fps []string
	for _, f := range q["fingerprint"] {
		fp, err := strconv.ParseUint(f, 16, 64)
		if err != nil || len(f) != 16 {
			http.Error(w, "fingerprint: want 16 hex digits", http.StatusBadRequest)
			return
		}
		fps = append(fps, fpTable(fp))
	}
	if len(tables) == 0 && len(fps) == 0 {
		if dbs := q["database"]; len(dbs) > 0 {
			for _, db := range dbs {
				s.flushCache(db)
			}
			fmt.Fprintf(w, "flushed databases %s\n", strings.Join(dbs, ", "))
			return
		}
		s.flushAllCache()
		w.Write([]byte("flushed all\n"))
		return
	}
	dbs := q["database"]
	if len(dbs) == 0 {
		dbs = s.cacheDatabases()
	}
	for _, db := range dbs {
		s.invalidateTables(db, tables)
		if len(fps) > 0 {
			s.cache.apply(db, &cacheWrite{tables: fps})
		}
	}
	fmt.Fprintf(w, "invalidated %d table(s) and %d fingerprint(s) in %d database(s)\n", len(tables), len(fps), len(dbs))
}
