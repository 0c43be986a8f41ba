package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows
}

func loadDashboard(t testing.TB) *dashboard {
	t.Helper()
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(readFile(t, "deploy/grafana/pgsluice.json"))))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("pgsluice.json is not valid JSON: %v", err)
	}
	return &d
}

func (d *dashboard) allPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// panelExpr is one query of the dashboard, named for error messages.
type panelExpr struct{ where, expr string }

func (d *dashboard) exprs() []panelExpr {
	var out []panelExpr
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			out = append(out, panelExpr{fmt.Sprintf("panel %d %q %s", p.ID, p.Title, tg.RefID), tg.Expr})
		}
	}
	return out
}

var labelValuesCall = regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_]+)\)$`)

func TestDashboardStructure(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title")
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	for _, v := range []string{"datasource", "job", "instance"} {
		if !vars[v] {
			t.Errorf("template variable $%s missing", v)
		}
	}
	ids := map[int]string{}
	for _, p := range d.allPanels() {
		if other, dup := ids[p.ID]; dup {
			t.Errorf("panel id %d used by %q and %q", p.ID, other, p.Title)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H <= 0 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource must be the $datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if !strings.Contains(tg.Expr, `job="$job"`) || !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %q %s: every selector should filter on $job and $instance:\n%s", p.Title, tg.RefID, tg.Expr)
			}
		}
	}
}

// TestDashboardMetricNames: every expression (and template query) uses only
// the listed pgsluice metrics, with their labels, and the dashboard covers
// what issue 5 asks for.
func TestDashboardMetricNames(t *testing.T) {
	d := loadDashboard(t)
	exprs := d.exprs()
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q := v.Query
		if m, ok := q.(map[string]any); ok {
			q = m["query"]
		}
		s := fmt.Sprint(q)
		if m := labelValuesCall.FindStringSubmatch(s); m != nil {
			names, err := metricsIn(m[1])
			if err == nil {
				err = labelsOK(m[1]+" by ("+m[2]+")", names)
			}
			if err != nil || len(names) == 0 {
				t.Errorf("variable $%s query %q: %v", v.Name, s, err)
			}
			continue
		}
		t.Errorf("variable $%s: unexpected query %q (want label_values(<pgsluice metric>, label))", v.Name, s)
	}
	used := map[string]bool{}
	for _, e := range exprs {
		names, err := metricsIn(e.expr)
		if err != nil {
			t.Errorf("%s: %v", e.where, err)
		}
		if len(names) == 0 {
			t.Errorf("%s: uses no pgsluice metric: %s", e.where, e.expr)
		}
		if err := labelsOK(e.expr, names); err != nil {
			t.Errorf("%s: %v\n%s", e.where, err, e.expr)
		}
		for _, n := range names {
			used[n] = true
		}
	}
	// What issue 5 and the brief ask the dashboard to show.
	for _, m := range []string{
		"pgsluice_query_duration_seconds",  // p50/p95/p99 by fingerprint and target, top queries
		"pgsluice_query_backend_seconds",   // queueing vs execution
		"pgsluice_pool_active_connections", // saturation
		"pgsluice_pool_max_connections",    //
		"pgsluice_pool_waiting_clients",    //
		"pgsluice_pool_wait_seconds",       // wait
		"pgsluice_routing_decisions_total", // replica share of reads
		"pgsluice_replica_lag_seconds",     // lag
		"pgsluice_replica_lag_bytes",       //
		"pgsluice_replica_healthy",         //
		"pgsluice_cache_hits_total",        // cache hit ratio
		"pgsluice_cache_misses_total",      //
		"pgsluice_errors_total",            // errors by class
		"pgsluice_client_connections",      // clients
		"pgsluice_session_pins_total",      // pins
		"pgsluice_pool_acquire_timeouts_total",
	} {
		if !used[m] {
			t.Errorf("the dashboard does not show %s", m)
		}
	}
	var unused []string
	for m := range knownMetrics {
		if !used[m] {
			unused = append(unused, m)
		}
	}
	if len(unused) > 0 {
		t.Errorf("metrics on no panel: %v", unused)
	}
	var pins, quantiles bool
	for _, e := range exprs {
		pins = pins || strings.Contains(e.expr, "sum by (reason) (rate(pgsluice_session_pins_total")
		quantiles = quantiles || (strings.Contains(e.expr, "histogram_quantile(0.99") && strings.Contains(e.expr, "fingerprint"))
	}
	if !pins || !quantiles {
		t.Errorf("want pins by reason (%v) and p99 by fingerprint (%v)", pins, quantiles)
	}
}

// TestDashboardPromQL has promtool parse every expression, with Grafana's
// variables replaced by values, as recording rules.
func TestDashboardPromQL(t *testing.T) {
	promtool := needTool(t, "promtool", promtoolInstall)
	d := loadDashboard(t)
	r := strings.NewReplacer("$__rate_interval", "5m", "$__range", "1h", "$__interval", "1m", "$job", "pgsluice", "$instance", ".*")
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for i, e := range d.exprs() {
		rules = append(rules, rule{fmt.Sprintf("dashboard:expr_%d", i), r.Replace(e.expr)})
	}
	doc := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboard-exprs.yml")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := run(t, "", os.Environ(), promtool, "check", "rules", file)
	if !strings.Contains(out, fmt.Sprintf("SUCCESS: %d rules found", len(rules))) {
		t.Errorf("promtool:\n%s", out)
	}
}
