package proxy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsluice/pgsluice/config"
)

// onReplica runs sql (whose last column is pg_is_in_recovery()) and
// reports where it ran.
func onReplica(t *testing.T, ctx context.Context, c *pgx.Conn, sql string, mode pgx.QueryExecMode) bool {
	t.Helper()
	rows, err := c.Query(ctx, sql, mode)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	defer rows.Close()
	var rec bool
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		rec = vals[len(vals)-1].(bool)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return rec
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Function volatility comes from the primary's pg_proc: a user-defined
// VOLATILE function sends its SELECT to the primary, STABLE and IMMUTABLE
// ones to the replica, and CREATE OR REPLACE through the proxy changing the
// volatility changes the routing once the catalog is reloaded.
func TestFunctionVolatilityFromCatalog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	asApp(t, `CREATE OR REPLACE FUNCTION cat_vol() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
CREATE OR REPLACE FUNCTION cat_stable() RETURNS int LANGUAGE sql STABLE AS 'SELECT 2';
CREATE OR REPLACE FUNCTION cat_imm(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x + 1';`)
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	dsn := startTarget(t, cluster, withReplicaReg(prometheus.NewRegistry(), func(cfg *config.Config) {
		cfg.Routing.CatalogRefresh = 0 // startup and DDL only
		cfg.Routing.ReadYourWrites = "off"
	}))
	c := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, c)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		eventually(t, 10*time.Second, "SELECT cat_stable() never reached the replica (catalog not loaded?)", func() bool {
			return onReplica(t, ctx, c, "SELECT cat_stable(), pg_is_in_recovery()", mode)
		})
		if !onReplica(t, ctx, c, "SELECT cat_imm(41), pg_is_in_recovery()", mode) {
			t.Errorf("%v: an IMMUTABLE user function went to the primary", mode)
		}
		if !onReplica(t, ctx, c, "SELECT public.cat_stable(), pg_is_in_recovery()", mode) {
			t.Errorf("%v: a schema-qualified STABLE user function went to the primary", mode)
		}
		if onReplica(t, ctx, c, "SELECT cat_vol(), pg_is_in_recovery()", mode) {
			t.Errorf("%v: a VOLATILE user function went to the replica", mode)
		}
	}
	// Through the proxy: the DDL triggers a reload (read_your_writes is
	// off, so c's own DDL does not hold its reads on the primary). c has
	// just sent the same text as its unnamed statement, whose decision a
	// session reuses for the same text (classifyParse): the new catalog
	// must still change it.
	eventually(t, 10*time.Second, "SELECT cat_stable() never returned to the replica after cat_vol()", func() bool {
		return onReplica(t, ctx, c, "SELECT cat_stable(), pg_is_in_recovery()", pgx.QueryExecModeExec)
	})
	if _, err := c.Exec(ctx, "CREATE OR REPLACE FUNCTION cat_stable() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 2'"); err != nil {
		t.Fatal(err)
	}
	// Once the new catalog is in use (cat_stable() on the primary while
	// cat_imm() still reads from the replica, so nothing else holds c's
	// reads on the primary), the unnamed statement's old decision must
	// not send the same text to the replica.
	eventually(t, 10*time.Second, "cat_stable() made VOLATILE through the proxy still goes to the replica", func() bool {
		return !onReplica(t, ctx, c, "SELECT cat_stable(), pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol) &&
			onReplica(t, ctx, c, "SELECT cat_imm(41), pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol)
	})
	if onReplica(t, ctx, c, "SELECT cat_stable(), pg_is_in_recovery()", pgx.QueryExecModeExec) {
		t.Error("the unnamed statement of a function made VOLATILE went to the replica (stale reused decision)")
	}
	if _, err := c.Exec(ctx, "CREATE OR REPLACE FUNCTION cat_stable() RETURNS int LANGUAGE sql STABLE AS 'SELECT 2'"); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		eventually(t, 10*time.Second, mode.String()+": cat_stable() made STABLE again never returns to the replica", func() bool {
			return onReplica(t, ctx, c, "SELECT cat_stable(), pg_is_in_recovery()", mode)
		})
	}
}

// routing.catalog_refresh reloads the catalog periodically, which catches
// DDL that did not go through the proxy.
func TestCatalogPeriodicRefresh(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, `CREATE OR REPLACE FUNCTION cat_periodic() RETURNS int LANGUAGE sql STABLE AS 'SELECT 3'`)
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	dsn := startTarget(t, cluster, withReplicaReg(prometheus.NewRegistry(), func(cfg *config.Config) {
		cfg.Routing.CatalogRefresh = 200 * time.Millisecond
	}))
	c := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, c)
	eventually(t, 10*time.Second, "STABLE cat_periodic() never reached the replica", func() bool {
		return onReplica(t, ctx, c, "SELECT cat_periodic(), pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol)
	})
	asApp(t, `CREATE OR REPLACE FUNCTION cat_periodic() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 3'`)
	eventually(t, 10*time.Second, "cat_periodic() made VOLATILE behind the proxy's back still goes to the replica", func() bool {
		return !onReplica(t, ctx, c, "SELECT cat_periodic(), pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol)
	})
}

// sneakyFunc creates table (n int) and an IMMUTABLE function fn() that
// returns 1, and waits for the replica to have them. The returned func
// redefines fn, behind the proxy's back, to insert into table: a proxy
// that loaded its catalog before still takes it for a read.
func sneakyFunc(t *testing.T, ctx context.Context, table, fn string) (nowWrites func()) {
	t.Helper()
	asApp(t, fmt.Sprintf(`DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s(n int);
CREATE OR REPLACE FUNCTION %[2]s() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1';`, table, fn))
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		asApp(t, fmt.Sprintf(`CREATE OR REPLACE FUNCTION %[2]s() RETURNS int LANGUAGE plpgsql VOLATILE AS $$
BEGIN INSERT INTO %[1]s VALUES (1); RETURN 1; END $$`, table, fn))
		if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// A statement taken for a read that turns out to write (here: a function
// the proxy's catalog still believes IMMUTABLE, redefined behind its back
// to insert) gets 25006 on the replica; outside a transaction the proxy
// swallows that and runs it on the primary, where it succeeds. Inside a
// transaction nothing is retried (it is on the primary anyway).
func TestReadOnlyErrorRetriedOnPrimary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nowWrites := sneakyFunc(t, ctx, "ro_log", "ro_sneaky")
	reg := prometheus.NewRegistry()
	dsn := startTarget(t, cluster, withReplicaReg(reg, func(cfg *config.Config) {
		cfg.Routing.CatalogRefresh = 0
		// The retried statement wrote: read-your-writes would (rightly)
		// keep the next reads on the primary.
		cfg.Routing.ReadYourWrites = "off"
	}))
	c := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, c)
	eventually(t, 10*time.Second, "IMMUTABLE ro_sneaky() never reached the replica", func() bool {
		return onReplica(t, ctx, c, "SELECT ro_sneaky(), pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol)
	})
	nowWrites()
	for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement} {
		_, _, r0 := routedCounts(t, reg)
		if onReplica(t, ctx, c, "SELECT ro_sneaky(), pg_is_in_recovery()", mode) {
			t.Errorf("%v: the writing function answered from the replica", mode)
		}
		if _, _, r1 := routedCounts(t, reg); r1 != r0+1 {
			t.Errorf("%v: retry counter went from %v to %v, want one retry (the replica answered 25006 first)", mode, r0, r1)
		}
		var n int
		if err := c.QueryRow(ctx, "/* pgsluice: route=primary */ SELECT count(*) FROM ro_log").Scan(&n); err != nil || n != i+1 {
			t.Errorf("%v: ro_log has %d rows (err %v), want %d: the retried write must run exactly once", mode, n, err, i+1)
		}
	}
}

// With routing.enabled=false the proxy skips classifying texts that cannot
// touch the session (routing.MayAffectSession); SET tracking, pins and
// prepared statements must work exactly as with routing on. The session
// tests run again with routing off, plus an advisory-lock pin check.
func TestSessionTrackingRoutingOff(t *testing.T) {
	routingOff = true
	defer func() { routingOff = false }()
	t.Run("SearchPathIsolation", TestSearchPathIsolation)
	t.Run("ListenNotify", TestListenNotify)
	t.Run("NamedPreparedStatements", TestNamedPreparedStatements)
	t.Run("StartupParametersFollowClient", TestStartupParametersFollowClient)
	t.Run("AdvisoryLockPins", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		dsn := startTarget(t, cluster, func(c *TargetConfig) { c.PoolSize = 3 })
		a := connect(t, ctx, dsn)
		var pid, again int
		if err := a.QueryRow(ctx, "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock(4242)) l").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		others := make([]*pgx.Conn, 3)
		for i := range others {
			others[i] = connect(t, ctx, dsn)
		}
		for i := 0; i < 20; i++ {
			for _, o := range others[:2] {
				if _, err := o.Exec(ctx, "SELECT 1"); err != nil {
					t.Fatal(err)
				}
			}
			if err := a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&again); err != nil {
				t.Fatal(err)
			}
			if again != pid {
				t.Fatalf("after pg_advisory_lock the session moved from backend %d to %d: not pinned", pid, again)
			}
		}
	})
}

// When the replay of a read that turned out to write cannot run (no
// connection to the primary within pool.acquire_timeout), the client gets
// the replica's 25006 after the answers to the batch's earlier statements,
// in order, and the session goes on.
func TestRefusedRetryKeepsEarlierAnswers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nowWrites := sneakyFunc(t, ctx, "ro_log2", "ro_refused")
	dsn := startTarget(t, cluster, withReplicaReg(prometheus.NewRegistry(), func(cfg *config.Config) {
		cfg.Routing.CatalogRefresh = 0
		cfg.Routing.ReadYourWrites = "off"
		cfg.Pool.Size = 1 // per node: one client in a transaction holds the primary's
		cfg.Pool.AcquireTimeout = 300 * time.Millisecond
	}))
	b := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, b)
	nowWrites()
	a := connect(t, ctx, dsn)
	if _, err := a.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "INSERT INTO ro_log2 VALUES (0)"); err != nil {
		t.Fatal(err)
	}
	// One Sync cycle on the replica: a read, then the sneaky writer (25006
	// there; its replay needs the primary, which a holds).
	batch := &pgconn.Batch{}
	batch.ExecParams("SELECT 41 + 1, pg_is_in_recovery()", nil, nil, nil, nil)
	batch.ExecParams("SELECT ro_refused()", nil, nil, nil, nil)
	res, err := b.PgConn().ExecBatch(ctx, batch).ReadAll()
	if len(res) != 2 {
		t.Fatalf("batch: %d results (%v), want 2", len(res), err)
	}
	if res[0].Err != nil || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "42" {
		t.Fatalf("first statement: rows %q, err %v: its answers must come before the second's error", res[0].Rows, res[0].Err)
	}
	if string(res[0].Rows[0][1]) != "t" {
		t.Errorf("first statement ran with in_recovery=%s, want the replica", res[0].Rows[0][1])
	}
	if res[1].Err == nil || sqlState(res[1].Err) != "25006" {
		t.Errorf("second statement: %v, want the replica's 25006 (no primary connection for the replay)", res[1].Err)
	}
	if _, err := a.Exec(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	var one int
	if err := b.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("after the refused retry: %v %v", one, err)
	}
}
