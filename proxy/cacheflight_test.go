package proxy_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/deploy/local"
	"github.com/pgsluice/pgsluice/proxy"
)

// query sends one simple Query and returns every backend message up to
// ReadyForQuery, encoded; unlike roundTrip it may run off the test
// goroutine.
func (r *rawConn) query(sql string) ([][]byte, error) {
	r.fe.Send(&pgproto3.Query{String: sql})
	if err := r.fe.Flush(); err != nil {
		return nil, err
	}
	r.c.SetReadDeadline(time.Now().Add(60 * time.Second))
	var out [][]byte
	for {
		m, err := r.fe.Receive()
		if err != nil {
			return out, fmt.Errorf("receive after %d messages: %w", len(out), err)
		}
		if _, ok := m.(*pgproto3.ParameterStatus); ok {
			continue
		}
		b, err := m.Encode(nil)
		if err != nil {
			return out, err
		}
		out = append(out, b)
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			return out, nil
		}
	}
}

// flightSetup creates table tbl, a cache rule for it with a long
// flight_wait (so that only a leader that never lets go could make a
// waiter wait for it), and returns the proxy, the statement and the bytes
// PostgreSQL answers it with directly.
func flightSetup(t *testing.T, ctx context.Context, tbl string) (dsn string, srv *proxy.Server, sql string, want [][]byte) {
	t.Helper()
	asApp(t, fmt.Sprintf("DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s(v int); INSERT INTO %[1]s SELECT g %% 7 FROM generate_series(1, 5000) g", tbl))
	dsn, srv = startProxy(t, cluster, func(tc *TargetConfig) {
		withCache(config.CacheMemory, config.CacheRule{Tables: []string{tbl}, TTL: time.Hour})(tc)
		cacheTweak := tc.Tweak
		tc.Tweak = func(cfg *config.Config) {
			cacheTweak(cfg)
			cfg.Cache.FlightWait = 10 * time.Minute
		}
	})
	sql = fmt.Sprintf("SELECT v, count(*), sum(v) FROM %s GROUP BY v ORDER BY v", tbl)
	want, err := rawConnect(t, ctx, cluster.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase)).query(sql)
	if err != nil {
		t.Fatal(err)
	}
	return dsn, srv, sql, want
}

// lockTable takes an ACCESS EXCLUSIVE lock on tbl in a transaction of its
// own; the returned function releases it.
func lockTable(t *testing.T, ctx context.Context, tbl string) (unlock func()) {
	t.Helper()
	lk, err := pgx.Connect(ctx, cluster.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lk.Close(context.Background()) })
	if _, err := lk.Exec(ctx, "BEGIN; LOCK TABLE "+tbl+" IN ACCESS EXCLUSIVE MODE", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	unlock = func() {
		once.Do(func() {
			if _, err := lk.Exec(ctx, "COMMIT", pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(unlock)
	return unlock
}

// waitFor polls cond every 20ms until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// lockWaiters counts the server backends running sql that wait for a lock.
func lockWaiters(t *testing.T, ctx context.Context, sql string) int {
	t.Helper()
	var n int
	if err := cluster.QueryRow(ctx, cluster.Primary, "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND wait_event_type = 'Lock'", []any{sql}, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// executions is how many times PostgreSQL ran sql in database app since
// the last pg_stat_statements_reset().
func executions(t *testing.T, ctx context.Context, sql string) int64 {
	t.Helper()
	var n int64
	err := cluster.QueryRow(ctx, cluster.Primary, `SELECT coalesce(sum(s.calls), 0)::int8 FROM pg_stat_statements s
		JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = 'app' AND s.query = $1`, []any{sql}, &n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func resetStatements(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := cluster.Exec(ctx, cluster.Primary, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()"); err != nil {
		t.Fatalf("pg_stat_statements (the test cluster preloads it): %v", err)
	}
}

// flightClients opens n raw connections to dsn.
func flightClients(t *testing.T, ctx context.Context, dsn string, n int) []*rawConn {
	t.Helper()
	cs := make([]*rawConn, n)
	for i := range cs {
		cs[i] = rawConnect(t, ctx, dsn)
	}
	return cs
}

// runAll runs sql on every client concurrently and returns each reply.
func runAll(cs []*rawConn, sql string) (replies [][][]byte, errs []error, wait func()) {
	replies, errs = make([][][]byte, len(cs)), make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies[i], errs[i] = c.query(sql)
		}()
	}
	return replies, errs, wg.Wait
}

// Twenty concurrent misses of one ruled query on a cold cache run it once
// in PostgreSQL (pg_stat_statements calls = 1); the 19 others wait for
// that fill and are answered from it, byte for byte what PostgreSQL sends.
// The first client's statement is held on a table lock until the 19 others
// are all waiting in the proxy, so the outcome does not depend on timing.
func TestCacheSingleFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const tbl, n = "cache_sf", 20
	dsn, srv, sql, want := flightSetup(t, ctx, tbl)
	cs := flightClients(t, ctx, dsn, n)
	resetStatements(t, ctx)
	unlock := lockTable(t, ctx, tbl)

	lead, leadErr, leadWait := runAll(cs[:1], sql)
	waitFor(t, ctx, "the leader's statement to wait for the lock", func() bool { return lockWaiters(t, ctx, sql) == 1 })
	rest, restErr, restWait := runAll(cs[1:], sql)
	waitFor(t, ctx, "19 sessions waiting for the fill", func() bool { return srv.CacheStats().FlightWaiting == n-1 })
	if got := lockWaiters(t, ctx, sql); got != 1 {
		t.Errorf("%d server backends run the statement while the waiters wait, want 1", got)
	}
	unlock()
	leadWait()
	restWait()

	replies, errs := append(lead, rest...), append(leadErr, restErr...)
	for i := range replies {
		if errs[i] != nil {
			t.Fatalf("client %d: %v", i, errs[i])
		}
		sameBytes(t, fmt.Sprintf("client %d", i), replies[i], want)
	}
	if got := executions(t, ctx, sql); got != 1 {
		t.Errorf("PostgreSQL ran the statement %d times for %d concurrent misses, want 1", got, n)
	}
	st := srv.CacheStats()
	t.Logf("stats %+v", st)
	if st.FlightLeaders != 1 || st.FlightShared != n-1 || st.FlightFallthrough != 0 || st.FlightTimeouts != 0 || st.FlightWaiting != 0 {
		t.Errorf("single flight: leaders=%d shared=%d fallthrough=%d timeouts=%d waiting=%d, want 1, %d, 0, 0, 0",
			st.FlightLeaders, st.FlightShared, st.FlightFallthrough, st.FlightTimeouts, st.FlightWaiting, n-1)
	}
	if st.Stored != 1 || st.Misses != 1 || st.Hits != n-1 {
		t.Errorf("stored=%d misses=%d hits=%d, want 1, 1, %d", st.Stored, st.Misses, st.Hits, n-1)
	}
}

// A leader that stores nothing releases its waiters at once, whatever
// ended it: its statement failed (cancelled by pg_cancel_backend) or its
// client went away while the statement ran. The waiters then run the
// statement themselves and get the right rows; none waits for
// cache.flight_wait (10 minutes here, beyond the test's deadline).
func TestCacheSingleFlightLeaderFails(t *testing.T) {
	for _, how := range []string{"error", "disconnect"} {
		t.Run(how, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			const n = 6
			tbl := "cache_sf_" + how
			dsn, srv, sql, want := flightSetup(t, ctx, tbl)
			cs := flightClients(t, ctx, dsn, n)
			unlock := lockTable(t, ctx, tbl)

			lead, leadErr, leadWait := runAll(cs[:1], sql)
			waitFor(t, ctx, "the leader's statement to wait for the lock", func() bool { return lockWaiters(t, ctx, sql) == 1 })
			rest, restErr, restWait := runAll(cs[1:], sql)
			waitFor(t, ctx, "the sessions waiting for the fill", func() bool { return srv.CacheStats().FlightWaiting == n-1 })

			switch how {
			case "error":
				if err := cluster.Exec(ctx, cluster.Primary, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = $1 AND wait_event_type = 'Lock'", sql); err != nil {
					t.Fatal(err)
				}
			case "disconnect":
				cs[0].c.Close()
			}
			// Released without the lock: each waiter now runs the
			// statement itself and waits for the lock in PostgreSQL.
			waitFor(t, ctx, "the waiters to be released", func() bool { return srv.CacheStats().FlightWaiting == 0 })
			// (A disconnected leader's server backend may still wait too:
			// PostgreSQL notices a closed client only when it writes.)
			waitFor(t, ctx, "the waiters' statements to reach the lock", func() bool { return lockWaiters(t, ctx, sql) >= n-1 })
			unlock()
			leadWait()
			restWait()

			switch how {
			case "error":
				if leadErr[0] != nil {
					t.Fatal(leadErr[0])
				}
				if e := lead[0]; len(e) == 0 || e[0][0] != 'E' {
					t.Fatalf("leader got %s, want the cancellation error", describe(lead[0]))
				}
			case "disconnect":
				if leadErr[0] == nil {
					t.Fatal("the leader's closed connection still got a reply")
				}
			}
			for i := range rest {
				if restErr[i] != nil {
					t.Fatalf("waiter %d: %v", i, restErr[i])
				}
				sameBytes(t, fmt.Sprintf("waiter %d", i), rest[i], want)
			}
			st := srv.CacheStats()
			t.Logf("stats %+v", st)
			if st.FlightLeaders != 1 || st.FlightFallthrough != n-1 || st.FlightShared != 0 || st.FlightTimeouts != 0 {
				t.Errorf("single flight: leaders=%d fallthrough=%d shared=%d timeouts=%d, want 1, %d, 0, 0",
					st.FlightLeaders, st.FlightFallthrough, st.FlightShared, st.FlightTimeouts, n-1)
			}
			// The cache works after: the next read is a hit.
			hits := st.Hits
			if _, err := cs[1].query(sql); err != nil {
				t.Fatal(err)
			}
			if got := srv.CacheStats().Hits; got != hits+1 {
				t.Errorf("the read after the waiters' fills was not a hit (hits %d -> %d)", hits, got)
			}
		})
	}
}
