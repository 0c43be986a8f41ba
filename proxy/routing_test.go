package proxy_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsluice/pgsluice/config"
)

func withReplica(c *TargetConfig) {
	c.Tweak = func(cfg *config.Config) {
		cfg.Replicas = []config.Node{{Host: cluster.Replica.Host, Port: cluster.Replica.Port, Weight: 1}}
		cfg.Routing.HealthInterval = 100 * time.Millisecond
		cfg.Routing.Monitor.Database = "app"
	}
}

// waitReplicaReads waits until reads outside a transaction land on the replica.
func waitReplicaReads(t *testing.T, ctx context.Context, c *pgx.Conn) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var rec bool
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
			t.Fatal(err)
		}
		if rec {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("reads never reached the replica")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// replicaClient runs setup (if any) on the primary, starts a proxy with the
// replica and returns a client whose reads have reached the replica.
func replicaClient(t *testing.T, setup string) (context.Context, *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	if setup != "" {
		asApp(t, setup)
	}
	c := connect(t, ctx, startTarget(t, cluster, withReplica))
	waitReplicaReads(t, ctx, c)
	return ctx, c
}

// Reads outside a transaction go to the replica, everything inside BEGIN and
// every write to the primary.
func TestRoutingReadsToReplica(t *testing.T) {
	ctx, c := replicaClient(t, "DROP TABLE IF EXISTS route_t; CREATE TABLE route_t(id int primary key, v int); CREATE SEQUENCE IF NOT EXISTS route_seq")
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rec bool
	if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec {
		t.Fatalf("inside BEGIN: in_recovery=%v err=%v, want the primary", rec, err)
	}
	tx.Rollback(ctx)
	for i, sql := range []string{
		"INSERT INTO route_t VALUES (1, 1)",
		"UPDATE route_t SET v = v + 1 WHERE id = 1",
		"SELECT nextval('route_seq')",
		"SELECT * FROM route_t WHERE id = 1 FOR UPDATE",
		"WITH x AS (UPDATE route_t SET v = v + 1 RETURNING v) SELECT v FROM x",
		"DO $$BEGIN PERFORM 1; END$$",
		"VACUUM route_t",
		"ANALYZE route_t",
		"CREATE INDEX IF NOT EXISTS route_t_v ON route_t(v)",
		"DELETE FROM route_t WHERE id = 99",
	} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Errorf("%d %q through the proxy: %v (a write sent to the replica fails with 25006)", i, sql, err)
		}
	}
}

// A read that a route=primary hint sends to the primary is not a write:
// the client's next reads still go to the replica (read-your-writes starts
// only after a transaction that may have written).
func TestRoutingHintedReadKeepsReplicas(t *testing.T) {
	ctx, c := replicaClient(t, "")
	const ro = "SELECT current_setting('transaction_read_only')" // on only on the replica
	for i, tc := range []struct {
		sql     string
		replica bool
	}{
		{"/* pgsluice: route=primary */ " + ro, false},
		{ro, true},
		{"/* pgsluice: route=primary */ " + ro, false},
		{ro, true},
	} {
		var v string
		if err := c.QueryRow(ctx, tc.sql).Scan(&v); err != nil {
			t.Fatalf("%d %q: %v", i, tc.sql, err)
		}
		if got := v == "on"; got != tc.replica {
			t.Errorf("%d %q: on the replica: %v, want %v", i, tc.sql, got, tc.replica)
		}
	}
}

// A hint counts in any comment, not only before the first token:
// ActiveRecord's annotate appends one, SQLAlchemy's prefix_with puts it
// after SELECT. A route=replica hint on a write is refused wherever it is.
func TestRoutingHintsAnywhere(t *testing.T) {
	ctx, c := replicaClient(t, "DROP TABLE IF EXISTS route_h; CREATE TABLE route_h(id int)")
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		for _, tc := range []struct {
			sql     string
			replica bool
		}{
			{"SELECT current_setting('transaction_read_only') /* pgsluice: route=primary */", false},
			{"SELECT current_setting('transaction_read_only') -- pgsluice: route=primary", false},
			{"SELECT /* pgsluice: route=primary */ current_setting('transaction_read_only')", false},
			{"SELECT current_setting('transaction_read_only') /* application:shop,controller:orders */", true},
			{"SELECT current_setting('transaction_read_only') WHERE '/* pgsluice: route=primary */' <> ''", true},
		} {
			// transaction_read_only is on only on the replica; unlike
			// pg_is_in_recovery() (volatile: a call on the primary counts
			// as a possible write for read-your-writes), current_setting
			// is stable.
			var ro string
			if err := c.QueryRow(ctx, tc.sql, mode).Scan(&ro); err != nil {
				t.Fatalf("%v %q: %v", mode, tc.sql, err)
			}
			if rec := ro == "on"; rec != tc.replica {
				t.Errorf("%v %q: ran on the replica: %v, want %v", mode, tc.sql, rec, tc.replica)
			}
		}
		_, err := c.Exec(ctx, "DELETE FROM route_h /* pgsluice: route=replica */", mode)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "25006" {
			t.Errorf("%v: trailing route=replica on a write: %v, want 25006", mode, err)
		}
	}
}

// With replay paused, a client that writes and reads at once always sees its
// write (read-your-writes), while other users keep reading from the replica.
func TestReadYourWritesReplayPaused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS ryw_t; CREATE TABLE ryw_t(id int primary key)")
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	dsn := startTarget(t, cluster, withReplica)
	writer := connect(t, ctx, dsn)
	other := connect(t, ctx, dsnFor(t, dsn, "md5u", "md5pass", "app"))
	waitReplicaReads(t, ctx, writer)
	if err := cluster.PauseReplay(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.ResumeReplay() })
	for i := 0; i < 200; i++ {
		if _, err := writer.Exec(ctx, "INSERT INTO ryw_t VALUES ($1)", i); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := writer.QueryRow(ctx, "SELECT count(*) FROM ryw_t WHERE id = $1", i).Scan(&n); err != nil || n != 1 {
			t.Fatalf("write %d not visible to the same client right after commit: n=%d err=%v", i, n, err)
		}
	}
	var rec bool
	if err := other.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || !rec {
		t.Fatalf("another user's read left the replica: in_recovery=%v err=%v", rec, err)
	}
}
