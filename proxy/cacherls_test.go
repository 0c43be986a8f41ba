package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsluice/pgsluice/config"
)

// counterValue returns the value of the counter name{label=value} in reg
// (0 when absent).
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// Tables with row-level security, and views reading one, are never cached
// even under a rule: each role gets its own rows, and every read runs in
// PostgreSQL. ENABLE ROW LEVEL SECURITY through the proxy takes effect for
// the next statement (the DDL reloads the set).
func TestCacheRowLevelSecurity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := cluster.Exec(ctx, cluster.Primary, `DROP VIEW IF EXISTS cache_rls_v; DROP TABLE IF EXISTS cache_rls, cache_rls2;
		CREATE TABLE cache_rls(owner text, v int);
		INSERT INTO cache_rls VALUES ('app', 1), ('md5u', 2);
		ALTER TABLE cache_rls ENABLE ROW LEVEL SECURITY;
		CREATE POLICY own ON cache_rls USING (owner = current_user);
		CREATE VIEW cache_rls_v WITH (security_invoker = true) AS SELECT owner, v FROM cache_rls;
		GRANT SELECT ON cache_rls, cache_rls_v TO app, md5u;
		CREATE TABLE cache_rls2(owner text, v int);
		INSERT INTO cache_rls2 VALUES ('app', 1), ('md5u', 2);
		ALTER TABLE cache_rls2 OWNER TO app;
		GRANT SELECT ON cache_rls2 TO md5u`); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	dsn, srv := startProxy(t, cluster, func(tc *TargetConfig) {
		withCache(config.CacheMemory, config.CacheRule{Tables: []string{"cache_rls", "cache_rls2", "cache_rls_v"}, TTL: time.Hour})(tc)
		tc.Registry = reg
	})
	roles := map[string]*pgx.Conn{
		"app":  connect(t, ctx, dsn),
		"md5u": connect(t, ctx, dsnFor(t, dsn, "md5u", "md5pass", "app")),
	}
	// read runs sql as role and returns the owners of the rows it saw.
	read := func(role, sql string) []string {
		t.Helper()
		rows, err := roles[role].Query(ctx, sql, pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			t.Fatal(err)
		}
		owners, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
			var o string
			var v int
			err := r.Scan(&o, &v)
			return o, err
		})
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return owners
	}
	resetStatements(t, ctx)
	rlsSkips := func() float64 { return counterValue(t, reg, "pgsluice_cache_skipped_total", "reason", "rls") }

	for _, sql := range []string{
		"SELECT owner, v FROM cache_rls ORDER BY v",
		"SELECT owner, v FROM public.cache_rls WHERE v IS NOT NULL ORDER BY v",
		"SELECT owner, v FROM cache_rls_v ORDER BY v",
	} {
		hits, skips := srv.CacheStats().Hits, rlsSkips()
		for round := 0; round < 2; round++ {
			for _, role := range []string{"app", "md5u"} {
				got := read(role, sql)
				if len(got) != 1 || got[0] != role {
					t.Fatalf("%s as %s (round %d): rows of %v, want only its own", sql, role, round, got)
				}
			}
		}
		if got := executions(t, ctx, sql); got != 4 {
			t.Errorf("%s: PostgreSQL ran it %d times for 4 reads, want 4 (never from the cache)", sql, got)
		}
		if h := srv.CacheStats().Hits; h != hits {
			t.Errorf("%s: %d cache hits", sql, h-hits)
		}
		if s := rlsSkips(); s != skips+4 {
			t.Errorf("%s: skipped_total{reason=rls} grew by %v, want 4", sql, s-skips)
		}
	}

	// A table without row-level security is cached ...
	const q2 = "SELECT owner, v FROM cache_rls2 ORDER BY v"
	if got := read("app", q2); len(got) != 2 {
		t.Fatalf("before RLS: %v, want both rows", got)
	}
	hits := srv.CacheStats().Hits
	if got := read("app", q2); len(got) != 2 || srv.CacheStats().Hits != hits+1 {
		t.Fatalf("before RLS: %v, hits %d -> %d: want both rows from the cache", got, hits, srv.CacheStats().Hits)
	}
	// ... until its owner enables row-level security through the proxy.
	if _, err := roles["app"].Exec(ctx, `ALTER TABLE cache_rls2 ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
		CREATE POLICY own ON cache_rls2 USING (owner = current_user)`, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	before, hits := executions(t, ctx, q2), srv.CacheStats().Hits
	for round := 0; round < 2; round++ {
		for _, role := range []string{"app", "md5u"} {
			got := read(role, q2)
			if len(got) != 1 || got[0] != role {
				t.Fatalf("after ENABLE ROW LEVEL SECURITY, %s as %s (round %d): rows of %v, want only its own", q2, role, round, got)
			}
		}
	}
	if got := executions(t, ctx, q2) - before; got != 4 {
		t.Errorf("after ENABLE ROW LEVEL SECURITY: PostgreSQL ran %d of 4 reads, want 4", got)
	}
	if h := srv.CacheStats().Hits; h != hits {
		t.Errorf("after ENABLE ROW LEVEL SECURITY: %d cache hits", h-hits)
	}
}
