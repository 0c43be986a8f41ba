package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/deploy/local"
	"github.com/pgsluice/pgsluice/proxy"
)

// serverBackends counts the server connections user has open on the
// primary (the node monitor's excluded).
func serverBackends(t *testing.T, ctx context.Context, user string) int {
	t.Helper()
	var n int
	if err := cluster.QueryRow(ctx, cluster.Primary, `SELECT count(*) FROM pg_stat_activity
		WHERE usename = $1 AND backend_type = 'client backend' AND application_name <> 'pgsluice_monitor'`, []any{user}, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitBackends waits until cond holds for user's server connection count.
func waitBackends(t *testing.T, ctx context.Context, user, what string, cond func(int) bool) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n := serverBackends(t, ctx, user)
		if cond(n) {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d server connections of %s after 20s", what, n, user)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runningConfig starts a proxy as startProxy does and returns it with the
// configuration it runs, for tests that reload a changed copy.
func runningConfig(t *testing.T, tweak func(*TargetConfig)) (string, *proxy.Server, config.Config) {
	t.Helper()
	var cfg config.Config
	dsn, srv := startProxy(t, cluster, func(tc *TargetConfig) {
		if tweak != nil {
			tweak(tc)
		}
		inner := tc.Tweak
		tc.Tweak = func(c *config.Config) {
			if inner != nil {
				inner(c)
			}
			cfg = *c
		}
	})
	return dsn, srv, cfg
}

// A bigger pool.size takes effect at once while 100 clients stay connected
// and keep querying: waiting clients open the new connections, nobody sees
// an error. Shrinking closes the extras once they are idle.
func TestReloadPoolGrowsUnderLoad(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	waitBackends(t, ctx, local.AppUser, "before the test", func(n int) bool { return n == 0 })
	dsn, srv, cfg := runningConfig(t, func(tc *TargetConfig) { tc.PoolSize = 4; tc.AcquireTimeout = 30 * time.Second })

	const clients = 100
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		conns[i] = connect(t, ctx, dsn)
	}
	var queries, failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var one int
				if err := c.QueryRow(ctx, "SELECT 1 FROM pg_sleep(0.02)").Scan(&one); err != nil || one != 1 {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprint(err))
					return
				}
				queries.Add(1)
			}
		}()
	}
	time.Sleep(time.Second)
	if n := serverBackends(t, ctx, local.AppUser); n > 4 {
		t.Fatalf("%d server connections with pool.size 4", n)
	}
	before := queries.Load()

	grown := cfg
	grown.Pool.Size = 16
	if err := srv.Reload(grown); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	waitBackends(t, ctx, local.AppUser, "after growing pool.size to 16", func(n int) bool { return n > 4 })
	time.Sleep(time.Second)
	if n := serverBackends(t, ctx, local.AppUser); n > 16 {
		t.Fatalf("%d server connections with pool.size 16", n)
	}
	if queries.Load() == before {
		t.Fatal("no query completed after the reload")
	}

	// Shrinking under the same load: the extras close as they come back
	// (not replaced by new ones for the waiting clients).
	shrunk := grown
	shrunk.Pool.Size = 2
	if err := srv.Reload(shrunk); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	waitBackends(t, ctx, local.AppUser, "after shrinking pool.size to 2 under load", func(n int) bool { return n <= 2 })
	time.Sleep(500 * time.Millisecond)
	if n := serverBackends(t, ctx, local.AppUser); n > 2 {
		t.Fatalf("%d server connections after shrinking to 2", n)
	}
	close(stop)
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d clients failed during the reloads; first error: %v", f, firstErr.Load())
	}
	for i, c := range conns {
		if err := c.Ping(ctx); err != nil {
			t.Fatalf("client %d lost after the reloads: %v", i, err)
		}
	}
}

// A clients' pool shrunk while its connections are busy closes them as
// they come back rather than cutting a transaction.
func TestReloadShrinkLetsBusyFinish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	waitBackends(t, ctx, local.AppUser, "before the test", func(n int) bool { return n == 0 })
	dsn, srv, cfg := runningConfig(t, func(tc *TargetConfig) { tc.PoolSize = 3 })
	var txs []pgx.Tx
	for i := 0; i < 3; i++ {
		tx, err := connect(t, ctx, dsn).Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		txs = append(txs, tx)
	}
	cfg.Pool.Size = 1
	if err := srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if n := serverBackends(t, ctx, local.AppUser); n != 3 {
		t.Fatalf("busy connections closed by the reload: %d left, want 3", n)
	}
	for i, tx := range txs {
		var n int
		if err := tx.QueryRow(ctx, "SELECT 7").Scan(&n); err != nil || n != 7 {
			t.Fatalf("transaction %d after the reload: %v", i, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
	waitBackends(t, ctx, local.AppUser, "after the transactions ended", func(n int) bool { return n == 1 })
}

// An invalid configuration is rejected naming the key and changes nothing;
// settings that cannot change live are reported and keep their values.
func TestReloadRejectsInvalidAndReportsFixed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, srv, cfg := runningConfig(t, func(tc *TargetConfig) { tc.PoolSize = 3 })

	bad := cfg
	bad.Pool.Size = 0
	bad.Pool.MaxClientConn = 1
	err := srv.Reload(bad)
	var ve *config.ValidationError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "pool.size") {
		t.Fatalf("Reload(pool.size 0) = %v, want a ValidationError naming pool.size", err)
	}
	if got := srv.RunningConfig(); got.Pool.Size != 3 || got.Pool.MaxClientConn != cfg.Pool.MaxClientConn {
		t.Fatalf("running config changed by a rejected reload: size %d max_client_conn %d", got.Pool.Size, got.Pool.MaxClientConn)
	}
	// max_client_conn 1 was not applied: two clients get in.
	a, b := connect(t, ctx, dsn), connect(t, ctx, dsn)
	for _, c := range []*pgx.Conn{a, b} {
		if err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}

	moved := cfg
	moved.Listen = "127.0.0.1:1"
	moved.TLS.CertFile = ""
	moved.Pool.MaxClientConn = 2
	err = srv.Reload(moved)
	var nr *proxy.NotReloadedError
	if !errors.As(err, &nr) || !slices.Equal(nr.Keys, []string{"listen"}) || !proxy.IsNotReloaded(err) {
		t.Fatalf("Reload(new listen) = %v, want NotReloadedError{listen}", err)
	}
	if got := srv.RunningConfig(); got.Listen != cfg.Listen || got.Pool.MaxClientConn != 2 {
		t.Fatalf("running listen %q (want %q kept), max_client_conn %d (want 2 applied)", got.Listen, cfg.Listen, got.Pool.MaxClientConn)
	}
	// max_client_conn 2 applies at once: a third client is refused.
	if c, err := pgx.Connect(ctx, dsn); err == nil {
		c.Close(ctx)
		t.Fatal("third client admitted with max_client_conn 2")
	} else if sqlState(err) != "53300" {
		t.Fatalf("third client: %v, want 53300", err)
	}
}

// Users added by a reload can log in, removed ones cannot (their connected
// clients carry on), and a changed password is used for new logins and for
// the pool's new server connections.
func TestReloadUsers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, srv, cfg := runningConfig(t, func(tc *TargetConfig) {
		tc.PoolSize = 4
		tc.Tweak = func(c *config.Config) { c.Auth.Users = c.Auth.Users[:1] } // app only
	})
	md5DSN := dsnFor(t, dsn, "md5u", "md5pass", "app")
	if _, err := pgx.Connect(ctx, md5DSN); sqlState(err) != "28P01" {
		t.Fatalf("md5u before it is configured: %v, want 28P01", err)
	}
	app := connect(t, ctx, dsn)

	next := cfg
	next.Auth.Users = []config.User{{Name: "md5u", Password: "md5pass"}}
	if err := srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	m := connect(t, ctx, md5DSN)
	if err := m.Ping(ctx); err != nil {
		t.Fatalf("md5u after it was added: %v", err)
	}
	if _, err := pgx.Connect(ctx, dsn); sqlState(err) != "28P01" {
		t.Fatalf("app after it was removed: %v, want 28P01", err)
	}
	var n int
	if err := app.QueryRow(ctx, "SELECT 5").Scan(&n); err != nil || n != 5 {
		t.Fatalf("app's connected client after app was removed: %v", err)
	}

	// Change md5u's password on the server and in the proxy.
	su, err := pgx.Connect(ctx, cluster.Primary.SuperuserDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(context.Background())
	if _, err := su.Exec(ctx, "SET password_encryption = 'md5'; ALTER ROLE md5u PASSWORD 'newpass'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		su, err := pgx.Connect(context.Background(), cluster.Primary.SuperuserDSN("postgres"))
		if err != nil {
			t.Error(err)
			return
		}
		defer su.Close(context.Background())
		if _, err := su.Exec(context.Background(), "SET password_encryption = 'md5'; ALTER ROLE md5u PASSWORD 'md5pass'"); err != nil {
			t.Error(err)
		}
	})
	next.Auth.Users = []config.User{{Name: "md5u", Password: "newpass"}}
	if err := srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, md5DSN); sqlState(err) != "28P01" {
		t.Fatalf("md5u with the old password: %v, want 28P01", err)
	}
	m2 := connect(t, ctx, dsnFor(t, dsn, "md5u", "newpass", "app"))
	// Hold the pool's server connection in a transaction so the next
	// query needs a new one, logged in with the new password.
	tx, err := m.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if err := m2.QueryRow(ctx, "SELECT 6").Scan(&n); err != nil || n != 6 {
		t.Fatalf("new server connection after the password change: %v", err)
	}
	tx.Rollback(ctx)
}

// A replica added by a reload starts taking reads once its monitor has
// seen it streaming; removed, it takes no more.
func TestReloadReplicaAdded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, srv, cfg := runningConfig(t, func(tc *TargetConfig) {
		tc.Tweak = func(c *config.Config) {
			c.Routing.HealthInterval = 100 * time.Millisecond
			c.Routing.Monitor.Database = "app"
		}
	})
	c := connect(t, ctx, dsn)
	for i := 0; i < 5; i++ {
		var rec bool
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec {
			t.Fatalf("read with no replica configured: in_recovery=%v err=%v", rec, err)
		}
	}
	next := cfg
	next.Replicas = []config.Node{{Host: cluster.Replica.Host, Port: cluster.Replica.Port, Weight: 1}}
	if err := srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	waitReplicaReads(t, ctx, c)
	if err := srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		var rec bool
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec {
			t.Fatalf("read after the replica was removed: in_recovery=%v err=%v", rec, err)
		}
	}
}

// ChangedKeys names leaf keys, lists as one key, and nothing for equal
// configurations.
func TestChangedKeys(t *testing.T) {
	a := config.Default()
	if got := proxy.ChangedKeys(a, a); len(got) != 0 {
		t.Fatalf("equal configs: %v", got)
	}
	b := a
	b.Pool.Size = 99
	b.Auth.Users = []config.User{{Name: "x", Password: "y"}}
	b.Routing.Monitor.Password = "z"
	b.Replicas = []config.Node{{Host: "h", Port: 1}}
	want := []string{"pool.size", "replicas", "auth.users", "routing.monitor.password"}
	if got := proxy.ChangedKeys(a, b); !slices.Equal(got, want) {
		t.Fatalf("ChangedKeys = %v, want %v", got, want)
	}
}

// Two servers on one address (SO_REUSEPORT): the newer takes every new
// connection; Handover on the older drains, keeps its connected clients
// until they leave, then returns. No client sees an error.
func TestHandoverInProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, _, cfg := runningConfig(t, nil)
	lnA, err := proxy.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lnA.Addr().String()
	regs := map[string]*prometheus.Registry{}
	newServer := func(name string, ln net.Listener) *proxy.Server {
		log := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("server", name)
		regs[name] = prometheus.NewRegistry()
		srv, err := proxy.New(cfg, proxy.Options{Registerer: regs[name], Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		return srv
	}
	// clients reads a server's pgsluice_client_connections.
	clients := func(name string) int {
		mfs, err := regs[name].Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "pgsluice_client_connections" {
				return int(mf.GetMetric()[0].GetGauge().GetValue())
			}
		}
		t.Fatal("no pgsluice_client_connections")
		return 0
	}
	a := newServer("A", lnA)
	_, port, _ := net.SplitHostPort(addr)
	dsn := fmt.Sprintf("postgres://%s:%s@127.0.0.1:%s/%s?sslmode=disable", local.AppUser, local.AppPassword, port, local.AppDatabase)
	onA := connect(t, ctx, dsn)
	var pidA uint32 = onA.PgConn().PID()

	lnB, err := proxy.Listen(addr)
	if err != nil {
		t.Fatalf("second listener on %s: %v (SO_REUSEPORT)", addr, err)
	}
	b := newServer("B", lnB)
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		b.Shutdown(sctx)
	})
	// Every new connection goes to B now; A's client still works.
	var onB []*pgx.Conn
	for i := 0; i < 20; i++ {
		c := connect(t, ctx, dsn)
		if err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		onB = append(onB, c)
	}
	if na, nb := clients("A"), clients("B"); na != 1 || nb != 20 {
		t.Fatalf("clients on A %d (want 1), on B %d (want 20): new connections must go to the newest listener", na, nb)
	}
	handedOver := make(chan error, 1)
	go func() { handedOver <- a.Handover(ctx) }()
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-handedOver:
		t.Fatalf("Handover returned while a client was connected: %v", err)
	default:
	}
	var n int
	if err := onA.QueryRow(ctx, "SELECT 8").Scan(&n); err != nil || n != 8 || onA.PgConn().PID() != pidA {
		t.Fatalf("A's client during the handover: %v", err)
	}
	// New clients during A's drain get B.
	if err := connect(t, ctx, dsn).Ping(ctx); err != nil {
		t.Fatal(err)
	}
	onA.Close(ctx)
	select {
	case err := <-handedOver:
		if err != nil {
			t.Fatalf("Handover: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Handover did not return after its last client left")
	}
	if err := connect(t, ctx, dsn).Ping(ctx); err != nil {
		t.Fatalf("after the handover: %v", err)
	}
}
