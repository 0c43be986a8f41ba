package proxy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsluice/pgsluice/config"
)

// expectIdleFatal waits up to 10s for the proxy to close an idle raw
// connection with a FATAL of SQLSTATE code.
func expectIdleFatal(t *testing.T, r *rawConn, code string) {
	t.Helper()
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		m, err := r.fe.Receive()
		if err != nil {
			t.Fatalf("want a FATAL %s, got the read error %v", code, err)
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			if e.Severity != "FATAL" || e.Code != code {
				t.Fatalf("got %s %s %q, want FATAL %s", e.Severity, e.Code, e.Message, code)
			}
			return
		}
	}
}

// wantIdleClosed checks pgsluice_clients_idle_closed_total{in}.
func wantIdleClosed(t *testing.T, base, in string, want float64) {
	t.Helper()
	name := `pgsluice_clients_idle_closed_total{in="` + in + `"}`
	if n := metricSum(scrape(t, base), name); n != want {
		t.Errorf("%s = %v, want %v", name, n, want)
	}
}

// pool.client_idle_timeout closes a client that sends nothing outside a
// transaction; a client that keeps talking, one waiting for a long
// statement, one inside a transaction and one waiting for notifications
// after LISTEN are left alone.
func TestClientIdleTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, srv := startProxy(t, cluster, func(tc *TargetConfig) {
		tc.Tweak = func(cfg *config.Config) { cfg.Pool.ClientIdleTimeout = 800 * time.Millisecond }
	})
	base := serveAdmin(t, srv)
	idle := rawConnect(t, ctx, dsn)
	idle.roundTrip(&pgproto3.Query{String: "SELECT 1"})
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	wg.Add(4)
	go func() { // LISTENs, silent for 2.5 s, then gets a notification
		defer wg.Done()
		c := connect(t, ctx, dsn)
		_, err := c.Exec(ctx, "LISTEN idle_ch")
		if err == nil {
			time.Sleep(2500 * time.Millisecond)
			asApp(t, "NOTIFY idle_ch, 'still here'")
			wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
			var n *pgconn.Notification
			n, err = c.WaitForNotification(wctx)
			wcancel()
			if err == nil && n.Payload != "still here" {
				err = fmt.Errorf("notification %+v", n)
			}
		}
		if err != nil {
			errs <- fmt.Errorf("listener: %w", err)
		}
	}()
	go func() { // talks every 200 ms for 2.5 s
		defer wg.Done()
		c := connect(t, ctx, dsn)
		for time.Since(start) < 2500*time.Millisecond {
			if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
				errs <- err
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	go func() { // waits 2.5 s for its statement
		defer wg.Done()
		c := connect(t, ctx, dsn)
		if _, err := c.Exec(ctx, "SELECT pg_sleep(2.5)"); err != nil {
			errs <- err
		}
	}()
	go func() { // idle inside a transaction: idle_transaction_timeout is off
		defer wg.Done()
		c := connect(t, ctx, dsn)
		tx, err := c.Begin(ctx)
		if err == nil {
			time.Sleep(2500 * time.Millisecond)
			if _, err = tx.Exec(ctx, "SELECT 1"); err == nil {
				err = tx.Commit(ctx)
			}
		}
		if err != nil {
			errs <- err
		}
	}()
	expectIdleFatal(t, idle, "57P05")
	if d := time.Since(start); d < 700*time.Millisecond {
		t.Errorf("closed after %v, before the 800ms timeout", d)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a client that was not idle failed: %v", err)
	}
	wantIdleClosed(t, base, "session", 1)
}

// pool.idle_transaction_timeout closes a client idle inside a transaction:
// its transaction is rolled back and its server connection (the pool's
// only one) goes to the client waiting for it. Clients idle outside a
// transaction are left alone.
func TestIdleTransactionTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS idle_tx; CREATE TABLE idle_tx(v int)")
	dsn, srv := startProxy(t, cluster, func(tc *TargetConfig) {
		tc.PoolSize = 1
		tc.AcquireTimeout = 20 * time.Second
		tc.Tweak = func(cfg *config.Config) { cfg.Pool.IdleTransactionTimeout = 800 * time.Millisecond }
	})
	base := serveAdmin(t, srv)
	outside := connect(t, ctx, dsn)
	if _, err := outside.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	inTx := rawConnect(t, ctx, dsn)
	inTx.roundTrip(&pgproto3.Query{String: "BEGIN; INSERT INTO idle_tx VALUES (1)"})
	start := time.Now()
	waited := make(chan error, 1)
	go func() { // needs the one server connection the transaction holds
		c, err := pgconn.Connect(ctx, dsn)
		if err == nil {
			_, err = c.Exec(ctx, "SELECT 1").ReadAll()
			c.Close(ctx)
		}
		waited <- err
	}()
	expectIdleFatal(t, inTx, "25P03")
	if d := time.Since(start); d < 700*time.Millisecond {
		t.Errorf("closed after %v, before the 800ms timeout", d)
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("the waiting client: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting client did not get the server connection")
	}
	var n int
	if err := cluster.QueryRow(ctx, cluster.Primary, "SELECT count(*) FROM idle_tx", nil, &n); err != nil || n != 0 {
		t.Fatalf("rows after the timeout: %d (err %v), want 0: rolled back", n, err)
	}
	time.Sleep(time.Second) // outside a transaction for longer than the timeout
	if _, err := outside.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("a client idle outside a transaction was closed: %v", err)
	}
	wantIdleClosed(t, base, "transaction", 1)
}

// A client waiting for a server connection is not idle, however long the
// pool makes it wait.
func TestClientIdleTimeoutSparesWaiters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, _ := startProxy(t, cluster, func(tc *TargetConfig) {
		tc.PoolSize = 1
		tc.AcquireTimeout = 20 * time.Second
		tc.Tweak = func(cfg *config.Config) { cfg.Pool.ClientIdleTimeout = 500 * time.Millisecond }
	})
	holder, waiter := connect(t, ctx, dsn), connect(t, ctx, dsn)
	held := make(chan error, 1)
	go func() { _, err := holder.Exec(ctx, "SELECT pg_sleep(2.5)"); held <- err }()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if _, err := waiter.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("a client waiting %v for the pool was closed: %v", time.Since(start).Round(time.Millisecond), err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("the waiter got the connection after %v: the holder's statement did not hold it, the test proves nothing", d)
	}
	if _, err := waiter.Exec(ctx, "SELECT 2"); err != nil {
		t.Fatalf("the client that waited for the pool was closed after its answer: %v", err)
	}
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}

// Over TLS the session waits in a TLS read instead of the raw poller; the
// janitor's wake-up reaches it there too.
func TestClientIdleTimeoutTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, _ := startProxy(t, cluster, func(tc *TargetConfig) {
		tc.TLS = true
		tc.Tweak = func(cfg *config.Config) { cfg.Pool.ClientIdleTimeout = 500 * time.Millisecond }
	})
	idle := rawConnect(t, ctx, withParams(t, dsn, "sslmode", "require"))
	if _, ok := idle.c.(*tls.Conn); !ok {
		t.Fatalf("the connection is a %T, not TLS: the test proves nothing", idle.c)
	}
	idle.roundTrip(&pgproto3.Query{String: "SELECT 1"})
	expectIdleFatal(t, idle, "57P05")
}
