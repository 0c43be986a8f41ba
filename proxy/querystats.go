package proxy

import (
	"math/bits"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsluice/pgsluice/routing"
)

// Per-query observability: the latency histograms by fingerprint, target and
// command, the backend-time histogram, the pg_stat_statements-like table
// behind GET /queries and SHOW QUERIES, per-database totals for SHOW STATS
// and the slow-query log.
//
// A statement is timed from when the proxy read the client message that
// started it (Query, or the Bind/unnamed Parse before an Execute) to the
// server's CommandComplete (Execute) or ReadyForQuery (Query): that is the
// latency the client sees, pool wait included. Backend time runs from when
// the proxy handed the statement to the server to the same end, so a pool
// that queues is never mistaken for a slow query. The session records the
// times in the op it queues; the pump calls queryDoneLocked when the op
// completes. Nothing here calls pg_query: fingerprint, command and
// normalized text come from routing's shape cache.

// Query targets, the "target" label.
const (
	targetPrimary uint8 = iota
	targetReplica
	targetCache
	numTargets
)

var targetNames = [numTargets]string{"primary", "replica", "cache"}

func targetIndex(name string) (uint8, bool) {
	for i, n := range targetNames {
		if n == name {
			return uint8(i), true
		}
	}
	return 0, false
}

// otherLabel is the fingerprint label of the statements outside the top
// metrics.max_fingerprints (and of statements with no fingerprint).
const otherLabel = "other"

// maxQueryStats bounds the statistics table; past 90 % of it the least
// called tenth of the shapes is forgotten at the next rebalance.
const maxQueryStats = 5000

// rebalanceEvery is the least time between two recomputations of which
// fingerprints keep their own series (done at scrape time).
const rebalanceEvery = time.Second

// queryBuckets are the classic buckets of the query histograms: 50µs to 30s.
var queryBuckets = [numQueryBuckets]float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

const numQueryBuckets = 18

// epoch anchors nanotime: monotonic nanoseconds since process start.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

// Latency sketch: log-linear buckets, 4 per power of two from 1µs to ~4.6
// minutes (each at most 25 % wide, so a quantile read at the bucket's
// middle is within 12.5 %). Bucket 0 holds everything under 1µs.
const (
	latSub     = 2 // log2 of the sub-buckets per octave
	latMinOct  = 10
	latOctaves = 28
	latBuckets = 1 + latOctaves<<latSub
)

func latBucket(ns int64) int {
	if ns < 1<<latMinOct {
		return 0
	}
	l := bits.Len64(uint64(ns)) - 1
	sub := int(uint64(ns)>>(l-latSub)) & (1<<latSub - 1)
	i := (l-latMinOct)<<latSub + sub + 1
	if i >= latBuckets {
		i = latBuckets - 1
	}
	return i
}

// latMid returns the middle of bucket i in nanoseconds.
func latMid(i int) float64 {
	if i == 0 {
		return 1 << (latMinOct - 1)
	}
	o := (i-1)>>latSub + latMinOct
	sub := (i - 1) & (1<<latSub - 1)
	lo := float64(uint64(1<<latSub+sub) << (o - latSub))
	w := float64(uint64(1) << (o - latSub))
	return lo + w/2
}

// fpStats is the statistics of one fingerprint (or of "other"). Counters
// are atomics: the pump of every session updates them without a lock.
type fpStats struct {
	fp         uint64
	label      string // 16 hex digits, or "other"
	command    string
	normalized string

	rows, errors       atomic.Int64
	totalNs, backendNs atomic.Int64
	byTarget           [numTargets]atomic.Int64 // calls, by target
	lat                [latBuckets]atomic.Uint32

	// series holds the histogram children this fingerprint observes into:
	// its own, or the "other" ones. Swapped by rebalance.
	series  atomic.Pointer[seriesSet]
	evicted atomic.Bool
}

// seriesSet is the histogram children of one (fingerprint label, command),
// created per target on first use so that a target never used shows no
// series.
type seriesSet struct {
	label string
	obs   [numTargets]atomic.Pointer[latencyHist]
}

func (ss *seriesSet) observer(vec *latencyVec, target uint8, command string) *latencyHist {
	if h := ss.obs[target].Load(); h != nil {
		return h
	}
	h := vec.with(ss.label, targetNames[target], command)
	ss.obs[target].Store(h)
	return h
}

func (q *fpStats) record(t *queryStats, target uint8, dur, backend int64, rows int64, failed bool) {
	q.totalNs.Add(dur)
	q.backendNs.Add(backend)
	if rows > 0 {
		q.rows.Add(rows)
	}
	if failed {
		q.errors.Add(1)
	}
	q.byTarget[target].Add(1)
	q.lat[latBucket(dur)].Add(1)
	q.series.Load().observer(t.hist, target, q.command).observe(dur)
}

// callCount returns the calls of the fingerprint (all targets).
func (q *fpStats) callCount() int64 {
	var n int64
	for i := range q.byTarget {
		n += q.byTarget[i].Load()
	}
	return n
}

// quantile returns the q-quantile of the recorded latencies, in seconds.
func (q *fpStats) quantile(p float64) float64 {
	var counts [latBuckets]uint32
	var total uint64
	for i := range q.lat {
		counts[i] = q.lat[i].Load()
		total += uint64(counts[i])
	}
	if total == 0 {
		return 0
	}
	rank := uint64(p*float64(total) + 0.5)
	if rank < 1 {
		rank = 1
	}
	var cum uint64
	for i, c := range counts {
		cum += uint64(c)
		if cum >= rank {
			return latMid(i) / 1e9
		}
	}
	return latMid(latBuckets-1) / 1e9
}

// dbCounters are per-database totals for SHOW STATS. Each session counts
// its own under its mutex (no shared cache line on the hot path) and adds
// them to its database's dbStats when it ends.
type dbCounters struct {
	queries, errors, rows        int64
	queryNs, waitNs, serverNs    int64
	replicaQueries, cacheQueries int64
}

func (c *dbCounters) add(o *dbCounters) {
	c.queries += o.queries
	c.errors += o.errors
	c.rows += o.rows
	c.queryNs += o.queryNs
	c.waitNs += o.waitNs
	c.serverNs += o.serverNs
	c.replicaQueries += o.replicaQueries
	c.cacheQueries += o.cacheQueries
}

// dbStats are the totals of the sessions of one database that have ended.
type dbStats struct {
	mu sync.Mutex
	c  dbCounters
}

// queryStats is the table of fingerprints and the instruments they feed.
// Safe for concurrent use.
type queryStats struct {
	hist    *latencyVec
	backend *latencyVec
	backObs [numTargets]*latencyHist
	max     func() int // metrics.max_fingerprints, read at each decision

	shards [64]struct {
		mu sync.RWMutex
		m  map[uint64]*fpStats
	}
	other *fpStats

	mu        sync.Mutex // creation, rebalance
	n         int        // entries, other excluded (mu)
	own       int        // entries with their own series (mu)
	rebalAt   time.Time  // (mu)
	otherSets map[string]*seriesSet

	dbs sync.Map // database name -> *dbStats
}

func newQueryStats(max func() int) *queryStats {
	t := &queryStats{max: max, otherSets: map[string]*seriesSet{}}
	t.hist = newLatencyVec("pgsluice_query_duration_seconds",
		"Statement latency seen by the client at the proxy (pool wait included), by fingerprint (top metrics.max_fingerprints by calls, the rest \"other\"), target and command.",
		"fingerprint", "target", "command")
	t.backend = newLatencyVec("pgsluice_query_backend_seconds",
		"Time from handing a statement to the server to its completion (no pool wait), by target.",
		"target")
	t.backObs[targetPrimary] = t.backend.with("primary")
	t.backObs[targetReplica] = t.backend.with("replica")
	for i := range t.shards {
		t.shards[i].m = map[uint64]*fpStats{}
	}
	t.other = &fpStats{label: otherLabel, command: otherLabel}
	t.other.series.Store(t.otherSetLocked(otherLabel))
	return t
}

// otherSetLocked returns the shared "other" series of a command (mu held,
// or during construction).
func (t *queryStats) otherSetLocked(command string) *seriesSet {
	ss := t.otherSets[command]
	if ss == nil {
		ss = &seriesSet{label: otherLabel}
		t.otherSets[command] = ss
	}
	return ss
}

// entry returns the statistics of d's fingerprint, creating them.
func (t *queryStats) entry(d *routing.Decision) *fpStats {
	if d == nil || d.Fingerprint == 0 {
		return t.other
	}
	if q := t.lookup(d.Fingerprint); q != nil {
		return q
	}
	return t.create(d)
}

func (t *queryStats) lookup(fp uint64) *fpStats {
	sh := &t.shards[fp&63]
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return sh.m[fp]
}

func (t *queryStats) create(d *routing.Decision) *fpStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	if q := t.lookup(d.Fingerprint); q != nil {
		return q
	}
	sh := &t.shards[d.Fingerprint&63]
	if t.n >= maxQueryStats {
		return t.other
	}
	cmd := d.Command
	if cmd == "" {
		cmd = "other"
	}
	q := &fpStats{fp: d.Fingerprint, label: fingerprintLabel(d.Fingerprint), command: cmd, normalized: d.Normalized}
	if t.own < t.max() {
		t.own++
		q.series.Store(&seriesSet{label: q.label})
	} else {
		q.series.Store(t.otherSetLocked(cmd))
	}
	sh.mu.Lock()
	sh.m[d.Fingerprint] = q
	sh.mu.Unlock()
	t.n++
	return q
}

func fingerprintLabel(fp uint64) string {
	s := strconv.FormatUint(fp, 16)
	for len(s) < 16 {
		s = "0" + s
	}
	return s
}

// entries returns every fingerprint's entry ("other" excluded).
func (t *queryStats) entries() []*fpStats {
	var out []*fpStats
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		for _, q := range sh.m {
			out = append(out, q)
		}
		sh.mu.RUnlock()
	}
	return out
}

// all returns every entry, "other" last when it was used.
func (t *queryStats) all() []*fpStats {
	out := t.entries()
	if t.other.callCount() > 0 {
		out = append(out, t.other)
	}
	return out
}

// rebalance gives the metrics.max_fingerprints most called fingerprints
// their own series and folds the rest into "other"; when the table is
// nearly full it forgets the least called tenth.
func (t *queryStats) rebalance(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if now.Sub(t.rebalAt) < rebalanceEvery {
		return
	}
	t.rebalAt = now
	list := t.entries()
	sort.Slice(list, func(i, j int) bool {
		ci, cj := list[i].callCount(), list[j].callCount()
		if ci != cj {
			return ci > cj
		}
		return list[i].fp < list[j].fp
	})
	if len(list) >= maxQueryStats*9/10 {
		cut := len(list) - len(list)/10
		for _, q := range list[cut:] {
			t.dropLocked(q)
		}
		list = list[:cut]
	}
	max := t.max()
	t.own = 0
	for i, q := range list {
		cur := q.series.Load()
		mine := cur.label != otherLabel
		switch {
		case i < max && !mine:
			q.series.Store(&seriesSet{label: q.label})
		case i >= max && mine:
			q.series.Store(t.otherSetLocked(q.command))
			t.deleteSeries(q)
		}
		if i < max {
			t.own++
		}
	}
}

func (t *queryStats) deleteSeries(q *fpStats) {
	for _, tn := range targetNames {
		t.hist.delete(q.label, tn, q.command)
	}
}

func (t *queryStats) dropLocked(q *fpStats) {
	sh := &t.shards[q.fp&63]
	sh.mu.Lock()
	delete(sh.m, q.fp)
	sh.mu.Unlock()
	q.evicted.Store(true)
	if q.series.Load().label != otherLabel {
		t.deleteSeries(q)
	}
	t.n--
}

// dbTotals returns the counters of every database: ended sessions' totals
// plus the live sessions' own.
func (s *Server) dbTotals() map[string]dbCounters {
	out := map[string]dbCounters{}
	s.qs.dbs.Range(func(k, v any) bool {
		db := v.(*dbStats)
		db.mu.Lock()
		out[k.(string)] = db.c
		db.mu.Unlock()
		return true
	})
	for _, sess := range s.sessionList() {
		sess.mu.Lock()
		c := sess.dbc
		sess.mu.Unlock()
		if c.queries > 0 {
			t := out[sess.database]
			t.add(&c)
			out[sess.database] = t
		}
	}
	return out
}

func (t *queryStats) db(name string) *dbStats {
	if v, ok := t.dbs.Load(name); ok {
		return v.(*dbStats)
	}
	v, _ := t.dbs.LoadOrStore(name, &dbStats{})
	return v.(*dbStats)
}

// queryCollector exposes the query histograms, rebalancing the fingerprint
// series first.
type queryCollector struct{ t *queryStats }

func (c queryCollector) Describe(ch chan<- *prometheus.Desc) {
	c.t.hist.Describe(ch)
	c.t.backend.Describe(ch)
}

func (c queryCollector) Collect(ch chan<- prometheus.Metric) {
	c.t.rebalance(time.Now())
	c.t.hist.Collect(ch)
	c.t.backend.Collect(ch)
}

// --- session hooks ---

// statsEntry returns the statistics entry of d, through a one-entry cache
// on the session (clients repeat their statements).
func (s *session) statsEntry(d *routing.Decision) *fpStats {
	fp := uint64(0)
	if d != nil {
		fp = d.Fingerprint
	}
	if q := s.lastQS; q != nil && q.fp == fp && fp != 0 && !q.evicted.Load() {
		return q
	}
	q := s.srv.qs.entry(d)
	s.lastQS = q
	return q
}

// markQueryStart notes when the client message that starts a statement
// arrived (Bind or unnamed Parse), unless already noted for this one.
// Session goroutine.
func (s *session) markQueryStart() {
	if s.qstart == 0 {
		s.qstart = nanotime()
	}
}

// timedLocked stamps a Query or Execute op with its statement's statistics
// entry, start time (start, or the noted Bind/Parse time when 0), the time
// it is sent and its target. mu held, server connection attached.
func (s *session) timedLocked(o op, d *routing.Decision, start int64) op {
	now := nanotime()
	if start == 0 {
		start = s.qstart
		if start == 0 {
			start = now
		}
	}
	s.qstart = 0
	o.q = s.statsEntry(d)
	o.qstart, o.qsent = start, now
	s.lastReq = now
	o.qtarget = targetPrimary
	if s.node != nil && s.node != s.srv.topo.writer() {
		o.qtarget = targetReplica
	}
	return o
}

// noteTagRowsLocked adds the row count of a CommandComplete tag to the
// statement at the head of the queue.
func noteTagRows(head *op, tag []byte) {
	if head == nil || head.q == nil {
		return
	}
	head.qrows += tagRows(tag)
}

// tagRows parses the row count at the end of a command tag ("SELECT 5",
// "INSERT 0 1", "UPDATE 3"); 0 for tags without one.
func tagRows(tag []byte) int64 {
	if n := len(tag); n > 0 && tag[n-1] == 0 {
		tag = tag[:n-1]
	}
	i := len(tag)
	for i > 0 && tag[i-1] >= '0' && tag[i-1] <= '9' {
		i--
	}
	if i == len(tag) || i == 0 || tag[i-1] != ' ' {
		return 0
	}
	var n int64
	for _, c := range tag[i:] {
		n = n*10 + int64(c-'0')
		if n > 1<<53 {
			return 0
		}
	}
	return n
}

// queryDoneLocked records a completed Query or Execute op (pump, mu held).
func (s *session) queryDoneLocked(o *op) {
	if o.q == nil {
		return
	}
	now := nanotime()
	dur, backend := now-o.qstart, now-o.qsent
	s.recordLocked(o.q, o.qtarget, dur, backend, o.qrows, o.qfailed)
	s.srv.qs.backObs[o.qtarget].observe(backend)
	o.q = nil
}

// observeQuery records one statement answered at target ("primary",
// "replica" or "cache") in dur, with rows rows, failed or not: the hook
// for statements the session answers without the usual Query/Execute op
// (the result cache). Call it without mu held.
func (s *session) observeQuery(d *routing.Decision, target string, dur time.Duration, rows int64, failed bool) {
	t, ok := targetIndex(target)
	if !ok {
		return
	}
	q := s.srv.qs.entry(d)
	s.mu.Lock()
	s.recordLocked(q, t, int64(dur), 0, rows, failed)
	s.mu.Unlock()
}

// flushStats adds the session's database counters to its database's
// totals (the session is ending).
func (s *session) flushStats() {
	s.mu.Lock()
	c := s.dbc
	s.dbc = dbCounters{}
	s.mu.Unlock()
	if c.queries == 0 {
		return
	}
	db := s.srv.qs.db(s.database)
	db.mu.Lock()
	db.c.add(&c)
	db.mu.Unlock()
}

// recordLocked feeds statistics, histograms, per-database counters and
// the slow-query log (mu held).
func (s *session) recordLocked(q *fpStats, target uint8, dur, backend, rows int64, failed bool) {
	q.record(s.srv.qs, target, dur, backend, rows, failed)
	c := &s.dbc
	c.queries++
	c.queryNs += dur
	c.rows += rows
	if target != targetCache {
		c.serverNs += backend
		c.waitNs += dur - backend
	}
	if failed {
		c.errors++
	}
	switch target {
	case targetReplica:
		c.replicaQueries++
	case targetCache:
		c.cacheQueries++
	}
	if th := s.cfg.Metrics.SlowQueryThreshold; th > 0 && dur >= int64(th) {
		s.srv.log.Info("slow query",
			"duration_ms", float64(dur)/1e6,
			"backend_ms", float64(backend)/1e6,
			"fingerprint", q.label,
			"target", targetNames[target],
			"command", q.command,
			"rows", rows,
			"failed", failed,
			"database", s.database,
			"user", s.user,
			"query", q.normalized)
	}
}
