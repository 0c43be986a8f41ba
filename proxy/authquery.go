package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// authQuerier runs auth.query.sql on the primary to find the secret of a
// client user that auth.users does not list (PgBouncer's auth_query). It
// keeps a small pgx pool for the query's login, rebuilt when that login or
// the primary's address changes (a reload). Nothing is cached: a login of
// such a user asks again, so an ALTER ROLE … PASSWORD applies to the next
// login. Logins of the same user that arrive while a lookup of it is
// running share its answer (a storm of serverless clients of one role
// costs the primary one query at a time, not one per client).
type authQuerier struct {
	mu      sync.Mutex
	dsn     string
	pool    *pgxpool.Pool
	closed  bool
	flights map[string]*authLookup // by DSN and user
}

// authLookup is one auth.query lookup in flight; its results are set
// before done is closed.
type authLookup struct {
	done   chan struct{}
	secret string
	found  bool
	err    error
}

// authQueryConns bounds the connections the lookups use on the primary.
const authQueryConns = 4

// lookup returns the secret the query returns for user, and whether it
// returned one (no row, a row of NULLs and a NULL or empty secret mean no
// such login). An error means the lookup itself failed (the primary is
// down, the query is wrong, its login is refused) or ctx ended first.
// shared reports that another login's lookup, already running, answered.
func (q *authQuerier) lookup(ctx context.Context, cfg *config.Config, addr, user string) (secret string, found, shared bool, err error) {
	qc := cfg.Auth.Query
	u, pw := qc.User, string(qc.Password)
	if u == "" {
		u, pw = monitorLogin(cfg)
	}
	dsn := loginDSN(cfg, addr, u, pw, qc.Database, "pgsluice_auth_query")
	pool, err := q.poolFor(dsn)
	if err != nil {
		return "", false, false, err
	}
	key := dsn + "\x00" + user
	q.mu.Lock()
	f := q.flights[key]
	if f == nil {
		f = &authLookup{done: make(chan struct{})}
		if q.flights == nil {
			q.flights = map[string]*authLookup{}
		}
		q.flights[key] = f
		// Its own deadline, not this login's: later logins share it.
		go q.run(f, key, pool, qc.SQL, user, cfg.Pool.ClientLoginTimeout)
	} else {
		shared = true
	}
	q.mu.Unlock()
	select {
	case <-f.done:
		return f.secret, f.found, shared, f.err
	case <-ctx.Done():
		return "", false, shared, ctx.Err()
	}
}

// run runs one lookup for f and publishes its answer.
func (q *authQuerier) run(f *authLookup, key string, pool *pgxpool.Pool, sql, user string, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// A function returning a record gives one row of NULLs for no match.
	var name, secret *string
	err := pool.QueryRow(ctx, sql, user).Scan(&name, &secret)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		f.err = err
	case secret != nil && *secret != "":
		f.secret, f.found = *secret, true
	}
	q.mu.Lock()
	delete(q.flights, key)
	q.mu.Unlock()
	close(f.done)
}

func (q *authQuerier) poolFor(dsn string) (*pgxpool.Pool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, errors.New("pgsluice is shutting down")
	}
	if q.pool != nil && q.dsn == dsn {
		return q.pool, nil
	}
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = authQueryConns
	pc.MaxConnIdleTime = time.Minute
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, err
	}
	if q.pool != nil {
		go q.pool.Close() // waits for lookups in flight
	}
	q.pool, q.dsn = pool, dsn
	return pool, nil
}

func (q *authQuerier) close() {
	q.mu.Lock()
	p := q.pool
	q.pool, q.closed = nil, true
	q.mu.Unlock()
	if p != nil {
		p.Close()
	}
}

// authQueryFailed is what a client gets when its user could not be looked
// up: the login can be neither accepted nor refused.
func authQueryFailed(user string, err error) *pgerr.Error {
	return pgerr.Wrap(fmt.Errorf("%w: %w", pgerr.ErrBackendUnavailable, err), pgerr.ConnectionException,
		"pgsluice could not look up user %q with auth.query", user).AsFatal().WithDetail(err.Error())
}
