package proxy_test

// The soak's cache part (issue #7): the soak's proxy ("A") runs a tiered
// cache (memory in front of the cluster's Redis) with a rule on soak_cache;
// a second instance ("B", no replica) shares that Redis and only reads, so
// results A filled are answered to B by the Redis tier. Workers increment
// soak_cache rows through A and read them through A and B; a read must
// return at least the highest value acknowledged for its row before the
// read started (the rule of the cache checker). A Redis restart in the
// middle must cause no client error, and caching must resume by itself.
//
// B stays out of the Redis outage: an instance that does not write cannot
// see another's writes while Redis is down (the documented StaleBound
// window, covered by TestCacheRedisKilled), and this soak allows no stale
// read at all. While the outage fault runs (from before Redis stops until
// A has served a verified hit after it came back, which also proves A's
// queued invalidations reached Redis), B's reads go through A instead.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy"
)

// soakCacheRows is how many soak_cache rows the workers share: few, so that
// reads repeat between the writes that invalidate the table.
const soakCacheRows = 4

// soakCache is the state of the cache part of one soak run.
type soakCache struct {
	srvA, srvB *proxy.Server
	regA, regB *prometheus.Registry
	dsnB       string
	// acked is, per row, the highest value a worker had acknowledged.
	acked [soakCacheRows]atomic.Int64
	// gate keeps B's reads out of the Redis fault: readers TryRLock,
	// the fault holds the write lock.
	gate                                 sync.RWMutex
	reads, readsB, rerouted, writes      atomic.Int64
	stale                                atomic.Int64
	redisDownAt                          time.Duration // into the soak
	hitsAtStop, hitsAtRestart            uint64        // A's
	resumedAfter                         time.Duration // from Redis answering to A's next hit
	errsBeforeFault, errsAfterFault      int64
	faultRan                             bool
	hitsAtEndA, hitsAtEndB               uint64
	memHits, redisHits, misses, stored   float64
	finalV                               [soakCacheRows]int64
	soakStart                            time.Time
	redisOutage                          time.Duration
	hitsDuringOutage, storedAfterRestart uint64
}

// soakC is the running soak's cache state (TestSoak sets it).
var soakC *soakCache

// soakErrs counts every client error of the soak (the Redis fault asserts
// that its window adds none).
var soakErrs atomic.Int64

// soakCacheConfig configures one soak proxy's cache: tiered, a rule on
// soak_cache, a key prefix of its own in the shared Redis.
func soakCacheConfig(cfg *config.Config) {
	cfg.Cache.Backend = config.CacheTiered
	cfg.Cache.Rules = []config.CacheRule{{Tables: []string{"soak_cache"}, TTL: time.Minute}}
	cfg.Cache.Redis.Addr = cluster.Redis.Addr()
	cfg.Cache.Redis.KeyPrefix = "pgsluice-soak"
	// A loaded 2-core machine: keep the soak about the proxy, not Redis
	// latency (the outage is the fault below).
	cfg.Cache.Redis.Timeout = 500 * time.Millisecond
}

// newSoakCache creates soak_cache and returns the state of a run.
func newSoakCache(t *testing.T) *soakCache {
	t.Helper()
	asApp(t, fmt.Sprintf("DROP TABLE IF EXISTS soak_cache; CREATE TABLE soak_cache(id int PRIMARY KEY, v bigint NOT NULL, pad text NOT NULL); "+
		"INSERT INTO soak_cache SELECT g, 0, repeat('p', 200) FROM generate_series(0, %d) g", soakCacheRows-1))
	t.Cleanup(func() { cluster.StartRedis() }) // whatever happened, Redis runs afterwards
	return &soakCache{regA: prometheus.NewRegistry(), regB: prometheus.NewRegistry()}
}

// startB starts instance B: same cache, same Redis, no replica.
func (sc *soakCache) startB(t *testing.T) {
	t.Helper()
	sc.dsnB, sc.srvB = startProxy(t, cluster, func(tc *TargetConfig) {
		tc.Registry = sc.regB
		tc.Tweak = soakCacheConfig
	})
}

// read reads row id through c and checks it against the floor taken before
// the read started.
func (sc *soakCache) read(ctx context.Context, w *soakWorker, c *pgx.Conn, via string) (error, error) {
	id := w.rng.IntN(soakCacheRows)
	floor := sc.acked[id].Load()
	mode := pgx.QueryExecModeCacheStatement
	if w.rng.IntN(2) == 0 {
		mode = pgx.QueryExecModeSimpleProtocol
	}
	var v int64
	var pad string
	if err := c.QueryRow(ctx, "SELECT v, pad FROM soak_cache WHERE id = $1", mode, id).Scan(&v, &pad); err != nil {
		return nil, err
	}
	if v < floor {
		sc.stale.Add(1)
		return fmt.Errorf("worker %d: cached read of row %d through %s returned %d, %d was acknowledged before the read", w.id, id, via, v, floor), nil
	}
	return nil, nil
}

func init() {
	soakOps = append(soakOps,
		soakOp{"cache_write", 1, func(ctx context.Context, w *soakWorker) (error, error) {
			sc := soakC
			id := w.rng.IntN(soakCacheRows)
			var v int64
			if err := w.conn.QueryRow(ctx, "UPDATE soak_cache SET v = v + 1 WHERE id = $1 RETURNING v", id).Scan(&v); err != nil {
				return nil, err
			}
			sc.writes.Add(1)
			for {
				cur := sc.acked[id].Load()
				if v <= cur || sc.acked[id].CompareAndSwap(cur, v) {
					break
				}
			}
			return nil, nil
		}},
		soakOp{"cache_read", 3, func(ctx context.Context, w *soakWorker) (error, error) {
			soakC.reads.Add(1)
			return soakC.read(ctx, w, w.conn, "A")
		}},
		soakOp{"cache_read_b", 2, func(ctx context.Context, w *soakWorker) (error, error) {
			sc := soakC
			if !sc.gate.TryRLock() {
				sc.rerouted.Add(1)
				return sc.read(ctx, w, w.conn, "A (B paused for the Redis restart)")
			}
			defer sc.gate.RUnlock()
			if w.connB == nil || w.connB.IsClosed() {
				c, err := pgx.Connect(ctx, sc.dsnB)
				if err != nil {
					return nil, err
				}
				w.connB = c
			}
			sc.readsB.Add(1)
			return sc.read(ctx, w, w.connB, "B")
		}},
	)
	soakFaults = append(soakFaults, soakFault{"redis restart", 0.25, func(t *testing.T) error {
		return soakC.redisRestart()
	}})
}

// redisRestart is the Redis fault: B paused, Redis stopped for longer than
// the StaleBound (1s) so that no memory entry can be served unverified,
// started again (empty), then waits until A serves a hit again.
func (sc *soakCache) redisRestart() error {
	sc.gate.Lock()
	defer sc.gate.Unlock()
	sc.faultRan = true
	sc.errsBeforeFault = soakErrs.Load()
	sc.redisDownAt = time.Since(sc.soakStart)
	sc.hitsAtStop = sc.srvA.CacheStats().Hits
	down := time.Now()
	if err := cluster.StopRedis(); err != nil {
		return err
	}
	time.Sleep(3 * time.Second)
	if err := cluster.StartRedis(); err != nil {
		return err
	}
	up := time.Now()
	sc.redisOutage = up.Sub(down)
	sc.hitsAtRestart = sc.srvA.CacheStats().Hits
	sc.hitsDuringOutage = sc.hitsAtRestart - sc.hitsAtStop
	storedAtRestart := sc.srvA.CacheStats().Stored
	// No fixed timing: the breaker's backoff and the machine's load
	// decide; a minute is far beyond either.
	for sc.srvA.CacheStats().Hits <= sc.hitsAtRestart {
		if time.Since(up) > time.Minute {
			sc.errsAfterFault = soakErrs.Load()
			return fmt.Errorf("caching did not resume within a minute of Redis answering again (hits %d)", sc.hitsAtRestart)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sc.resumedAfter = time.Since(up)
	sc.storedAfterRestart = sc.srvA.CacheStats().Stored - storedAtRestart
	sc.errsAfterFault = soakErrs.Load()
	return nil
}

// finish collects the end-of-run numbers: hits per instance and per tier,
// the rows' final values on the primary.
func (sc *soakCache) finish(t *testing.T, ctx context.Context) {
	t.Helper()
	sc.hitsAtEndA, sc.hitsAtEndB = sc.srvA.CacheStats().Hits, sc.srvB.CacheStats().Hits
	for _, reg := range []*prometheus.Registry{sc.regA, sc.regB} {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				v := m.GetCounter().GetValue()
				switch mf.GetName() {
				case "pgsluice_cache_hits_total":
					if label(m, "tier") == "redis" {
						sc.redisHits += v
					} else {
						sc.memHits += v
					}
				case "pgsluice_cache_lookups_total":
					if label(m, "result") == "miss" {
						sc.misses += v
					}
				case "pgsluice_cache_stores_total":
					if label(m, "result") == "stored" {
						sc.stored += v
					}
				}
			}
		}
	}
	rows, err := cluster.Query(ctx, cluster.Primary, "SELECT id, v FROM soak_cache")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		sc.finalV[r[0].(int32)] = r[1].(int64)
	}
}

// summary adds the cache lines to the soak summary.
func (sc *soakCache) summary(b *strings.Builder) {
	fmt.Fprintf(b, "  cache (tiered, 2 instances sharing Redis): hits %d (A %d, B %d; memory tier %.0f, redis tier %.0f), misses %.0f, stored %.0f\n",
		sc.hitsAtEndA+sc.hitsAtEndB, sc.hitsAtEndA, sc.hitsAtEndB, sc.memHits, sc.redisHits, sc.misses, sc.stored)
	fmt.Fprintf(b, "  cached rows: %d writes acknowledged, %d reads through A, %d through B (+%d through A while B was paused), stale: %d\n",
		sc.writes.Load(), sc.reads.Load(), sc.readsB.Load(), sc.rerouted.Load(), sc.stale.Load())
	if sc.faultRan {
		fmt.Fprintf(b, "  redis restart at %s: down %s, A hits %d at stop, %d at restart (+%d served within the 1s stale bound), %d at the end; first hit %s after Redis answered; client errors during the fault: %d\n",
			sc.redisDownAt.Round(time.Second), sc.redisOutage.Round(time.Millisecond), sc.hitsAtStop, sc.hitsAtRestart, sc.hitsDuringOutage,
			sc.hitsAtEndA, sc.resumedAfter.Round(time.Millisecond), sc.errsAfterFault-sc.errsBeforeFault)
	}
}

// check asserts the cache part: hits really happened (both instances, both
// tiers), resumed after the Redis restart without client errors, and no
// acknowledged increment is missing from the primary. Stale reads are
// reported by the soak with the others.
func (sc *soakCache) check(t *testing.T) {
	t.Helper()
	if sc.writes.Load() == 0 || sc.reads.Load() == 0 || sc.readsB.Load() == 0 {
		t.Errorf("the cache workload did nothing: writes %d, reads %d (A) %d (B)", sc.writes.Load(), sc.reads.Load(), sc.readsB.Load())
	}
	if sc.hitsAtEndA == 0 || sc.hitsAtEndB == 0 {
		t.Errorf("cache hits: A %d, B %d; want both > 0", sc.hitsAtEndA, sc.hitsAtEndB)
	}
	if sc.memHits == 0 || sc.redisHits == 0 {
		t.Errorf("cache hits by tier: memory %.0f, redis %.0f; want both > 0", sc.memHits, sc.redisHits)
	}
	if sc.faultRan {
		if sc.hitsAtEndA <= sc.hitsAtRestart {
			t.Errorf("caching did not resume after the Redis restart: A hits %d at restart, %d at the end", sc.hitsAtRestart, sc.hitsAtEndA)
		}
		if n := sc.errsAfterFault - sc.errsBeforeFault; n != 0 {
			t.Errorf("%d client errors while Redis was down or coming back, want 0", n)
		}
	}
	for id, v := range sc.finalV {
		if a := sc.acked[id].Load(); v < a {
			t.Errorf("soak_cache row %d is %d on the primary, %d was acknowledged (lost increments)", id, v, a)
		}
	}
}
