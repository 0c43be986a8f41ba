package proxy_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/deploy/local"
)

// pool.max_db_connections caps the server connections to one database
// across its users' pools: a user that finds the database at its cap waits
// for another user's connection to be released (which is then closed, not
// pooled, and its slot handed over), evicts an idle one if there is one,
// and fails with 53300 naming the setting when nothing frees up within
// pool.acquire_timeout. PostgreSQL never sees more than the cap.
func TestMaxDBConnections(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, _ := startProxy(t, cluster, withObs(false, func(cfg *config.Config) {
		cfg.Pool.Size = 5
		cfg.Pool.MaxDBConnections = 2
		cfg.Pool.AcquireTimeout = time.Second
	}))
	md5dsn := dsnFor(t, dsn, "md5u", "md5pass", "app")
	// PostgreSQL's own count of server sessions of app and md5u on
	// database app, checked against the cap at every step.
	atMostTwo := sessionsAtMost(t, ctx, "datname = 'app' AND usename IN ('app', 'md5u')", 2)
	begin := func(c *pgx.Conn) pgx.Tx { return beginTx(t, ctx, c) }
	// md5u's login leaves one server connection idle in its pool; app's
	// second transaction evicts it.
	m := connect(t, ctx, md5dsn)
	a1, a2 := connect(t, ctx, dsn), connect(t, ctx, dsn)
	tx1, tx2 := begin(a1), begin(a2)
	atMostTwo("app holds two transactions")

	// md5u waits; app's commit releases a connection, which is closed and
	// its slot handed to md5u.
	one := func(c *pgx.Conn) error { return queryOne(ctx, c) }
	waitsUntil(t, "md5u's query at the cap", func() error { return one(m) }, func() {
		atMostTwo("md5u waits")
		if err := tx1.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	})
	atMostTwo("md5u ran")

	// Now app has one connection lent (tx2) and md5u one idle: a new app
	// transaction evicts md5u's idle connection.
	tx3 := begin(a1)
	atMostTwo("app evicted md5u's idle connection")

	// Both slots lent: md5u fails after pool.acquire_timeout with 53300.
	start := time.Now()
	err := one(m)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "53300" || !strings.Contains(pe.Message, "pool.max_db_connections (2)") {
		t.Fatalf("at the cap with nothing released: %v, want 53300 naming pool.max_db_connections", err)
	}
	if d := time.Since(start); d < 900*time.Millisecond || d > 5*time.Second {
		t.Errorf("gave up after %v, want about pool.acquire_timeout (1s)", d)
	}
	tx2.Commit(ctx)
	tx3.Commit(ctx)
	if err := one(m); err != nil {
		t.Fatalf("after app's commits: %v", err)
	}
	atMostTwo("end")
}

// pool.max_user_connections caps one user's server connections across
// databases: app's third transaction, on a database where its pool could
// still grow, waits for one of the other two to end, and gives up with
// 53300 naming the setting when none does.
func TestMaxUserConnections(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, _ := startProxy(t, cluster, withObs(false, func(cfg *config.Config) {
		cfg.Pool.Size = 5
		cfg.Pool.MaxUserConnections = 2
		cfg.Pool.AcquireTimeout = time.Second
	}))
	other := dsnFor(t, dsn, local.AppUser, local.AppPassword, "postgres")
	atMostTwo := sessionsAtMost(t, ctx, "usename = 'app' AND application_name <> 'pgsluice_monitor'", 2)
	begin := func(c *pgx.Conn) pgx.Tx { return beginTx(t, ctx, c) }
	a, b, c := connect(t, ctx, dsn), connect(t, ctx, other), connect(t, ctx, dsn)
	txA, txB := begin(a), begin(b)
	atMostTwo("one transaction on each database")
	one := func(c *pgx.Conn) error { return queryOne(ctx, c) }
	// The release on postgres is closed, not pooled, and its slot goes to
	// app's waiting pool.
	waitsUntil(t, "a third transaction at the user's cap", func() error { return one(c) }, func() {
		atMostTwo("waiting")
		if err := txB.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	})
	atMostTwo("ran")
	txB = begin(b) // takes the slot back (evicting app's idle connection)
	atMostTwo("postgres again")
	err := one(c)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "53300" || !strings.Contains(pe.Message, `user "app" has its pool.max_user_connections (2)`) {
		t.Fatalf("at the user's cap: %v, want 53300 naming pool.max_user_connections", err)
	}
	txA.Commit(ctx)
	txB.Commit(ctx)
	if err := one(c); err != nil {
		t.Fatal(err)
	}
}

// sessionsAtMost returns a check that PostgreSQL's pg_stat_activity shows
// at most max sessions matching where.
func sessionsAtMost(t *testing.T, ctx context.Context, where string, max int) func(step string) {
	su := connect(t, ctx, cluster.Primary.SuperuserDSN("postgres"))
	return func(step string) {
		t.Helper()
		var n int
		if err := su.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE "+where).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > max {
			t.Fatalf("%s: %d server sessions (%s), cap %d", step, n, where, max)
		}
	}
}

// beginTx opens a transaction on c that holds a server connection.
func beginTx(t *testing.T, ctx context.Context, c *pgx.Conn) pgx.Tx {
	t.Helper()
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	return tx
}
