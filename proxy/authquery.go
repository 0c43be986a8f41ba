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
// the primary's address changes (a reload). Nothing is cached: every login
// of such a user asks again, so an ALTER ROLE … PASSWORD applies to the
// next login.
type authQuerier struct {
	mu     sync.Mutex
	dsn    string
	pool   *pgxpool.Pool
	closed bool
}

// authQueryConns bounds the connections the lookups use on the primary.
const authQueryConns = 4

// lookup returns the secret the query returns for user, and whether it
// returned one (no row, a row of NULLs and a NULL or empty secret mean no
// such login). An
// error means the lookup itself failed (the primary is down, the query is
// wrong, its login is refused).
func (q *authQuerier) lookup(ctx context.Context, cfg *config.Config, addr, user string) (string, bool, error) {
	qc := cfg.Auth.Query
	u, pw := qc.User, string(qc.Password)
	if u == "" {
		u, pw = monitorLogin(cfg)
	}
	pool, err := q.poolFor(loginDSN(cfg, addr, u, pw, qc.Database, "pgsluice_auth_query"))
	if err != nil {
		return "", false, err
	}
	// A function returning a record gives one row of NULLs for no match.
	var name, secret *string
	err = pool.QueryRow(ctx, qc.SQL, user).Scan(&name, &secret)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", false, nil
	case err != nil:
		return "", false, err
	case secret == nil || *secret == "":
		return "", false, nil
	}
	return *secret, true, nil
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
