package proxy_test

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/deploy/local"
)

// withReplicaReg is withReplica with the proxy's metrics in reg.
func withReplicaReg(reg *prometheus.Registry, tweak func(*config.Config)) func(*TargetConfig) {
	return func(c *TargetConfig) {
		withReplica(c)
		base := c.Tweak
		c.Registry = reg
		c.PoolSize = 20
		c.Tweak = func(cfg *config.Config) {
			base(cfg)
			if tweak != nil {
				tweak(cfg)
			}
		}
	}
}

// routedCounts sums pgsluice_routing_decisions_total by target, and by
// reason "retry" separately.
func routedCounts(t *testing.T, reg *prometheus.Registry) (primary, replica, retries float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "pgsluice_routing_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			target, reason := label(m, "target"), label(m, "reason")
			v := m.GetCounter().GetValue()
			switch {
			case reason == "retry":
				retries += v
			case target == "primary":
				primary += v
			case target == "replica":
				replica += v
			}
		}
	}
	return primary, replica, retries
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// pgbenchInit (re)creates the pgbench tables on the primary once per test
// binary and waits for the replica to have them.
var pgbenchInitOnce sync.Once

func pgbenchInit(t *testing.T) {
	t.Helper()
	var initErr error
	pgbenchInitOnce.Do(func() {
		cmd := exec.Command(cluster.Bin("pgbench"), "-i", "-s", "1", "-q", cluster.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase))
		cmd.Env = cleanPGEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			initErr = fmt.Errorf("pgbench -i: %v\n%s", err, out)
		}
	})
	if initErr != nil {
		t.Fatal(initErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
}

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+)`)

// runPgbench runs pgbench -S against dsn and returns its output; it fails
// the test unless pgbench exits 0 with "number of failed transactions: 0"
// and at least one transaction processed.
func runPgbench(t *testing.T, ctx context.Context, dsn, mode string, clients int, seconds int) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, cluster.Bin("pgbench"), "-S", "-n", "-M", mode,
		"-c", strconv.Itoa(clients), "-j", "2", "-T", strconv.Itoa(seconds), dsn)
	cmd.Env = cleanPGEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench -S -M %s exited with %v\n%s", mode, err, out)
	}
	if f := failedRE.FindSubmatch(out); f == nil || string(f[1]) != "0" {
		t.Fatalf("want 'number of failed transactions: 0' in pgbench output:\n%s", out)
	}
	m := processedRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no processed count in pgbench output:\n%s", out)
	}
	if n, _ := strconv.Atoi(string(m[1])); n == 0 {
		t.Fatalf("pgbench processed no transaction:\n%s", out)
	}
	return string(out)
}

// pgbench -S through the proxy runs (almost) all its transactions on the
// replica, counted by the proxy's routing decisions and cross-checked
// with the replica's own transaction counter.
func TestPgbenchSelectOnReplica(t *testing.T) {
	pgbenchInit(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	reg := prometheus.NewRegistry()
	dsn := startTarget(t, cluster, withReplicaReg(reg, nil))
	waitReplicaReads(t, ctx, connect(t, ctx, dsn))
	xacts := func() int64 {
		var n int64
		if err := cluster.QueryRow(ctx, cluster.Replica, "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", []any{local.AppDatabase}, &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	p0, r0, _ := routedCounts(t, reg)
	x0 := xacts()
	for _, mode := range []string{"simple", "extended"} {
		out := runPgbench(t, ctx, dsn, mode, 50, 4)
		m := tpsRE.FindStringSubmatch(out)
		t.Logf("pgbench -S -M %s -c 50 via proxy: tps %v", mode, m)
	}
	p1, r1, _ := routedCounts(t, reg)
	primary, replica := p1-p0, r1-r0
	share := replica / (primary + replica)
	t.Logf("transactions routed: replica %.0f, primary %.0f (%.1f %% on the replica)", replica, primary, 100*share)
	if replica+primary < 1000 || share < 0.95 {
		t.Errorf("replica took %.1f %% of %.0f pgbench -S transactions, want >= 95 %%", 100*share, replica+primary)
	}
	// The replica's statistics are flushed by its backends at most once a
	// second while busy: wait for them to show the work.
	deadline := time.Now().Add(15 * time.Second)
	for {
		if d := xacts() - x0; float64(d) >= 0.9*replica {
			t.Logf("replica xact_commit grew by %d", d)
			break
		} else if time.Now().After(deadline) {
			t.Errorf("replica xact_commit grew by %d only, the proxy routed %.0f transactions there", d, replica)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Stopping the replica (fast and immediate shutdown) while pgbench -S runs
// through the proxy with 50 clients fails no transaction: reads in flight
// on the replica are retried on the primary, new ones go there directly.
// Started again, the replica is back in rotation within a few health
// intervals.
func TestReplicaKilledDuringPgbench(t *testing.T) {
	pgbenchInit(t)
	for _, tc := range []struct{ stop, mode string }{
		{"fast", "simple"},
		{"immediate", "extended"},
		{"immediate", "prepared"},
		{"fast", "prepared"},
	} {
		t.Run(tc.stop+"_"+tc.mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			reg := prometheus.NewRegistry()
			dsn := startTarget(t, cluster, withReplicaReg(reg, nil))
			probe := connect(t, ctx, dsn)
			waitReplicaReads(t, ctx, probe)
			t.Cleanup(func() {
				if err := cluster.StartNode(cluster.Replica); err != nil {
					t.Errorf("restart replica: %v", err)
				}
			})
			stopped := make(chan error, 1)
			go func() {
				time.Sleep(3 * time.Second)
				stopped <- cluster.StopNode(cluster.Replica, tc.stop)
			}()
			out := runPgbench(t, ctx, dsn, tc.mode, 50, 8)
			if err := <-stopped; err != nil {
				t.Fatalf("stop replica (%s): %v", tc.stop, err)
			}
			_, _, retries := routedCounts(t, reg)
			t.Logf("pgbench -S -M %s, replica stopped (%s) after 3s: %d retried cycles\n%s", tc.mode, tc.stop, int(retries), lastLines(out, 4))
			// With the replica down, reads go to the primary.
			var rec bool
			if err := probe.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec {
				t.Fatalf("with the replica down: in_recovery=%v err=%v, want an answer from the primary", rec, err)
			}
			if err := cluster.StartNode(cluster.Replica); err != nil {
				t.Fatal(err)
			}
			// Back in rotation within a few health intervals (100ms here).
			// The bound is generous: a replica just recovered from an
			// immediate stop is slow to answer its first health checks
			// on a loaded machine.
			start := time.Now()
			for {
				if err := probe.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
					t.Fatal(err)
				}
				if rec {
					t.Logf("replica back in rotation %v after it accepted connections", time.Since(start).Round(time.Millisecond))
					break
				}
				if time.Since(start) > 30*time.Second {
					t.Fatal("replica not back in rotation 30s after it restarted")
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// A read whose replica backend is terminated mid-query (FATAL 57P01) is
// answered by the primary instead, with no error, in the simple and the
// extended protocol (named and unnamed statements): before the statement
// has produced a row, and after its first row, which the server sends
// together with its FATAL error (as a server stopped in immediate mode
// sends its first rows with its shutdown warning).
func TestReadRetriedWhenReplicaBackendDies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	reg := prometheus.NewRegistry()
	dsn := startTarget(t, cluster, withReplicaReg(reg, nil))
	// Slow reads (pg_sleep is volatile: it would go to the primary). The
	// second one produces its first row at once and its second slowly.
	shapes := []struct {
		name, sql string
		rows      int
	}{
		{"no_row_yet", "SELECT count(*), pg_is_in_recovery(), '%s'::text FROM generate_series(1, 10000000)", 1},
		{"first_row_sent", "SELECT (SELECT count(*) FROM generate_series(1, CASE WHEN x = 2 THEN 10000000 ELSE 1 END)), pg_is_in_recovery(), '%s'::text FROM generate_series(1, 2) x", 2},
	}
	retried := 0
	for _, shape := range shapes {
		for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement} {
			t.Run(shape.name+"/"+mode.String(), func(t *testing.T) {
				retried++
				marker := fmt.Sprintf("retry_marker_%s_%d", shape.name, i)
				readRetriedWhenBackendDies(t, ctx, reg, dsn, mode, fmt.Sprintf(shape.sql, marker), marker, shape.rows, retried)
			})
		}
	}
}

// readRetriedWhenBackendDies runs sql (which contains marker) through a
// new client, terminates its replica backend while it runs, and checks
// that the client gets wantRows rows from the primary and the retry
// counter reaches wantRetries.
func readRetriedWhenBackendDies(t *testing.T, ctx context.Context, reg *prometheus.Registry, dsn string, mode pgx.QueryExecMode, sql, marker string, wantRows, wantRetries int) {
	c := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, c)
	done := make(chan error, 1)
	var rec bool
	go func() {
		rows, err := c.Query(ctx, sql, mode)
		if err != nil {
			done <- err
			return
		}
		n := 0
		for rows.Next() {
			var r bool
			var m string
			if err := rows.Scan(nil, &r, &m); err != nil {
				done <- err
				return
			}
			rec = rec || r
			n++
		}
		if err := rows.Err(); err != nil {
			done <- err
			return
		}
		if n != wantRows {
			done <- fmt.Errorf("%d rows, want %d", n, wantRows)
			return
		}
		done <- nil
	}()
	killed := 0
	for deadline := time.Now().Add(5 * time.Second); killed == 0 && time.Now().Before(deadline); {
		rows, err := cluster.Query(ctx, cluster.Replica,
			"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%'||$1||'%' AND pid <> pg_backend_pid() AND state = 'active'", marker)
		if err != nil {
			t.Fatal(err)
		}
		killed = len(rows)
		time.Sleep(50 * time.Millisecond)
	}
	if killed == 0 {
		t.Fatal("the query never ran on the replica")
	}
	if err := <-done; err != nil {
		t.Fatalf("read whose replica backend was terminated: %v (want a transparent retry)", err)
	}
	if rec {
		t.Error("the retried read answered in_recovery=true: it was not retried on the primary")
	}
	if _, _, retries := routedCounts(t, reg); retries < float64(wantRetries) {
		t.Errorf("retry counter %v, want >= %d", retries, wantRetries)
	}
	// The session goes on.
	var one int
	if err := c.QueryRow(ctx, "SELECT 1", mode).Scan(&one); err != nil || one != 1 {
		t.Fatalf("after the retry: %v %v", one, err)
	}
}

// Every category of write lands on the primary: the proxy routes none of
// them to the replica (where it would fail with 25006 and, outside a
// transaction, be retried on the primary, hiding the misroute), and none
// is retried.
func TestWriteCategoriesOnPrimary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	asApp(t, `DROP TABLE IF EXISTS wcat_t, wcat_into, wcat_ctas CASCADE;
DROP MATERIALIZED VIEW IF EXISTS wcat_mv;
CREATE TABLE wcat_t(id int primary key, v int);
INSERT INTO wcat_t VALUES (1, 1), (2, 2);
CREATE MATERIALIZED VIEW wcat_mv AS SELECT * FROM wcat_t;
CREATE SEQUENCE IF NOT EXISTS wcat_seq;
CREATE OR REPLACE PROCEDURE wcat_proc() LANGUAGE sql AS $$ UPDATE wcat_t SET v = v + 1 WHERE id = 2 $$;
CREATE OR REPLACE FUNCTION wcat_volatile() RETURNS int LANGUAGE sql VOLATILE AS $$ UPDATE wcat_t SET v = v + 1 WHERE id = 1 RETURNING v $$;`)
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	dsn := startTarget(t, cluster, withReplicaReg(reg, nil))
	c := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, c)
	check := func(t *testing.T, what string, run func() error) {
		t.Helper()
		_, r0, x0 := routedCounts(t, reg)
		if err := run(); err != nil {
			t.Errorf("%s through the proxy: %v", what, err)
			return
		}
		if _, r1, x1 := routedCounts(t, reg); r1 != r0 || x1 != x0 {
			t.Errorf("%s: routed to the replica %v times, retried %v times; want the primary", what, r1-r0, x1-x0)
		}
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		for _, sql := range []string{
			"INSERT INTO wcat_t VALUES (100, 1) ON CONFLICT (id) DO UPDATE SET v = wcat_t.v + 1",
			"UPDATE wcat_t SET v = v + 1 WHERE id = 1",
			"DELETE FROM wcat_t WHERE id = 99",
			"MERGE INTO wcat_t t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = t.v + 1",
			"CREATE TABLE IF NOT EXISTS wcat_ddl(id int)",
			"ALTER TABLE wcat_ddl ADD COLUMN IF NOT EXISTS x int",
			"DROP TABLE IF EXISTS wcat_ddl",
			"GRANT SELECT ON wcat_t TO PUBLIC",
			"REVOKE SELECT ON wcat_t FROM PUBLIC",
			"VACUUM wcat_t",
			"ANALYZE wcat_t",
			"VACUUM (ANALYZE) wcat_t",
			"CLUSTER wcat_t USING wcat_t_pkey",
			"REINDEX TABLE wcat_t",
			"REFRESH MATERIALIZED VIEW wcat_mv",
			"CALL wcat_proc()",
			"DO $$BEGIN PERFORM 1; END$$",
			"NOTIFY wcat_channel",
			"SELECT * INTO TEMP wcat_into_tmp FROM wcat_t; DROP TABLE wcat_into_tmp",
			"CREATE TABLE wcat_ctas AS SELECT * FROM wcat_t; DROP TABLE wcat_ctas",
			"WITH x AS (UPDATE wcat_t SET v = v + 1 WHERE id = 1 RETURNING v) SELECT v FROM x",
			"SELECT * FROM wcat_t WHERE id = 1 FOR UPDATE",
			"SELECT * FROM wcat_t WHERE id = 1 FOR SHARE",
			"SELECT * FROM wcat_t WHERE id = 1 FOR NO KEY UPDATE",
			"SELECT * FROM wcat_t WHERE id = 1 FOR KEY SHARE",
			"EXPLAIN ANALYZE INSERT INTO wcat_t VALUES (101, 1) ON CONFLICT DO NOTHING",
			"SELECT 1; UPDATE wcat_t SET v = v + 1 WHERE id = 1",
			"SELECT nextval('wcat_seq')",
			"SELECT setval('wcat_seq', 10)",
			"SELECT txid_current()",
			"SELECT wcat_volatile()",
			"SELECT pg_advisory_xact_lock(42)",
		} {
			if mode != pgx.QueryExecModeSimpleProtocol && strings.Contains(sql, "; ") {
				continue // multi-statement strings are simple-protocol only
			}
			check(t, mode.String()+": "+sql, func() error {
				_, err := c.Exec(ctx, sql, mode)
				return err
			})
		}
	}
	check(t, "LOCK in a transaction", func() error {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "LOCK TABLE wcat_t IN SHARE MODE"); err != nil {
			tx.Rollback(ctx)
			return err
		}
		return tx.Commit(ctx)
	})
	check(t, "COPY FROM", func() error {
		_, err := c.CopyFrom(ctx, pgx.Identifier{"wcat_t"}, []string{"id", "v"}, pgx.CopyFromRows([][]any{{200, 1}, {201, 2}}))
		return err
	})
	// Session-pinning writes, on connections of their own.
	for _, sql := range []string{"LISTEN wcat_channel", "SELECT pg_advisory_lock(43)"} {
		p := connect(t, ctx, dsn)
		check(t, sql, func() error {
			_, err := p.Exec(ctx, sql)
			return err
		})
		var rec bool
		if err := p.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec {
			t.Errorf("after %q the session is pinned to the primary: in_recovery=%v err=%v", sql, rec, err)
		}
	}
}

// routing.ryw_wait: with replay paused, a client's read after its write
// waits for the replica to catch up when replay resumes within the wait,
// and falls back to the primary when it does not.
func TestRYWWait(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS rywwait_t; CREATE TABLE rywwait_t(id int primary key)")
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	const wait = 4 * time.Second
	dsn := startTarget(t, cluster, withReplicaReg(prometheus.NewRegistry(), func(cfg *config.Config) {
		cfg.Routing.RYWWait = wait
	}))
	c := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, c)
	t.Cleanup(func() { cluster.ResumeReplay() })
	read := func(id int) (n int, rec bool, took time.Duration) {
		start := time.Now()
		if err := c.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM rywwait_t WHERE id = $1", id).Scan(&n, &rec); err != nil {
			t.Fatal(err)
		}
		return n, rec, time.Since(start)
	}

	// Replay resumes 1s into the wait: the read is served by the replica.
	if err := cluster.PauseReplay(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "INSERT INTO rywwait_t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(time.Second)
		cluster.ResumeReplay()
	}()
	n, rec, took := read(1)
	if n != 1 || !rec {
		t.Errorf("replay resumed within ryw_wait: count=%d in_recovery=%v, want the row, read on the replica", n, rec)
	}
	if took < 800*time.Millisecond || took > wait {
		t.Errorf("the read took %v; want it to wait ~1s for the replica, less than ryw_wait %v", took, wait)
	}

	// Replay stays paused: after ryw_wait the primary answers.
	if err := cluster.PauseReplay(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "INSERT INTO rywwait_t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	n, rec, took = read(2)
	if n != 1 || rec {
		t.Errorf("replay paused beyond ryw_wait: count=%d in_recovery=%v, want the row from the primary", n, rec)
	}
	if took < wait-100*time.Millisecond {
		t.Errorf("the read fell back to the primary after %v, want about ryw_wait (%v)", took, wait)
	}
	if err := cluster.ResumeReplay(); err != nil {
		t.Fatal(err)
	}
}

// A read on a replica that raises a NOTICE (a STABLE function may) reaches
// the client whole and in order, in the simple and the extended protocol:
// the notice ends the chance of a retry, and the answers held back for one
// (ParseComplete, BindComplete, RowDescription, rows) go out before it.
func TestReplicaReadWithNotice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, `CREATE OR REPLACE FUNCTION notice_stable(x int) RETURNS int LANGUAGE plpgsql STABLE AS $$
BEGIN RAISE NOTICE 'notice_stable %', x; RETURN x * 2; END $$`)
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	dsn := startTarget(t, cluster, withReplicaReg(prometheus.NewRegistry(), nil))
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var notices []string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		notices = append(notices, n.Message)
		mu.Unlock()
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	waitReplicaReads(t, ctx, c)
	// The proxy loads the function catalog in the background at start.
	eventually(t, 10*time.Second, "STABLE notice_stable() never reached the replica (catalog not loaded?)", func() bool {
		return onReplica(t, ctx, c, "SELECT notice_stable(0), pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol)
	})
	for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement} {
		mu.Lock()
		notices = nil
		mu.Unlock()
		rows, err := c.Query(ctx, "SELECT notice_stable(x), pg_is_in_recovery() FROM generate_series(1, 3) x", mode)
		if err != nil {
			t.Fatalf("%v: %v", mode, err)
		}
		var got []int
		var rec bool
		for rows.Next() {
			var v int
			if err := rows.Scan(&v, &rec); err != nil {
				t.Fatalf("%v: scan: %v", mode, err)
			}
			got = append(got, v)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%v: %v", mode, err)
		}
		if len(got) != 3 || got[0] != 2 || got[2] != 6 {
			t.Errorf("%v: rows %v, want [2 4 6]", mode, got)
		}
		if !rec {
			t.Errorf("%v: a STABLE function's read did not run on the replica", mode)
		}
		mu.Lock()
		n := len(notices)
		mu.Unlock()
		if n != 3 {
			t.Errorf("%v: %d notices, want 3", mode, n)
		}
		// The session goes on.
		var one int
		if err := c.QueryRow(ctx, "SELECT $1::int", i).Scan(&one); err != nil || one != i {
			t.Fatalf("%v: after the notices: %v %v", mode, one, err)
		}
	}
}
