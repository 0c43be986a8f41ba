package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// composeFile is the part of docker-compose.yml these tests look at.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image       string         `yaml:"image"`
	Build       *composeBuild  `yaml:"build"`
	Entrypoint  []string       `yaml:"entrypoint"`
	Environment map[string]any `yaml:"environment"`
	Volumes     []string       `yaml:"volumes"`
	Ports       []string       `yaml:"ports"`
	DependsOn   any            `yaml:"depends_on"` // list or map
	Healthcheck map[string]any `yaml:"healthcheck"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

func (s composeService) deps() []string {
	var out []string
	switch d := s.DependsOn.(type) {
	case []any:
		for _, v := range d {
			out = append(out, fmt.Sprint(v))
		}
	case map[string]any:
		for k := range d {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func (s composeService) env() []string {
	var out []string
	for k, v := range s.Environment {
		out = append(out, k+"="+fmt.Sprint(v))
	}
	sort.Strings(out)
	return out
}

func loadCompose(t testing.TB) (*composeFile, string) {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "deploy", "compose")
	var c composeFile
	// yaml.v3 resolves the x-pgsluice-common anchor and << merge keys.
	if err := yaml.Unmarshal(readFile(t, "deploy/compose/docker-compose.yml"), &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return &c, dir
}

func TestComposeStructure(t *testing.T) {
	c, dir := loadCompose(t)
	for _, want := range []string{"primary", "replica", "redis", "pgsluice-1", "pgsluice-2", "prometheus", "grafana"} {
		if _, ok := c.Services[want]; !ok {
			t.Errorf("service %q missing", want)
		}
	}
	hostPorts := map[string]string{}
	for name, s := range c.Services {
		if s.Image == "" && s.Build == nil {
			t.Errorf("%s: neither image nor build", name)
		}
		if s.Build != nil {
			ctx := filepath.Join(dir, s.Build.Context)
			df := s.Build.Dockerfile
			if df == "" {
				df = "Dockerfile"
			}
			if _, err := os.Stat(filepath.Join(ctx, df)); err != nil {
				t.Errorf("%s: build %s/%s: %v", name, s.Build.Context, df, err)
			}
		}
		for _, dep := range s.deps() {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("%s depends on unknown service %q", name, dep)
			}
		}
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) < 2 {
				t.Errorf("%s: volume %q: want source:target", name, v)
				continue
			}
			src := parts[0]
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
					t.Errorf("%s: bind mount %q: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("%s: named volume %q not declared under volumes:", name, src)
			}
		}
		for _, p := range s.Ports {
			host, _, ok := strings.Cut(p, ":")
			if !ok {
				continue
			}
			if other, dup := hostPorts[host]; dup {
				t.Errorf("host port %s published by %s and %s", host, other, name)
			}
			hostPorts[host] = name
		}
	}
	for _, name := range []string{"pgsluice-1", "pgsluice-2"} {
		s := c.Services[name]
		if s.Build == nil || s.Image == "" {
			t.Errorf("%s: want build (the repository's Dockerfile) and an image name", name)
		}
		for _, want := range []string{"primary", "replica"} {
			if !contains(s.deps(), want) {
				t.Errorf("%s does not depend on %s", name, want)
			}
		}
	}
	// The replica is cloned by the entrypoint script mounted into it.
	rep := c.Services["replica"]
	if len(rep.Entrypoint) == 0 || !strings.HasSuffix(rep.Entrypoint[len(rep.Entrypoint)-1], "replica-entrypoint.sh") {
		t.Errorf("replica entrypoint %v: want replica-entrypoint.sh", rep.Entrypoint)
	}
	if !strings.HasPrefix(c.Services["primary"].Image, "postgres:15") || !strings.HasPrefix(rep.Image, "postgres:15") {
		t.Errorf("primary/replica images %q/%q: want the official postgres:15", c.Services["primary"].Image, rep.Image)
	}
	script := string(readFile(t, "deploy/compose/replica-entrypoint.sh"))
	for _, want := range []string{"pg_basebackup", " -R", "exec gosu postgres postgres"} {
		if !strings.Contains(script, want) {
			t.Errorf("replica-entrypoint.sh lacks %q", want)
		}
	}
	for _, f := range []string{"replica-entrypoint.sh", "primary-init.sh"} {
		run(t, dir, os.Environ(), "bash", "-n", f)
	}
	// The replication role the primary creates is the one the replica uses.
	if !strings.Contains(string(readFile(t, "deploy/compose/primary-init.sh")), "host replication replicator") ||
		!strings.Contains(script, "REPLICATION_USER:=replicator") {
		t.Error("primary-init.sh and replica-entrypoint.sh disagree on the replication role")
	}

	// Prometheus scrapes both proxies on their admin port; Grafana gets
	// the dashboard and a data source pointing at the prometheus service.
	prom := string(readFile(t, "deploy/prometheus/prometheus.yml"))
	for _, target := range []string{"pgsluice-1:9930", "pgsluice-2:9930"} {
		if !strings.Contains(prom, target) {
			t.Errorf("prometheus.yml does not scrape %s", target)
		}
	}
	gv := strings.Join(c.Services["grafana"].Volumes, "\n")
	if !strings.Contains(gv, "../grafana/pgsluice.json:/var/lib/grafana/dashboards/") ||
		!strings.Contains(gv, "../grafana/provisioning:/etc/grafana/provisioning") {
		t.Errorf("grafana volumes %v: want the dashboard and provisioning mounted", c.Services["grafana"].Volumes)
	}
	prov := string(readFile(t, "deploy/grafana/provisioning/dashboards/pgsluice.yml"))
	if !strings.Contains(prov, "path: /var/lib/grafana/dashboards") {
		t.Error("dashboard provider does not read /var/lib/grafana/dashboards")
	}
	ds := string(readFile(t, "deploy/grafana/provisioning/datasources/prometheus.yml"))
	if !strings.Contains(ds, "url: http://prometheus:9090") {
		t.Error("Grafana data source does not point at the prometheus service")
	}
	if !regexp.MustCompile(`"9090:9090"`).MatchString(string(readFile(t, "deploy/compose/docker-compose.yml"))) {
		t.Error("prometheus port 9090 not published")
	}
}

// TestComposeProxyConfigs loads each compose pgsluice's configuration (its
// mounted file and its environment) with the real binary, through the
// image's entrypoint, and checks it points at the compose services.
func TestComposeProxyConfigs(t *testing.T) {
	c, dir := loadCompose(t)
	bin := pgsluiceBinary(t)
	for _, name := range []string{"pgsluice-1", "pgsluice-2"} {
		t.Run(name, func(t *testing.T) {
			s := c.Services[name]
			cfgFile := filepath.Join(t.TempDir(), "absent.yaml")
			for _, v := range s.Volumes {
				parts := strings.Split(v, ":")
				if len(parts) >= 2 && parts[1] == "/etc/pgsluice/pgsluice.yaml" {
					cfgFile = filepath.Join(dir, parts[0])
				}
			}
			cfg, out, err := printConfig(t, bin, cfgFile, s.env()...)
			if err != nil {
				t.Fatalf("%s's configuration does not load: %v\n%s", name, err, out)
			}
			for path, want := range map[string]string{
				"primary.host": "primary", "listen": "0.0.0.0:6432", "admin.listen": "0.0.0.0:9930",
			} {
				if got := fmt.Sprint(lookup(cfg, path)); got != want {
					t.Errorf("%s = %s, want %s", path, got, want)
				}
			}
			r, _ := cfg["replicas"].([]any)
			if len(r) != 1 || fmt.Sprint(r[0].(map[string]any)["host"]) != "replica" {
				t.Errorf("replicas = %v, want the replica service", cfg["replicas"])
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
