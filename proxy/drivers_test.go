package proxy_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lib/pq"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/deploy/local"
)

// ---- client matrix: real client libraries through pgsluice ----
//
// Every driver runs the same workload contract (drvWant) in transaction and
// in session pooling mode against its own pgsluice with a pool of
// drvPoolSize backends, with more concurrent client connections than that,
// so backends are really shared. Each (driver, mode) pair owns the tables
// drv_<driver>_<mode>_items and _copy, created directly on the primary
// before the run.
//
// Worker w of a driver does, on one client connection (or pool):
//
//	echo                  SELECT $1::int * 2, upper($2) with (w+1)*7, 'w-<w>'
//	count, sum            10 inserted rows id w*1000+i, qty i (driver's prepared path)
//	updated, sum_in_tx,   UPDATE the even ids +100 in a transaction, read the
//	sum_after_commit      sum inside it and after COMMIT
//	deleted, count_in_tx, DELETE all its rows in a transaction, ROLLBACK
//	count_after_rollback
//	div0, after_div0      SELECT 1/0 (22012), then the connection still works
//	dup, aborted,         in a transaction: an INSERT, a duplicate key (23505),
//	count_after_error     the next statement (25P02), ROLLBACK: the INSERT is gone
//	copied, copy_count,   COPY 50 rows (ids 1..50) into _copy
//	copy_sum
//	cursor_rows,          DECLARE/FETCH 20 (or the driver's cursor) in a
//	cursor_sum,           transaction over its 50 copied rows
//	cursor_fetches
//
// and reports the backend pids it saw (pg_backend_pid()). The test checks
// every value, the final table contents on the primary, that no more than
// drvPoolSize distinct backends per node (primary, replica) served a driver, and in session mode that
// each client connection stayed on one backend.
//
// Scripted drivers (node-postgres, psycopg2, JDBC, psql) print their results
// as JSON ({"workers":[{"w":0,"pids":[...],...}],"extra":{...}}) and the
// assertions are made here.

const (
	drvPoolSize = 3
	drvWorkers  = 8
	// drvTimeout bounds one driver's run in one mode.
	drvTimeout = 90 * time.Second
)

// drvWant is what worker w must report for the common workload.
func drvWant(w int) map[string]string {
	return map[string]string{
		"echo":                 fmt.Sprintf("%d:W-%d", 2*(w+1)*7, w),
		"count":                "10",
		"sum":                  "45",
		"updated":              "5",
		"sum_in_tx":            "545",
		"sum_after_commit":     "545",
		"deleted":              "10",
		"count_in_tx":          "0",
		"count_after_rollback": "10",
		"div0":                 "22012",
		"after_div0":           "1",
		"dup":                  "23505",
		"aborted":              "25P02",
		"count_after_error":    "10",
		"copied":               "50",
		"copy_count":           "50",
		"copy_sum":             "1275",
		"cursor_rows":          "50",
		"cursor_sum":           "1275",
		"cursor_fetches":       "3",
	}
}

// drvResult is one worker's report.
type drvResult struct {
	W    int               `json:"w"`
	Pids []int             `json:"pids"`
	Vals map[string]string `json:"-"`
}

// drvReport is what a driver run produced.
type drvReport struct {
	Workers []drvResult
	// Extra holds driver-specific results outside the per-worker contract.
	Extra map[string]string
	// PerConnPids is false when a worker's queries may legitimately use
	// several client connections (database/sql), so the session-mode
	// one-backend-per-connection check does not apply.
	PerConnPids bool
}

// drvCase is one driver of the matrix.
type drvCase struct {
	name string
	// workers lists the worker numbers whose rows the driver writes.
	workers []int
	// extra is what the driver must report beyond the common contract,
	// once per run; wextra, once per worker.
	extra, wextra map[string]string
	run           func(t *testing.T, ctx context.Context, env drvEnv) drvReport
}

// drvEnv is what a driver run gets.
type drvEnv struct {
	mode   string // "transaction" or "session"
	dsn    string // pgsluice DSN for app/secret/app
	prefix string // table prefix, drv_<driver>_<tx|ses>
}

func drvRange(from, n int) []int {
	ws := make([]int, n)
	for i := range ws {
		ws[i] = from + i
	}
	return ws
}

// drvPgxModes are the pgx query exec modes; worker numbers are
// mode index*100 + k.
var drvPgxModes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeSimpleProtocol,
}

func drvCases() []drvCase {
	var pgxWorkers []int
	for mi := range drvPgxModes {
		pgxWorkers = append(pgxWorkers, drvRange(mi*100, drvWorkers)...)
	}
	return []drvCase{
		{name: "pgx", workers: pgxWorkers, run: drvRunPgx},
		{name: "pgxpool", workers: drvRange(0, 2*drvWorkers), run: drvRunPgxpool, extra: map[string]string{
			"pool_sum": strconv.Itoa(drvPoolQueries * (drvPoolQueries - 1) / 2), "pool_tx_rows": strconv.Itoa(drvPoolQueries),
		}},
		{name: "libpq", workers: drvRange(0, drvWorkers), run: drvRunLibpq},
		{name: "node", workers: drvRange(0, drvWorkers), run: drvRunNode},
		{name: "psycopg2", workers: drvRange(0, drvWorkers), run: drvRunPsycopg2},
		{name: "jdbc", workers: drvRange(0, drvWorkers), run: drvRunJDBC, wextra: map[string]string{
			// 5 single-row executions then a batch of 5; the lookup
			// statement read qty 0..9 four times; the portal read 50 ids.
			"batch": "11111", "reexec_sum": "180", "portal_rows": "50", "portal_sum": "1275",
		}},
		{name: "psql", workers: drvRange(0, drvWorkers), run: drvRunPsql, wextra: map[string]string{"fetchcount_rows": "50"}},
	}
}

// TestDrivers runs the client matrix. All (driver, mode) pairs run at
// once, each with its own pgsluice and tables; subtests are started from
// goroutines rather than with t.Parallel so that the -parallel default
// (GOMAXPROCS) does not serialise what is mostly waiting on other processes.
func TestDrivers(t *testing.T) {
	drvPrepareScripts(t)
	start := time.Now()
	var wg sync.WaitGroup
	for _, mode := range []string{"transaction", "session"} {
		for _, dc := range drvCases() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t.Run(mode+"/"+dc.name, func(t *testing.T) {
					drvRun(t, dc, mode)
				})
			}()
		}
	}
	wg.Wait()
	t.Logf("client matrix: %v", time.Since(start).Round(time.Millisecond))
}

// drvStartMu serialises startTarget calls.
var drvStartMu sync.Mutex

func drvRun(t *testing.T, dc drvCase, mode string) {
	start := time.Now()
	prefix := fmt.Sprintf("drv_%s_%s", dc.name, mode[:3])
	asApp(t, fmt.Sprintf(`DROP TABLE IF EXISTS %[1]s_items, %[1]s_copy;
		CREATE TABLE %[1]s_items (id int PRIMARY KEY, worker int NOT NULL, label text NOT NULL, qty int NOT NULL);
		CREATE TABLE %[1]s_copy (id int NOT NULL, worker int NOT NULL, payload text NOT NULL)`, prefix))
	// startTarget sets a package variable: start proxies one at a time.
	drvStartMu.Lock()
	dsn := startTarget(t, cluster, func(c *TargetConfig) {
		c.PoolSize = drvPoolSize
		c.PoolMode = mode
		// Session mode queues whole client sessions on the pool, and
		// they wait at login: 40 pgx sessions on 3 backends may take
		// longer than the default client_login_timeout on a loaded
		// machine.
		c.AcquireTimeout = drvTimeout
		c.Tweak = func(cfg *config.Config) {
			cfg.Pool.ClientLoginTimeout = drvTimeout
			// Routing and a cache rule on, as users run it: reads go to
			// the replica (read-your-writes for the whole user, since the
			// workloads check each other's writes across connections),
			// and results reading the workload's table are cached and
			// must be invalidated by its writes.
			cfg.Replicas = []config.Node{{Host: cluster.Replica.Host, Port: cluster.Replica.Port, Weight: 1}}
			cfg.Routing.HealthInterval = 100 * time.Millisecond
			cfg.Routing.Monitor.Database = "app"
			cfg.Routing.ReadYourWrites = "user"
			cfg.Cache.Backend = config.CacheMemory
			cfg.Cache.Rules = []config.CacheRule{{Tables: []string{prefix + "_items"}, TTL: time.Minute}}
		}
	})
	drvStartMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), drvTimeout)
	defer cancel()
	rep := dc.run(t, ctx, drvEnv{mode: mode, dsn: dsn, prefix: prefix})
	if t.Failed() {
		return
	}
	drvCheck(t, dc, mode, prefix, rep)
	t.Logf("%s/%s: %d workers in %v", mode, dc.name, len(rep.Workers), time.Since(start).Round(time.Millisecond))
}

// drvCheck asserts the reported values, the tables on the primary and the
// backends used.
func drvCheck(t *testing.T, dc drvCase, mode, prefix string, rep drvReport) {
	t.Helper()
	byW := map[int]drvResult{}
	for _, r := range rep.Workers {
		if _, dup := byW[r.W]; dup {
			t.Errorf("worker %d reported twice", r.W)
		}
		byW[r.W] = r
	}
	pids := map[int]bool{}
	moved := 0 // workers whose queries ran on more than one backend
	for _, w := range dc.workers {
		r, ok := byW[w]
		if !ok {
			t.Errorf("worker %d: no report", w)
			continue
		}
		want := drvWant(w)
		maps.Copy(want, dc.wextra)
		for _, k := range slices.Sorted(maps.Keys(want)) {
			if got, ok := r.Vals[k]; !ok {
				t.Errorf("worker %d: %s missing", w, k)
			} else if got != want[k] {
				t.Errorf("worker %d: %s = %q, want %q", w, k, got, want[k])
			}
		}
		if len(r.Pids) == 0 {
			t.Errorf("worker %d: no backend pids reported", w)
		}
		for _, p := range r.Pids {
			pids[p] = true
		}
		if slices.ContainsFunc(r.Pids, func(p int) bool { return p != r.Pids[0] }) {
			moved++
			if mode == "session" && rep.PerConnPids {
				t.Errorf("session mode: worker %d's connection moved between backends %v", w, r.Pids)
			}
		}
	}
	if len(rep.Workers) != len(dc.workers) {
		t.Errorf("%d worker reports, want %d", len(rep.Workers), len(dc.workers))
	}
	for k, want := range dc.extra {
		if got, ok := rep.Extra[k]; !ok || got != want {
			t.Errorf("extra %s = %q (present %v), want %q", k, got, ok, want)
		}
	}
	t.Logf("%d backends served %d workers; %d workers' queries ran on more than one backend", len(pids), len(dc.workers), moved)
	// One pool of drvPoolSize on the primary and one on the replica.
	if len(pids) > 2*drvPoolSize {
		t.Errorf("%d distinct backends served %s, pool size is %d per node (primary, replica): %v", len(pids), dc.name, drvPoolSize, slices.Sorted(maps.Keys(pids)))
	}
	// What is committed on the primary: every worker's 10 rows with the
	// committed update, and no row of the rolled-back transactions.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var items, itemsQty, copies, copySum, stray int64
	q := fmt.Sprintf(`SELECT (SELECT count(*) FROM %[1]s_items), (SELECT coalesce(sum(qty), 0) FROM %[1]s_items),
		(SELECT count(*) FROM %[1]s_copy), (SELECT coalesce(sum(id), 0) FROM %[1]s_copy),
		(SELECT count(*) FROM %[1]s_items WHERE id %% 1000 >= 10)`, prefix)
	if err := cluster.QueryRow(ctx, cluster.Primary, q, nil, &items, &itemsQty, &copies, &copySum, &stray); err != nil {
		t.Fatalf("check tables: %v", err)
	}
	n := int64(len(dc.workers))
	if items != 10*n || itemsQty != 545*n || copies != 50*n || copySum != 1275*n || stray != 0 {
		t.Errorf("primary holds items=%d (want %d) qty=%d (want %d) copy=%d (want %d) copysum=%d (want %d) stray=%d (want 0)",
			items, 10*n, itemsQty, 545*n, copies, 50*n, copySum, 1275*n, stray)
	}
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// ---- pgx ----

// drvRunPgx runs drvWorkers pgx connections for every QueryExecMode, all at
// once, each worker on its own connection.
func drvRunPgx(t *testing.T, ctx context.Context, env drvEnv) drvReport {
	var mu sync.Mutex
	rep := drvReport{PerConnPids: true}
	var wg sync.WaitGroup
	for mi, mode := range drvPgxModes {
		for k := range drvWorkers {
			w := mi*100 + k
			wg.Add(1)
			go func() {
				defer wg.Done()
				cfg, err := pgx.ParseConfig(env.dsn)
				if err != nil {
					t.Error(err)
					return
				}
				cfg.DefaultQueryExecMode = mode
				conn, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					t.Errorf("%v worker %d: connect: %v", mode, w, err)
					return
				}
				defer conn.Close(context.Background())
				r, err := drvPgxWorker(ctx, conn, env.prefix, w)
				if err != nil {
					t.Errorf("%v worker %d: %v", mode, w, err)
					return
				}
				mu.Lock()
				rep.Workers = append(rep.Workers, r)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	return rep
}

// drvPoolQueries is how many pool-level calls the pgxpool run makes.
const drvPoolQueries = 40

// drvRunPgxpool shares one pgxpool between 2*drvWorkers goroutines that run
// the workload on acquired connections, then makes pool-level calls
// (QueryRow, BeginFunc, SendBatch) from as many goroutines. In session mode
// the client pool is no larger than pgsluice's: a session pooler holds a
// backend for every open client connection.
func drvRunPgxpool(t *testing.T, ctx context.Context, env drvEnv) drvReport {
	cfg, err := pgxpool.ParseConfig(env.dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = drvWorkers
	if env.mode == "session" {
		cfg.MaxConns = drvPoolSize
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var mu sync.Mutex
	rep := drvReport{PerConnPids: true, Extra: map[string]string{}}
	var wg sync.WaitGroup
	for w := range 2 * drvWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
				r, err := drvPgxWorker(ctx, c.Conn(), env.prefix, w)
				if err == nil {
					mu.Lock()
					rep.Workers = append(rep.Workers, r)
					mu.Unlock()
				}
				return err
			})
			if err != nil {
				t.Errorf("pool worker %d: %v", w, err)
			}
		}()
	}
	wg.Wait()
	if _, err := pool.Exec(ctx, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s_pool (i int PRIMARY KEY)", env.prefix)); err != nil {
		t.Fatal(err)
	}
	var sum, txRows sync.Map
	for i := range drvPoolQueries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got int
			if err := pool.QueryRow(ctx, "SELECT $1::int", i).Scan(&got); err != nil {
				t.Errorf("pool.QueryRow: %v", err)
				return
			}
			sum.Store(i, got)
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, fmt.Sprintf("INSERT INTO %s_pool VALUES ($1)", env.prefix), i); err != nil {
					return err
				}
				var n int
				if err := tx.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s_pool WHERE i = $1", env.prefix), i).Scan(&n); err != nil {
					return err
				}
				txRows.Store(i, n)
				return nil
			})
			if err != nil {
				t.Errorf("pool BeginFunc: %v", err)
			}
			b := &pgx.Batch{}
			b.Queue("SELECT $1::int + 1", i)
			b.Queue("SELECT 1/0")
			br := pool.SendBatch(ctx, b)
			var plus int
			if err := br.QueryRow().Scan(&plus); err != nil || plus != i+1 {
				t.Errorf("pool batch: %d %v", plus, err)
			}
			if _, err := br.Exec(); sqlState(err) != "22012" {
				t.Errorf("pool batch error: want 22012, got %v", err)
			}
			br.Close()
		}()
	}
	wg.Wait()
	total, rows := 0, 0
	sum.Range(func(_, v any) bool { total += v.(int); return true })
	txRows.Range(func(_, v any) bool { rows += v.(int); return true })
	rep.Extra["pool_sum"] = strconv.Itoa(total)
	rep.Extra["pool_tx_rows"] = strconv.Itoa(rows)
	return rep
}

// drvPgxWorker runs the common workload on one pgx connection in its
// configured QueryExecMode; inserts go through a named prepared statement.
func drvPgxWorker(ctx context.Context, conn *pgx.Conn, p string, w int) (drvResult, error) {
	r := drvResult{W: w, Vals: map[string]string{}}
	set := func(k string, v any) { r.Vals[k] = fmt.Sprint(v) }
	pid := func() error {
		var n int
		if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&n); err != nil {
			return fmt.Errorf("pid: %w", err)
		}
		r.Pids = append(r.Pids, n)
		return nil
	}
	if err := pid(); err != nil {
		return r, err
	}
	var d int
	var up string
	if err := conn.QueryRow(ctx, "SELECT $1::int * 2, upper($2::text)", (w+1)*7, fmt.Sprintf("w-%d", w)).Scan(&d, &up); err != nil {
		return r, fmt.Errorf("echo: %w", err)
	}
	set("echo", fmt.Sprintf("%d:%s", d, up))

	ins := p + "_ins"
	if _, err := conn.Prepare(ctx, ins, fmt.Sprintf("INSERT INTO %s_items (id, worker, label, qty) VALUES ($1, $2, $3, $4)", p)); err != nil {
		return r, fmt.Errorf("prepare: %w", err)
	}
	for i := range 10 {
		if _, err := conn.Exec(ctx, ins, w*1000+i, w, fmt.Sprintf("w%d-%d", w, i), i); err != nil {
			return r, fmt.Errorf("insert %d: %w", i, err)
		}
	}
	countSum := fmt.Sprintf("SELECT count(*), coalesce(sum(qty), 0) FROM %s_items WHERE worker = $1", p)
	var cnt, sum int
	if err := conn.QueryRow(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		return r, fmt.Errorf("count: %w", err)
	}
	set("count", cnt)
	set("sum", sum)

	tx, err := conn.Begin(ctx)
	if err != nil {
		return r, err
	}
	tag, err := tx.Exec(ctx, fmt.Sprintf("UPDATE %s_items SET qty = qty + 100 WHERE worker = $1 AND id %% 2 = 0", p), w)
	if err != nil {
		tx.Rollback(ctx)
		return r, fmt.Errorf("update: %w", err)
	}
	set("updated", tag.RowsAffected())
	if err := tx.QueryRow(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		tx.Rollback(ctx)
		return r, err
	}
	set("sum_in_tx", sum)
	if err := tx.Commit(ctx); err != nil {
		return r, err
	}
	if err := conn.QueryRow(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		return r, err
	}
	set("sum_after_commit", sum)

	tx, err = conn.Begin(ctx)
	if err != nil {
		return r, err
	}
	tag, err = tx.Exec(ctx, fmt.Sprintf("DELETE FROM %s_items WHERE worker = $1", p), w)
	if err != nil {
		tx.Rollback(ctx)
		return r, fmt.Errorf("delete: %w", err)
	}
	set("deleted", tag.RowsAffected())
	if err := tx.QueryRow(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		tx.Rollback(ctx)
		return r, err
	}
	set("count_in_tx", cnt)
	if err := tx.Rollback(ctx); err != nil {
		return r, err
	}
	if err := conn.QueryRow(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		return r, err
	}
	set("count_after_rollback", cnt)
	if err := pid(); err != nil {
		return r, err
	}

	_, err = conn.Exec(ctx, "SELECT 1/0")
	set("div0", sqlState(err))
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return r, fmt.Errorf("after 1/0: %w", err)
	}
	set("after_div0", one)
	tx, err = conn.Begin(ctx)
	if err != nil {
		return r, err
	}
	if _, err := tx.Exec(ctx, ins, w*1000+50, w, "doomed", 1000); err != nil {
		tx.Rollback(ctx)
		return r, fmt.Errorf("insert in failing tx: %w", err)
	}
	_, err = tx.Exec(ctx, ins, w*1000, w, "dup", 0)
	set("dup", sqlState(err))
	_, err = tx.Exec(ctx, "SELECT 1")
	set("aborted", sqlState(err))
	if err := tx.Rollback(ctx); err != nil {
		return r, fmt.Errorf("rollback failed tx: %w", err)
	}
	if err := conn.QueryRow(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		return r, err
	}
	set("count_after_error", cnt)

	rows := make([][]any, 50)
	for i := range rows {
		rows[i] = []any{i + 1, w, fmt.Sprintf("p%d", i+1)}
	}
	n, err := conn.CopyFrom(ctx, pgx.Identifier{p + "_copy"}, []string{"id", "worker", "payload"}, pgx.CopyFromRows(rows))
	if err != nil {
		return r, fmt.Errorf("CopyFrom: %w", err)
	}
	set("copied", n)
	copyQ := fmt.Sprintf("SELECT count(*), coalesce(sum(id), 0) FROM %s_copy WHERE worker = $1", p)
	if err := conn.QueryRow(ctx, copyQ, w).Scan(&cnt, &sum); err != nil {
		return r, err
	}
	set("copy_count", cnt)
	set("copy_sum", sum)

	tx, err = conn.Begin(ctx)
	if err != nil {
		return r, err
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("DECLARE cur CURSOR FOR SELECT id FROM %s_copy WHERE worker = %d ORDER BY id", p, w)); err != nil {
		tx.Rollback(ctx)
		return r, fmt.Errorf("declare: %w", err)
	}
	var curRows, curSum, fetches int
	for {
		ids, err := pgx.CollectRows(drvRows(tx.Query(ctx, "FETCH 20 FROM cur")), pgx.RowTo[int])
		if err != nil {
			tx.Rollback(ctx)
			return r, fmt.Errorf("fetch: %w", err)
		}
		if len(ids) == 0 {
			break
		}
		fetches++
		for _, id := range ids {
			curRows++
			curSum += id
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return r, err
	}
	set("cursor_rows", curRows)
	set("cursor_sum", curSum)
	set("cursor_fetches", fetches)

	b := &pgx.Batch{}
	b.Queue(fmt.Sprintf("SELECT count(*) FROM %s_items WHERE worker = $1", p), w)
	// By SQL text: a simple-protocol batch is one multi-statement Query
	// and cannot name a prepared statement.
	b.Queue(fmt.Sprintf("INSERT INTO %s_items (id, worker, label, qty) VALUES ($1, $2, $3, $4)", p), w*1000+60, w, "batch", 7)
	b.Queue(fmt.Sprintf("DELETE FROM %s_items WHERE id = $1", p), w*1000+60)
	br := conn.SendBatch(ctx, b)
	var bc int
	if err := br.QueryRow().Scan(&bc); err != nil || bc != 10 {
		br.Close()
		return r, fmt.Errorf("batch count: %d %v", bc, err)
	}
	if tag, err := br.Exec(); err != nil || tag.RowsAffected() != 1 {
		br.Close()
		return r, fmt.Errorf("batch insert: %v %v", tag, err)
	}
	if tag, err := br.Exec(); err != nil || tag.RowsAffected() != 1 {
		br.Close()
		return r, fmt.Errorf("batch delete: %v %v", tag, err)
	}
	if err := br.Close(); err != nil {
		return r, err
	}
	if err := conn.Deallocate(ctx, ins); err != nil {
		return r, fmt.Errorf("deallocate: %w", err)
	}
	// After Deallocate the name is plain SQL text again: a syntax error.
	if _, err := conn.Exec(ctx, ins); sqlState(err) != "42601" {
		return r, fmt.Errorf("statement %s after Deallocate: want 42601, got %v", ins, err)
	}
	return r, pid()
}

// drvRows passes a (rows, err) pair to pgx.CollectRows, which reports err.
func drvRows(rows pgx.Rows, err error) pgx.Rows {
	if err != nil {
		return drvErrRows{err: err}
	}
	return rows
}

// drvErrRows is a pgx.Rows that only carries an error.
type drvErrRows struct {
	pgx.Rows
	err error
}

func (r drvErrRows) Close()     {}
func (r drvErrRows) Err() error { return r.err }
func (r drvErrRows) Next() bool { return false }

// ---- database/sql with lib/pq ----

// drvRunLibpq shares one *sql.DB between drvWorkers goroutines. The insert
// statement is prepared once with db.Prepare and used by every goroutine
// (database/sql re-prepares it on each connection it lands on). In session
// mode idle connections are not kept, so eight client connections take
// turns on three backends.
func drvRunLibpq(t *testing.T, ctx context.Context, env drvEnv) drvReport {
	db, err := sql.Open("postgres", env.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(drvWorkers)
	if env.mode == "session" {
		db.SetMaxIdleConns(0)
	}
	ins, err := db.PrepareContext(ctx, fmt.Sprintf("INSERT INTO %s_items (id, worker, label, qty) VALUES ($1, $2, $3, $4)", env.prefix))
	if err != nil {
		t.Fatalf("db.Prepare: %v", err)
	}
	defer ins.Close()
	var mu sync.Mutex
	rep := drvReport{}
	var wg sync.WaitGroup
	for w := range drvWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := drvLibpqWorker(ctx, db, ins, env.prefix, w)
			if err != nil {
				t.Errorf("worker %d: %v", w, err)
				return
			}
			mu.Lock()
			rep.Workers = append(rep.Workers, r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return rep
}

// pqCode returns the SQLSTATE of a lib/pq error, or "".
func pqCode(err error) string {
	var pe *pq.Error
	if errors.As(err, &pe) {
		return string(pe.Code)
	}
	return ""
}

func drvLibpqWorker(ctx context.Context, db *sql.DB, ins *sql.Stmt, p string, w int) (drvResult, error) {
	r := drvResult{W: w, Vals: map[string]string{}}
	set := func(k string, v any) { r.Vals[k] = fmt.Sprint(v) }
	type queryer interface {
		QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	}
	pid := func(q queryer) error {
		var n int
		if err := q.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&n); err != nil {
			return fmt.Errorf("pid: %w", err)
		}
		r.Pids = append(r.Pids, n)
		return nil
	}
	if err := pid(db); err != nil {
		return r, err
	}
	var d int
	var up string
	if err := db.QueryRowContext(ctx, "SELECT $1::int * 2, upper($2::text)", (w+1)*7, fmt.Sprintf("w-%d", w)).Scan(&d, &up); err != nil {
		return r, fmt.Errorf("echo: %w", err)
	}
	set("echo", fmt.Sprintf("%d:%s", d, up))
	for i := range 10 {
		if _, err := ins.ExecContext(ctx, w*1000+i, w, fmt.Sprintf("w%d-%d", w, i), i); err != nil {
			return r, fmt.Errorf("insert %d: %w", i, err)
		}
	}
	countSum := fmt.Sprintf("SELECT count(*), coalesce(sum(qty), 0) FROM %s_items WHERE worker = $1", p)
	var cnt, sum int
	if err := db.QueryRowContext(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		return r, fmt.Errorf("count: %w", err)
	}
	set("count", cnt)
	set("sum", sum)

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return r, err
	}
	res, err := tx.ExecContext(ctx, fmt.Sprintf("UPDATE %s_items SET qty = qty + 100 WHERE worker = $1 AND id %% 2 = 0", p), w)
	if err != nil {
		tx.Rollback()
		return r, fmt.Errorf("update: %w", err)
	}
	n, _ := res.RowsAffected()
	set("updated", n)
	if err := tx.QueryRowContext(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		tx.Rollback()
		return r, err
	}
	set("sum_in_tx", sum)
	if err := pid(tx); err != nil {
		tx.Rollback()
		return r, err
	}
	if err := tx.Commit(); err != nil {
		return r, err
	}
	if err := db.QueryRowContext(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		return r, err
	}
	set("sum_after_commit", sum)

	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		return r, err
	}
	if res, err = tx.ExecContext(ctx, fmt.Sprintf("DELETE FROM %s_items WHERE worker = $1", p), w); err != nil {
		tx.Rollback()
		return r, fmt.Errorf("delete: %w", err)
	}
	n, _ = res.RowsAffected()
	set("deleted", n)
	if err := tx.QueryRowContext(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		tx.Rollback()
		return r, err
	}
	set("count_in_tx", cnt)
	if err := tx.Rollback(); err != nil {
		return r, err
	}
	if err := db.QueryRowContext(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		return r, err
	}
	set("count_after_rollback", cnt)

	_, err = db.ExecContext(ctx, "SELECT 1/0")
	set("div0", pqCode(err))
	var one int
	if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return r, fmt.Errorf("after 1/0: %w", err)
	}
	set("after_div0", one)
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		return r, err
	}
	// The statement prepared on the DB, used inside a transaction.
	if _, err := tx.StmtContext(ctx, ins).ExecContext(ctx, w*1000+50, w, "doomed", 1000); err != nil {
		tx.Rollback()
		return r, fmt.Errorf("insert in failing tx: %w", err)
	}
	_, err = tx.StmtContext(ctx, ins).ExecContext(ctx, w*1000, w, "dup", 0)
	set("dup", pqCode(err))
	_, err = tx.ExecContext(ctx, "SELECT 1")
	set("aborted", pqCode(err))
	if err := tx.Rollback(); err != nil {
		return r, fmt.Errorf("rollback failed tx: %w", err)
	}
	if err := db.QueryRowContext(ctx, countSum, w).Scan(&cnt, &sum); err != nil {
		return r, err
	}
	set("count_after_error", cnt)

	// COPY: pq.CopyIn only builds this statement text (it is deprecated
	// in lib/pq 1.12 in favour of writing it out).
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		return r, err
	}
	cp, err := tx.PrepareContext(ctx, fmt.Sprintf("COPY %s_copy (id, worker, payload) FROM STDIN", p))
	if err != nil {
		tx.Rollback()
		return r, fmt.Errorf("prepare COPY: %w", err)
	}
	for i := 1; i <= 50; i++ {
		if _, err := cp.ExecContext(ctx, i, w, fmt.Sprintf("p%d", i)); err != nil {
			tx.Rollback()
			return r, fmt.Errorf("COPY row: %w", err)
		}
	}
	res, err = cp.ExecContext(ctx)
	if err != nil {
		tx.Rollback()
		return r, fmt.Errorf("COPY end: %w", err)
	}
	n, _ = res.RowsAffected()
	set("copied", n)
	if err := cp.Close(); err != nil {
		tx.Rollback()
		return r, err
	}
	if err := tx.Commit(); err != nil {
		return r, fmt.Errorf("commit COPY: %w", err)
	}
	if err := db.QueryRowContext(ctx, fmt.Sprintf("SELECT count(*), coalesce(sum(id), 0) FROM %s_copy WHERE worker = $1", p), w).Scan(&cnt, &sum); err != nil {
		return r, err
	}
	set("copy_count", cnt)
	set("copy_sum", sum)

	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		return r, err
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("DECLARE cur CURSOR FOR SELECT id FROM %s_copy WHERE worker = %d ORDER BY id", p, w)); err != nil {
		tx.Rollback()
		return r, fmt.Errorf("declare: %w", err)
	}
	var curRows, curSum, fetches int
	for {
		rows, err := tx.QueryContext(ctx, "FETCH 20 FROM cur")
		if err != nil {
			tx.Rollback()
			return r, fmt.Errorf("fetch: %w", err)
		}
		got := 0
		for rows.Next() {
			var id int
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				tx.Rollback()
				return r, err
			}
			got++
			curSum += id
		}
		if err := rows.Err(); err != nil {
			tx.Rollback()
			return r, err
		}
		if got == 0 {
			break
		}
		fetches++
		curRows += got
	}
	if err := tx.Commit(); err != nil {
		return r, err
	}
	set("cursor_rows", curRows)
	set("cursor_sum", curSum)
	set("cursor_fetches", fetches)
	return r, pid(db)
}

// ---- scripted drivers ----

// drvScriptDir is where the driver programs live.
const drvScriptDir = "testdata/drivers"

// drvJavaClasses is where TestDrivers compiled the JDBC program.
var drvJavaClasses string

// drvPrepareScripts checks every scripted driver is installed, installs
// node_modules when missing and compiles the JDBC program, failing with the
// command that installs what is missing.
func drvPrepareScripts(t *testing.T) {
	t.Helper()
	const installHint = "run deploy/local/scripts/install-deps.sh (or: apt-get install -y python3-psycopg2 default-jdk-headless libpostgresql-jdbc-java nodejs npm)"
	for _, bin := range []string{"node", "npm", "javac", "java", "/usr/bin/python3"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("client matrix needs %s: %v; %s", bin, err, installHint)
		}
	}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import psycopg2").CombinedOutput(); err != nil {
		t.Fatalf("client matrix needs psycopg2 for /usr/bin/python3: %v\n%s%s", err, out, installHint)
	}
	if _, err := os.Stat(drvJDBCJar); err != nil {
		t.Fatalf("client matrix needs the PostgreSQL JDBC driver at %s: %v; %s", drvJDBCJar, err, installHint)
	}
	var wg sync.WaitGroup
	var nodeErr, javaErr error
	var nodeOut, javaOut []byte
	wg.Add(2)
	go func() {
		defer wg.Done()
		dir := filepath.Join(drvScriptDir, "node")
		installed := true
		for _, mod := range []string{"pg", "pg-cursor", "pg-copy-streams"} {
			if _, err := os.Stat(filepath.Join(dir, "node_modules", mod, "package.json")); err != nil {
				installed = false
			}
		}
		if installed {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		nodeOut, nodeErr = cmd.CombinedOutput()
	}()
	go func() {
		defer wg.Done()
		drvJavaClasses = t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "javac", "-cp", drvJDBCJar, "-d", drvJavaClasses, filepath.Join(drvScriptDir, "jdbc", "Workload.java"))
		javaOut, javaErr = cmd.CombinedOutput()
	}()
	wg.Wait()
	if nodeErr != nil {
		t.Fatalf("npm ci in %s/node (needs the npm registry once): %v\n%s", drvScriptDir, nodeErr, nodeOut)
	}
	if javaErr != nil {
		t.Fatalf("javac Workload.java: %v\n%s", javaErr, javaOut)
	}
}

// drvJDBCJar is where Debian's libpostgresql-jdbc-java puts the driver.
const drvJDBCJar = "/usr/share/java/postgresql.jar"

// drvRunScript runs a driver program and decodes its JSON report from
// stdout; stderr goes to the test log on failure.
// drvScriptEnv is cleanPGEnv with libpq's connect timeout as long as the
// proxy's client_login_timeout here: in session mode a client connection
// waits at login until one of the pool's drvPoolSize server connections
// frees, i.e. until an earlier worker finished its whole workload.
func drvScriptEnv() []string {
	env := cleanPGEnv()
	for i, kv := range env {
		if strings.HasPrefix(kv, "PGCONNECT_TIMEOUT=") {
			env[i] = "PGCONNECT_TIMEOUT=" + strconv.Itoa(int(drvTimeout/time.Second))
		}
	}
	return env
}

func drvRunScript(t *testing.T, ctx context.Context, cmd *exec.Cmd) drvReport {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.Env = drvScriptEnv()
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", cmd.Args[0], err, stdout.String(), stderr.String())
	}
	rep, err := drvDecode(stdout.Bytes())
	if err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", cmd.Args[0], err, stdout.String(), stderr.String())
	}
	return rep
}

// drvDecode reads {"workers":[{"w":..,"pids":[..],"key":value,...}],"extra":{...}};
// values are compared as their JSON text with strings unquoted.
func drvDecode(out []byte) (drvReport, error) {
	var raw struct {
		Workers []map[string]json.RawMessage `json:"workers"`
		Extra   map[string]json.RawMessage   `json:"extra"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return drvReport{}, fmt.Errorf("decode report: %w", err)
	}
	str := func(m json.RawMessage) string {
		var s string
		if json.Unmarshal(m, &s) == nil {
			return s
		}
		return string(m)
	}
	rep := drvReport{PerConnPids: true, Extra: map[string]string{}}
	for _, m := range raw.Workers {
		r := drvResult{Vals: map[string]string{}}
		if err := json.Unmarshal(m["w"], &r.W); err != nil {
			return rep, fmt.Errorf("worker number: %w", err)
		}
		if err := json.Unmarshal(m["pids"], &r.Pids); err != nil {
			return rep, fmt.Errorf("worker %d pids: %w", r.W, err)
		}
		for k, v := range m {
			if k != "w" && k != "pids" {
				r.Vals[k] = str(v)
			}
		}
		rep.Workers = append(rep.Workers, r)
	}
	for k, v := range raw.Extra {
		rep.Extra[k] = str(v)
	}
	return rep, nil
}

// drvPoolMax is how many client connections a script's own pool may open:
// more than pgsluice's pool in transaction mode; in session mode no more
// than it, since each open client connection holds a backend.
func drvPoolMax(mode string) int {
	if mode == "session" {
		return drvPoolSize
	}
	return drvWorkers
}

func drvRunNode(t *testing.T, ctx context.Context, env drvEnv) drvReport {
	cmd := exec.CommandContext(ctx, "node", filepath.Join(drvScriptDir, "node", "script.js"),
		env.dsn, env.prefix, strconv.Itoa(drvWorkers), strconv.Itoa(drvPoolMax(env.mode)))
	return drvRunScript(t, ctx, cmd)
}

func drvRunPsycopg2(t *testing.T, ctx context.Context, env drvEnv) drvReport {
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", filepath.Join(drvScriptDir, "psycopg2", "workload.py"),
		env.dsn, env.prefix, strconv.Itoa(drvWorkers))
	return drvRunScript(t, ctx, cmd)
}

func drvRunJDBC(t *testing.T, ctx context.Context, env drvEnv) drvReport {
	url := "jdbc:postgresql://" + hostPort(t, env.dsn) + "/" + local.AppDatabase + "?sslmode=disable&prepareThreshold=1"
	cmd := exec.CommandContext(ctx, "java", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
		"-cp", drvJavaClasses+string(os.PathListSeparator)+drvJDBCJar, "Workload",
		url, local.AppUser, local.AppPassword, env.prefix, strconv.Itoa(drvWorkers))
	return drvRunScript(t, ctx, cmd)
}

// drvRunPsql runs drvWorkers psql processes at once, each executing
// testdata/drivers/psql/workload.sql with its worker number, and parses
// the key=value lines the script prints.
func drvRunPsql(t *testing.T, ctx context.Context, env drvEnv) drvReport {
	tmpl, err := os.ReadFile(filepath.Join(drvScriptDir, "psql", "workload.sql"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	rep := drvReport{PerConnPids: true}
	var wg sync.WaitGroup
	for w := range drvWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir := t.TempDir()
			data := filepath.Join(dir, "copy.tsv")
			var b strings.Builder
			for i := 1; i <= 50; i++ {
				fmt.Fprintf(&b, "%d\t%d\tp%d\n", i, w, i)
			}
			script := filepath.Join(dir, "workload.sql")
			text := strings.NewReplacer("@PREFIX@", env.prefix, "@COPYFILE@", data).Replace(string(tmpl))
			if err := errors.Join(os.WriteFile(data, []byte(b.String()), 0o644), os.WriteFile(script, []byte(text), 0o644)); err != nil {
				t.Error(err)
				return
			}
			cmd := exec.CommandContext(ctx, cluster.Bin("psql"), "-X", "-q", "-A", "-t",
				"-v", "ON_ERROR_STOP=0", "-v", "ON_ERROR_ROLLBACK=off", "-v", "w="+strconv.Itoa(w),
				"-d", env.dsn, "-f", script)
			cmd.Env = drvScriptEnv()
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Errorf("psql worker %d: %v\n%s%s", w, err, stdout.String(), stderr.String())
				return
			}
			r, err := drvParsePsql(w, stdout.String())
			if err != nil {
				t.Errorf("psql worker %d: %v\nstdout:\n%s", w, err, stdout.String())
				return
			}
			// Exactly the three errors the script provokes, in order.
			var errs []string
			for _, line := range strings.Split(stderr.String(), "\n") {
				if i := strings.Index(line, "ERROR:  "); i >= 0 {
					errs = append(errs, line[i+len("ERROR:  "):])
				} else if strings.TrimSpace(line) != "" && !strings.HasPrefix(line, "DETAIL:  Key (id)=") {
					t.Errorf("psql worker %d: unexpected stderr line %q", w, line)
				}
			}
			wantErrs := []string{"division by zero", "duplicate key value", "current transaction is aborted"}
			if len(errs) != len(wantErrs) {
				t.Errorf("psql worker %d: stderr has errors %q, want %q", w, errs, wantErrs)
			} else {
				for i := range errs {
					if !strings.HasPrefix(errs[i], wantErrs[i]) {
						t.Errorf("psql worker %d: error %d is %q, want %q...", w, i, errs[i], wantErrs[i])
					}
				}
			}
			mu.Lock()
			rep.Workers = append(rep.Workers, r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return rep
}

// drvParsePsql reads the psql script's output: key=value lines, pid=N
// lines, row=N lines (FETCHed cursor rows), fetched=N lines (ROW_COUNT
// after each FETCH) and frow=N lines (read with FETCH_COUNT).
func drvParsePsql(w int, out string) (drvResult, error) {
	r := drvResult{W: w, Vals: map[string]string{}}
	var rows, sum, fetches, frows int
	for _, line := range strings.Split(out, "\n") {
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return r, fmt.Errorf("unexpected output line %q", line)
		}
		switch k {
		case "pid", "row", "fetched", "frow":
			n, err := strconv.Atoi(v)
			if err != nil {
				return r, fmt.Errorf("line %q: %w", line, err)
			}
			switch k {
			case "pid":
				r.Pids = append(r.Pids, n)
			case "row":
				rows++
				sum += n
			case "fetched":
				if n > 0 {
					fetches++
				}
			case "frow":
				frows++
			}
		default:
			if _, dup := r.Vals[k]; dup {
				return r, fmt.Errorf("key %s printed twice", k)
			}
			r.Vals[k] = v
		}
	}
	r.Vals["cursor_rows"] = strconv.Itoa(rows)
	r.Vals["cursor_sum"] = strconv.Itoa(sum)
	r.Vals["cursor_fetches"] = strconv.Itoa(fetches)
	r.Vals["fetchcount_rows"] = strconv.Itoa(frows)
	return r, nil
}
