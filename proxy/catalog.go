package proxy

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsluice/pgsluice/routing"
)

// Function volatility from the database.
//
// The classifier decides whether a SELECT that calls a function may run on
// a replica from the function's volatility. It starts with PostgreSQL 15's
// built-in functions; watchCatalog replaces that with pg_proc as the
// primary has it (routing.LoadCatalogSQL, through the monitor login, in
// routing.monitor.database): at startup, after DDL that went through the
// proxy (requestCatalog) and every routing.catalog_refresh.

// catalogRetry is how soon a failed load is tried again.
const catalogRetry = 2 * time.Second

// refreshLoop runs load at once, then on every request, every interval
// (none if not positive), and catalogRetry after a load that failed, until
// stop is closed. The function catalog and the row-level-security sets
// refresh this way.
func refreshLoop(interval time.Duration, stop <-chan struct{}, req <-chan struct{}, load func() bool) {
	var tick <-chan time.Time
	if interval > 0 {
		tk := time.NewTicker(interval)
		defer tk.Stop()
		tick = tk.C
	}
	for {
		var retry <-chan time.Time
		if !load() {
			retry = time.After(catalogRetry)
		}
		select {
		case <-stop:
			return
		case <-tick:
		case <-req:
		case <-retry:
		}
	}
}

// watchCatalog loads the function catalog until close.
func (t *topology) watchCatalog(user, password string) {
	defer t.wg.Done()
	refreshLoop(t.conf().Routing.CatalogRefresh, t.stop, t.catalogReq, func() bool {
		err := t.loadCatalog(user, password)
		if err != nil {
			select {
			case <-t.stop:
			default:
				t.log.Warn("routing: loading function volatility from the primary failed; keeping the previous catalog", "err", err)
			}
		}
		return err == nil
	})
}

// loadCatalog reads pg_proc on the node that takes writes and hands the
// result to the classifier.
func (t *topology) loadCatalog(user, password string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		select {
		case <-t.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	conn, err := pgx.Connect(ctx, monitorDSN(t.conf(), t.writer().addr, user, password))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT name, volatility::text FROM ("+routing.LoadCatalogSQL+") c", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return err
	}
	cat := make(routing.StaticCatalog, 8192)
	var name, vol string
	_, err = pgx.ForEachRow(rows, []any{&name, &vol}, func() error {
		if len(vol) == 1 {
			cat.Add(name, vol[0])
		}
		return nil
	})
	if err != nil {
		return err
	}
	t.classifier.SetCatalog(cat)
	t.log.Debug("routing: function catalog loaded", "names", len(cat))
	return nil
}

// requestCatalog asks for a reload soon (coalesced).
func (t *topology) requestCatalog() {
	select {
	case t.catalogReq <- struct{}{}:
	default:
	}
}

// changesCatalog reports whether a statement may create, drop or change
// functions: DDL (CREATE/ALTER/DROP of anything, CREATE EXTENSION…),
// procedures and DO blocks (which may run DDL), multi-statement strings.
func changesCatalog(d *routing.Decision) bool {
	switch d.Reason {
	case routing.ReasonDDL:
		switch d.Command {
		case "truncate", "grant", "revoke", "comment", "refresh":
			return false
		}
		return true
	case routing.ReasonProcedure, routing.ReasonMultiStatement, routing.ReasonUtility:
		return true
	}
	return false
}
