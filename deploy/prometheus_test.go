package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// ruleFile is a Prometheus rule file (also the spec of a PrometheusRule).
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func TestPrometheusRulesWithPromtool(t *testing.T) {
	promtool := needTool(t, "promtool", promtoolInstall)
	dir := filepath.Join(repoRoot(t), "deploy", "prometheus")
	env := os.Environ()
	t.Logf("%s", run(t, dir, env, promtool, "check", "rules", "alerts.yml"))
	t.Logf("%s", run(t, dir, env, promtool, "check", "config", "prometheus.yml"))
	// Unit tests: series that must fire and series that must not.
	t.Logf("%s", run(t, dir, env, promtool, "test", "rules", "alerts_test.yml"))
}

func TestAlertRulesContract(t *testing.T) {
	var rf ruleFile
	if err := yaml.Unmarshal(readFile(t, "deploy/prometheus/alerts.yml"), &rf); err != nil {
		t.Fatal(err)
	}
	// The seed 002 thresholds and the operational alerts the brief asks for,
	// each with the metric it must be computed from.
	want := map[string]struct {
		severity string
		uses     []string
		contains string
	}{
		"PgsluicePoolUtilisationHigh":     {"warning", []string{"pgsluice_pool_active_connections", "pgsluice_pool_max_connections"}, "> 0.80"},
		"PgsluicePoolUtilisationCritical": {"critical", []string{"pgsluice_pool_active_connections", "pgsluice_pool_max_connections"}, "> 0.90"},
		"PgsluicePoolAcquireTimeouts":     {"warning", []string{"pgsluice_pool_acquire_timeouts_total"}, "> 0"},
		"PgsluiceQueryLatencyP95High":     {"warning", []string{"pgsluice_query_duration_seconds"}, "> 0.100"},
		"PgsluiceErrorRateHigh":           {"warning", []string{"pgsluice_errors_total", "pgsluice_query_duration_seconds"}, "> 0.001"},
		"PgsluiceReplicaLagHigh":          {"warning", []string{"pgsluice_replica_lag_seconds"}, "> 10"},
		"PgsluiceReplicaLagBytesHigh":     {"warning", []string{"pgsluice_replica_lag_bytes"}, ">"},
		"PgsluiceReplicaDown":             {"critical", []string{"pgsluice_replica_healthy"}, "== 0"},
		"PgsluiceCacheHitRatioLow":        {"warning", []string{"pgsluice_cache_hits_total", "pgsluice_cache_misses_total"}, "< 0.80"},
		"PgsluiceDown":                    {"critical", nil, "up{job=\"pgsluice\"} == 0"},
	}
	seen := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: recording rule %q: dashboards and alerts use raw metrics only", g.Name, r.Record)
				continue
			}
			seen[r.Alert] = true
			names, err := metricsIn(r.Expr)
			if err != nil {
				t.Errorf("%s: %v", r.Alert, err)
			}
			if err := labelsOK(r.Expr, names); err != nil {
				t.Errorf("%s: %v", r.Alert, err)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
			w, ok := want[r.Alert]
			if !ok {
				continue
			}
			if r.Labels["severity"] != w.severity {
				t.Errorf("%s: severity %q, want %q", r.Alert, r.Labels["severity"], w.severity)
			}
			for _, m := range w.uses {
				if !contains(names, m) {
					t.Errorf("%s: expression does not use %s:\n%s", r.Alert, m, r.Expr)
				}
			}
			if !strings.Contains(r.Expr, w.contains) {
				t.Errorf("%s: expression lacks %q:\n%s", r.Alert, w.contains, r.Expr)
			}
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("alert %s missing", name)
		}
	}
	// Every alert has a unit test in alerts_test.yml.
	tests := string(readFile(t, "deploy/prometheus/alerts_test.yml"))
	for name := range seen {
		if !strings.Contains(tests, "alertname: "+name+"\n") {
			t.Errorf("alert %s has no promtool unit test in alerts_test.yml", name)
		}
	}
}
