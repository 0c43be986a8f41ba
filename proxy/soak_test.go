package proxy_test

// The soak (issue #7): mixed reads, writes and transactions through the
// proxy with faults injected in the middle, ending with the checks that
// matter: no acknowledged write lost, no stale read after an acknowledged
// write, flat RSS and goroutine counts.
//
//   PGSLUICE_SOAK_DURATION  how long (Go duration; default 20s, `make soak`: 10m)
//   PGSLUICE_SOAK_WORKERS   concurrent clients (default 8)
//
// Hooks: soakOps and soakFaults are package variables; another test file
// adds to them in an init function. soak_cache_test.go adds the cache:
// cached reads through this proxy and a second instance sharing Redis,
// writes that invalidate them, and a Redis restart.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsluice/pgsluice/config"
)

// soakWorker is one client of the soak: its own id, connection and the
// writes it has had acknowledged.
type soakWorker struct {
	id    int
	dsn   string
	conn  *pgx.Conn
	seq   int
	acked []int // seqs acknowledged (committed) for this worker
	rng   *rand.Rand
	// reader is a connection as another role (md5u), for replica reads.
	reader    *pgx.Conn
	readerDSN string
	// connB is a connection to the soak's second instance (cache reads).
	connB *pgx.Conn
}

// soakReplicaReads counts reads a replica answered.
var soakReplicaReads atomic.Int64

// soakOp is one kind of client operation. run returns an error the soak
// counts (by SQLSTATE); a non-nil stale marks a read that missed one of
// the worker's own acknowledged writes.
type soakOp struct {
	name   string
	weight int
	run    func(ctx context.Context, w *soakWorker) (stale error, err error)
}

// soakFault runs once, at fraction at (0..1) of the soak.
type soakFault struct {
	name string
	at   float64
	run  func(t *testing.T) error
}

var soakOps = []soakOp{
	{"insert", 3, func(ctx context.Context, w *soakWorker) (error, error) {
		w.seq++
		if _, err := w.conn.Exec(ctx, "INSERT INTO soak_t(worker, seq) VALUES ($1, $2)", w.id, w.seq); err != nil {
			return nil, err
		}
		w.acked = append(w.acked, w.seq)
		// Read it back at once (routed: a replica must have it, or the
		// primary answers).
		var n int
		if err := w.conn.QueryRow(ctx, "SELECT count(*) FROM soak_t WHERE worker = $1 AND seq = $2", w.id, w.seq).Scan(&n); err != nil {
			return nil, err
		}
		if n != 1 {
			return fmt.Errorf("worker %d: own write seq %d not visible right after it was acknowledged", w.id, w.seq), nil
		}
		return nil, nil
	}},
	{"transaction", 2, func(ctx context.Context, w *soakWorker) (error, error) {
		tx, err := w.conn.Begin(ctx)
		if err != nil {
			return nil, err
		}
		defer tx.Rollback(ctx)
		a, b := w.seq+1, w.seq+2
		w.seq += 2
		if _, err := tx.Exec(ctx, "INSERT INTO soak_t(worker, seq) VALUES ($1, $2), ($1, $3)", w.id, a, b); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, "UPDATE soak_counter SET n = n + 2 WHERE worker = $1", w.id); err != nil {
			return nil, err
		}
		if err := tx.Commit(ctx); err != nil {
			return nil, err
		}
		w.acked = append(w.acked, a, b)
		return nil, nil
	}},
	{"read_count", 4, func(ctx context.Context, w *soakWorker) (error, error) {
		var n int
		if err := w.conn.QueryRow(ctx, "SELECT count(*) FROM soak_t WHERE worker = $1", w.id).Scan(&n); err != nil {
			return nil, err
		}
		if n < len(w.acked) {
			return fmt.Errorf("worker %d: read %d rows, %d acknowledged before the read", w.id, n, len(w.acked)), nil
		}
		return nil, nil
	}},
	{"replica_read", 2, func(ctx context.Context, w *soakWorker) (error, error) {
		// Another role, which has written nothing: its reads go to the
		// replica while it is in rotation.
		if w.reader == nil || w.reader.IsClosed() {
			c, err := pgx.Connect(ctx, w.readerDSN)
			if err != nil {
				return nil, err
			}
			w.reader = c
		}
		var n int
		var onReplica bool
		err := w.reader.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM soak_t WHERE worker = $1", w.rng.IntN(64)).Scan(&n, &onReplica)
		if err == nil && onReplica {
			soakReplicaReads.Add(1)
		}
		return nil, err
	}},
	{"rolled_back", 1, func(ctx context.Context, w *soakWorker) (error, error) {
		// A write that is rolled back must never show up.
		tx, err := w.conn.Begin(ctx)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO soak_t(worker, seq) VALUES ($1, -1)", w.id); err != nil {
			tx.Rollback(ctx)
			return nil, err
		}
		return nil, tx.Rollback(ctx)
	}},
}

var soakFaults = []soakFault{
	{"replica restart", 0.5, func(t *testing.T) error {
		if err := cluster.StopNode(cluster.Replica, "fast"); err != nil {
			return err
		}
		time.Sleep(2 * time.Second)
		return cluster.StartNode(cluster.Replica)
	}},
}

// rssBytes is this process's resident set size (/proc/self/statm).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return -1
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// TestSoak runs the mixed workload for PGSLUICE_SOAK_DURATION with the
// soakFaults injected, then checks: every acknowledged write is on the
// primary; no rolled-back write is; no worker read less than it had
// acknowledged (no stale read, cached reads included); errors only of the
// connection classes the faults cause (none during the Redis restart);
// cache hits through both instances and both tiers, and again after the
// Redis restart; RSS and goroutine counts of the last quarter no higher
// than the second quarter's (with slack). It prints a summary.
func TestSoak(t *testing.T) {
	dur := 20 * time.Second
	if v := os.Getenv("PGSLUICE_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 5*time.Second {
			t.Fatalf("PGSLUICE_SOAK_DURATION=%q: want a duration of at least 5s", v)
		}
		dur = d
	}
	workers := envInt(t, "PGSLUICE_SOAK_WORKERS", 8)
	ctx, cancel := context.WithTimeout(context.Background(), dur+5*time.Minute)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS soak_t, soak_counter; CREATE TABLE soak_t(worker int, seq int, at timestamptz DEFAULT now(), PRIMARY KEY (worker, seq)); CREATE TABLE soak_counter(worker int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
	asApp(t, "GRANT SELECT ON soak_t TO md5u")
	asApp(t, fmt.Sprintf("INSERT INTO soak_counter(worker) SELECT g FROM generate_series(0, %d) g", workers-1))
	sc := newSoakCache(t)
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever happened, the shared replica is running afterwards.
		if err := cluster.StartNode(cluster.Replica); err != nil {
			t.Errorf("replica restart in cleanup: %v", err)
		}
	})
	dsn, srv := startProxy(t, cluster, func(c *TargetConfig) {
		withReplica(c)
		replica := c.Tweak
		c.Registry = sc.regA
		c.Tweak = func(cfg *config.Config) {
			replica(cfg)
			// Workers reconnect after a FATAL: read-your-writes must
			// hold across their connections, so scope it to the user.
			cfg.Routing.ReadYourWrites = "user"
			soakCacheConfig(cfg)
		}
	})
	sc.srvA = srv
	sc.startB(t)
	soakC = sc
	soakErrs.Store(0)
	probe := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, probe)
	probe.Close(ctx)

	total := 0
	for _, op := range soakOps {
		total += op.weight
	}
	var (
		mu         sync.Mutex
		opsByName  = map[string]int{}
		errsByCode = map[string]int{}
		stale      []string
		firstErr   = map[string]string{}
	)
	var opsDone atomic.Int64
	soakReplicaReads.Store(0)
	start := time.Now()
	sc.soakStart = start
	end := start.Add(dur)
	ws := make([]*soakWorker, workers)
	var wg sync.WaitGroup
	for i := range ws {
		w := &soakWorker{id: i, dsn: dsn, readerDSN: dsnFor(t, dsn, "md5u", "md5pass", "app"), rng: rand.New(rand.NewPCG(uint64(i), 7))}
		ws[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if w.conn != nil {
					w.conn.Close(context.Background())
				}
				if w.reader != nil {
					w.reader.Close(context.Background())
				}
				if w.connB != nil {
					w.connB.Close(context.Background())
				}
			}()
			for time.Now().Before(end) {
				if w.conn == nil || w.conn.IsClosed() {
					c, err := pgx.Connect(ctx, dsn)
					if err != nil {
						soakErrs.Add(1)
						mu.Lock()
						errsByCode["connect:"+sqlStateOr(err)]++
						firstErr["connect:"+sqlStateOr(err)] = err.Error()
						mu.Unlock()
						time.Sleep(100 * time.Millisecond)
						continue
					}
					w.conn = c
				}
				k := w.rng.IntN(total)
				var op soakOp
				for _, o := range soakOps {
					if k < o.weight {
						op = o
						break
					}
					k -= o.weight
				}
				octx, ocancel := context.WithTimeout(ctx, time.Minute)
				st, err := op.run(octx, w)
				ocancel()
				opsDone.Add(1)
				mu.Lock()
				opsByName[op.name]++
				if st != nil {
					stale = append(stale, st.Error())
				}
				if err != nil {
					soakErrs.Add(1)
					code := op.name + ":" + sqlStateOr(err)
					errsByCode[code]++
					if _, ok := firstErr[code]; !ok {
						firstErr[code] = err.Error()
					}
				}
				mu.Unlock()
				if err != nil && !w.conn.IsClosed() && octx.Err() != nil {
					w.conn.Close(context.Background())
				}
			}
		}()
	}

	// Samples (once a second) and faults.
	type sample struct {
		at         time.Duration
		rss        int64
		goroutines int
	}
	var samples []sample
	faults := append([]soakFault(nil), soakFaults...)
	sort.Slice(faults, func(i, j int) bool { return faults[i].at < faults[j].at })
	var faultLog []string
	tick := time.NewTicker(time.Second)
	for now := range tick.C {
		el := now.Sub(start)
		samples = append(samples, sample{el, rssBytes(), runtime.NumGoroutine()})
		for len(faults) > 0 && el >= time.Duration(float64(dur)*faults[0].at) {
			f := faults[0]
			faults = faults[1:]
			fs := time.Now()
			if err := f.run(t); err != nil {
				t.Errorf("fault %s: %v", f.name, err)
			}
			faultLog = append(faultLog, fmt.Sprintf("%s at %s (took %s)", f.name, el.Round(time.Second), time.Since(fs).Round(time.Millisecond)))
		}
		if !now.Before(end) {
			break
		}
	}
	tick.Stop()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("soak workers did not stop within 2 minutes of the end (a client hangs)")
	}

	// ---- checks ----
	sc.finish(t, ctx)
	rows, err := cluster.Query(ctx, cluster.Primary, "SELECT worker, seq FROM soak_t")
	if err != nil {
		t.Fatal(err)
	}
	present := map[[2]int]bool{}
	rolledBackSeen := 0
	for _, r := range rows {
		k := [2]int{int(r[0].(int32)), int(r[1].(int32))}
		present[k] = true
		if k[1] == -1 {
			rolledBackSeen++
		}
	}
	acked, lost := 0, 0
	var lostEx []string
	for _, w := range ws {
		for _, s := range w.acked {
			acked++
			if !present[[2]int{w.id, s}] {
				lost++
				if len(lostEx) < 5 {
					lostEx = append(lostEx, fmt.Sprintf("worker %d seq %d", w.id, s))
				}
			}
		}
	}
	// Errors: only connection-class ones (the faults cut sessions).
	allowed := func(code string) bool {
		c := code[strings.LastIndexByte(code, ':')+1:]
		return c == "57P01" || c == "08006" || c == "08000" || c == "57P03" || c == "conn" || c == "40001"
	}
	var badErrs []string
	errTotal := 0
	for code, n := range errsByCode {
		errTotal += n
		if !allowed(code) {
			badErrs = append(badErrs, fmt.Sprintf("%s x%d (%s)", code, n, firstErr[code]))
		}
	}
	sort.Strings(badErrs)
	// Flatness: the last quarter against the second quarter.
	q := len(samples) / 4
	maxOf := func(ss []sample) (rss int64, g int) {
		for _, s := range ss {
			rss = max(rss, s.rss)
			g = max(g, s.goroutines)
		}
		return
	}
	rss2, g2 := maxOf(samples[q : 2*q])
	rss4, g4 := maxOf(samples[len(samples)-q:])

	var sum strings.Builder
	fmt.Fprintf(&sum, "soak summary (%s, %d workers)\n", dur, workers)
	fmt.Fprintf(&sum, "  operations: %d (%.0f/s)", opsDone.Load(), float64(opsDone.Load())/time.Since(start).Seconds())
	names := make([]string, 0, len(opsByName))
	for n := range opsByName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&sum, " %s=%d", n, opsByName[n])
	}
	fmt.Fprintf(&sum, "\n  reads answered by the replica: %d\n", soakReplicaReads.Load())
	fmt.Fprintf(&sum, "  faults: %s\n", strings.Join(faultLog, "; "))
	fmt.Fprintf(&sum, "  acknowledged writes: %d, lost: %d %v\n", acked, lost, lostEx)
	fmt.Fprintf(&sum, "  rolled-back writes visible: %d\n", rolledBackSeen)
	fmt.Fprintf(&sum, "  stale reads after acknowledged writes: %d\n", len(stale))
	fmt.Fprintf(&sum, "  client errors: %d %v\n", errTotal, errsByCode)
	sc.summary(&sum)
	fmt.Fprintf(&sum, "  RSS max: 2nd quarter %.1f MiB, last quarter %.1f MiB; goroutines max: %d, %d\n",
		float64(rss2)/(1<<20), float64(rss4)/(1<<20), g2, g4)
	t.Log(sum.String())
	fmt.Fprint(os.Stderr, sum.String())

	if len(faultLog) != len(soakFaults) {
		t.Errorf("only %d of %d faults ran", len(faultLog), len(soakFaults))
	}
	if acked == 0 || opsByName["read_count"] == 0 {
		t.Fatal("the workload did nothing")
	}
	if soakReplicaReads.Load() == 0 {
		t.Error("no read reached the replica: the replica restart proved nothing")
	}
	sc.check(t)
	if lost > 0 {
		t.Errorf("%d acknowledged writes lost, e.g. %v", lost, lostEx)
	}
	if rolledBackSeen > 0 {
		t.Errorf("%d rolled-back writes are visible", rolledBackSeen)
	}
	if len(stale) > 0 {
		t.Errorf("%d stale reads, e.g. %v", len(stale), stale[:min(5, len(stale))])
	}
	if len(badErrs) > 0 {
		t.Errorf("errors other than the connection-class ones the faults cause: %v", badErrs)
	}
	if rss4 > rss2+rss2/4+64<<20 {
		t.Errorf("RSS grew: max %.1f MiB in the 2nd quarter, %.1f MiB in the last", float64(rss2)/(1<<20), float64(rss4)/(1<<20))
	}
	if g4 > g2+g2/4+20 {
		t.Errorf("goroutines grew: max %d in the 2nd quarter, %d in the last", g2, g4)
	}
}

// sqlStateOr is the SQLSTATE of err, or "conn" for errors without one
// (closed connection, I/O).
func sqlStateOr(err error) string {
	if c := sqlState(err); c != "" {
		return c
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return "conn"
}
