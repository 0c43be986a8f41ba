package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// Scenario 6: the result cache. A dashboard-style aggregate over 1,000
// distinct ranges, cached by a table rule, against direct PostgreSQL, with
// the in-process tier and with Redis alone; and pgbench -S with caching on
// but no rule matching, against cache.backend=off (the cost of looking).

// dashboardScript is the pgbench script of the cached case: 1,000 distinct
// values of k.
const dashboardScript = `\set k 1 + 1000 * random(0, 999)
SELECT bid, count(*), sum(abalance) FROM pgbench_accounts WHERE aid BETWEEN :k AND :k + 999 GROUP BY bid;
`

// DashboardName is the scenario-6 case name of the cached aggregate,
// DashboardPreparedName the same with named prepared statements (what pgx,
// JDBC and psycopg 3 do for repeated queries); CacheCostName that of
// pgbench -S with no rule matching.
const (
	DashboardName         = "dashboard aggregate, 20 clients -M extended"
	DashboardPreparedName = "dashboard aggregate, 20 clients -M prepared"
	CacheCostName         = "pgbench -S, 50 clients -M extended"
)

// dashboardCases are the scenario-6 dashboard cases: name and pgbench -M.
var dashboardCases = []struct{ name, mode string }{
	{DashboardName, "extended"},
	{DashboardPreparedName, "prepared"},
}

type variant = struct {
	name string
	env  []string
	args []string
}

// cacheVariants writes the configuration files of the scenario-6 proxies
// (the rest of their settings comes from the environment, as for the main
// pgsluice) and returns them.
func (r *runner) cacheVariants(work string) ([]variant, error) {
	rule := "  rules:\n    - tables: [pgbench_accounts]\n      ttl: 10m\n"
	files := map[string]string{
		PgsluiceCacheMem:   "cache:\n  backend: memory\n" + rule,
		PgsluiceCacheRedis: fmt.Sprintf("cache:\n  backend: redis\n  redis:\n    addr: %s\n", r.cluster.Redis.Addr()) + rule,
	}
	var out []variant
	for i, name := range []string{PgsluiceCacheMem, PgsluiceCacheRedis} {
		p := filepath.Join(work, fmt.Sprintf("pgsluice-cache-%d.yaml", i))
		if err := os.WriteFile(p, []byte(files[name]), 0o600); err != nil {
			return nil, err
		}
		out = append(out, variant{name: name, args: []string{"--config", p}})
	}
	out = append(out, variant{name: PgsluiceCacheOff, env: []string{"PGSLUICE_CACHE_BACKEND=off"}})
	return out, nil
}

// scenario6 measures the cache.
func (r *runner) scenario6(ctx context.Context) error {
	script := filepath.Join(r.logDir, "..", "dashboard.sql")
	if err := os.WriteFile(script, []byte(dashboardScript), 0o644); err != nil {
		return err
	}
	r.script = script
	for _, dc := range dashboardCases {
		r.logf("scenario 6: cached dashboard aggregate (1,000 distinct ranges), 20 clients -M %s", dc.mode)
		err := r.interleave(6, dc.name, []string{Direct, PgsluiceCacheMem, PgsluiceCacheRedis}, r.cfg.Runs, func(t Target) (Sample, error) {
			return r.pgbench(ctx, t, dc.mode, 20, r.cfg.Duration, false, false)
		})
		if err != nil {
			r.script = ""
			return err
		}
	}
	r.script = ""
	r.logf("scenario 6: pgbench -S with the cache on but no rule matching vs cache off")
	if err := r.freshBackends(ctx, 6, "extended", PgsluiceCacheOff, Pgsluice); err != nil {
		return err
	}
	return r.interleaveAlternating(6, CacheCostName, []string{PgsluiceCacheOff, Pgsluice}, max(r.cfg.CostPairs, 1), func(t Target) (Sample, error) {
		return r.pgbench(ctx, t, "extended", 50, r.cfg.Duration, false, false)
	})
}

// cacheChecks evaluates the scenario-6 targets.
func cacheChecks(r *Report, add func(sc int, what, goal string, val float64, measured string, met, have bool)) {
	for _, dc := range dashboardCases {
		d := r.Find(6, dc.name, Direct)
		for _, x := range []struct {
			target string
			goal   float64
		}{{PgsluiceCacheMem, 20}, {PgsluiceCacheRedis, 3}} {
			c := r.Find(6, dc.name, x.target)
			have := d.ok() && c.ok() && d.Median.TPS > 0
			var v float64
			if have {
				v = c.Median.TPS / d.Median.TPS
			}
			add(6, fmt.Sprintf("cached dashboard TPS vs direct, %s, -M %s", x.target, dc.mode), fmt.Sprintf("≥ %.0f×", x.goal), v,
				fmt.Sprintf("%.1f× (%.0f vs %.0f)", v, val(c, tps), val(d, tps)), v >= x.goal, have)
		}
	}
	off, on := r.Find(6, CacheCostName, PgsluiceCacheOff), r.Find(6, CacheCostName, Pgsluice)
	have := off.ok() && on.ok() && off.Median.TPS > 0
	var v float64
	if have {
		v = (1 - on.Median.TPS/off.Median.TPS) * 100
	}
	add(6, "pgbench -S TPS cost of the cache on with no rule matching", "≤ 3 %", v,
		fmt.Sprintf("%.1f %% (%.0f vs %.0f)", v, val(on, tps), val(off, tps)), v <= 3, have)
}

// cacheSection renders scenario 6 of the Markdown report.
func cacheSection(r *Report, w func(format string, args ...any), note func(*Case)) {
	w("### 6. Result cache\n\n")
	w("Dashboard aggregate `SELECT bid, count(*), sum(abalance) FROM pgbench_accounts WHERE aid BETWEEN :k AND :k+999 GROUP BY bid`, 1,000 distinct k, rule `tables: [pgbench_accounts]`, 20 clients. pgbench's own CPU per transaction is in the last column: on two shared cores, proxy and client CPU together bound the cached TPS.\n\n")
	w("| -M | target | TPS | proxy CPU/txn µs | pgbench CPU/txn µs |\n|---|---|---:|---:|---:|\n")
	for _, dc := range dashboardCases {
		for _, tn := range []string{Direct, PgsluiceCacheMem, PgsluiceCacheRedis} {
			c := r.Find(6, dc.name, tn)
			w("| %s | %s | %s | %s | %s |\n", dc.mode, tn, cell(c, "%.0f", tps), cell(c, "%.1f", cpu), cell(c, "%.1f", clientCPU))
			note(c)
		}
	}
	w("\npgbench -S (50 clients, -M extended), cache on (memory, no rule matches) vs off:\n\n")
	w("| variant | TPS | CPU/txn µs |\n|---|---:|---:|\n")
	for _, tn := range []string{PgsluiceCacheOff, Pgsluice} {
		c := r.Find(6, CacheCostName, tn)
		w("| %s | %s | %s |\n", tn, cell(c, "%.0f", tps), cell(c, "%.1f", cpu))
		note(c)
	}
	w("\n")
}
