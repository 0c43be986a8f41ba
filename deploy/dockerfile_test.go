package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/pgsluice/pgsluice/deploy/local"
)

// dockerfile is the part of a Dockerfile these tests look at.
type dockerfile struct {
	args   map[string]string // global ARGs with defaults
	stages []*stage
}

type stage struct {
	from, name string
	instrs     []instr
}

type instr struct {
	cmd, rest string // "RUN", "apt-get ..."
}

// parseDockerfile joins continuation lines, drops comments and splits the
// file into stages.
func parseDockerfile(src string) (*dockerfile, error) {
	d := &dockerfile{args: map[string]string{}}
	var logical []string
	var cur strings.Builder
	for _, line := range strings.Split(src, "\n") {
		trim := strings.TrimSpace(line)
		if strings.HasPrefix(trim, "#") || (trim == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(trim, "\\") {
			cur.WriteString(strings.TrimSuffix(trim, "\\") + " ")
			continue
		}
		cur.WriteString(trim)
		logical = append(logical, cur.String())
		cur.Reset()
	}
	if cur.Len() > 0 {
		return nil, fmt.Errorf("Dockerfile ends inside a continuation line")
	}
	for _, l := range logical {
		cmd, rest, _ := strings.Cut(l, " ")
		cmd = strings.ToUpper(cmd)
		rest = strings.TrimSpace(rest)
		if cmd == "FROM" {
			f := strings.Fields(rest)
			s := &stage{from: d.expand(f[0])}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			d.stages = append(d.stages, s)
			continue
		}
		if len(d.stages) == 0 {
			if cmd != "ARG" {
				return nil, fmt.Errorf("%s before the first FROM", cmd)
			}
			k, v, _ := strings.Cut(rest, "=")
			d.args[k] = v
			continue
		}
		s := d.stages[len(d.stages)-1]
		s.instrs = append(s.instrs, instr{cmd, rest})
	}
	return d, nil
}

func (d *dockerfile) expand(s string) string {
	return os.Expand(s, func(k string) string { return d.args[k] })
}

func (s *stage) all(cmd string) []string {
	var out []string
	for _, i := range s.instrs {
		if i.cmd == cmd {
			out = append(out, i.rest)
		}
	}
	return out
}

func (s *stage) last(cmd string) string {
	all := s.all(cmd)
	if len(all) == 0 {
		return ""
	}
	return all[len(all)-1]
}

// env returns the stage's ENV settings (KEY=VALUE form).
func (s *stage) env() map[string]string {
	m := map[string]string{}
	for _, e := range s.all("ENV") {
		for _, kv := range strings.Fields(e) {
			k, v, _ := strings.Cut(kv, "=")
			m[k] = strings.Trim(v, `"`)
		}
	}
	return m
}

// goBuildCommand returns the shell command of the RUN that builds
// cmd/pgsluice, without BuildKit's --mount flags.
func (d *dockerfile) goBuildCommand() (string, error) {
	for _, s := range d.stages {
		for _, r := range s.all("RUN") {
			if !strings.Contains(r, "go build") {
				continue
			}
			for strings.HasPrefix(r, "--") {
				_, r, _ = strings.Cut(r, " ")
				r = strings.TrimSpace(r)
			}
			return r, nil
		}
	}
	return "", fmt.Errorf("no RUN with go build in the Dockerfile")
}

func (d *dockerfile) final() *stage { return d.stages[len(d.stages)-1] }

func loadDockerfile(t testing.TB) *dockerfile {
	t.Helper()
	d, err := parseDockerfile(string(readFile(t, "Dockerfile")))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDockerfileStructure(t *testing.T) {
	d := loadDockerfile(t)
	if len(d.stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stage(s)", len(d.stages))
	}
	build, final := d.stages[0], d.final()
	if !regexp.MustCompile(`^golang:\d+\.\d+-bookworm$`).MatchString(build.from) {
		t.Errorf("builder image %q: want golang:<go version>-bookworm (cgo needs gcc and glibc)", build.from)
	}
	// The builder's Go must be at least go.mod's.
	goMod := string(readFile(t, "go.mod"))
	m := regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`).FindStringSubmatch(goMod)
	img := regexp.MustCompile(`golang:(\d+)\.(\d+)`).FindStringSubmatch(build.from)
	if m == nil || img == nil {
		t.Fatalf("cannot compare go.mod's go line with %q", build.from)
	}
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	if atoi(img[1]) < atoi(m[1]) || (atoi(img[1]) == atoi(m[1]) && atoi(img[2]) < atoi(m[2])) {
		t.Errorf("builder image %s is older than go.mod's go %s.%s", build.from, m[1], m[2])
	}
	if final.from != "debian:bookworm-slim" && !strings.HasPrefix(final.from, "gcr.io/distroless/cc") {
		t.Errorf("runtime image %q: want debian:bookworm-slim or distroless/cc (glibc for the cgo binary)", final.from)
	}
	copied := false
	for _, c := range final.all("COPY") {
		if strings.Contains(c, "--from="+build.name) && strings.Contains(c, "/usr/local/bin/pgsluice") {
			copied = true
		}
	}
	if !copied {
		t.Errorf("runtime stage does not COPY --from=%s the binary to /usr/local/bin/pgsluice", build.name)
	}

	bc, err := d.goBuildCommand()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=1", "-trimpath", "-X main.version=${VERSION}", "./cmd/pgsluice"} {
		if !strings.Contains(bc, want) {
			t.Errorf("go build command %q lacks %q", bc, want)
		}
	}

	user := final.last("USER")
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("runtime USER %q: want a numeric non-zero uid (Kubernetes runAsNonRoot can only verify numeric ones)", user)
	}

	exposed := map[string]bool{}
	for _, e := range final.all("EXPOSE") {
		for _, p := range strings.Fields(e) {
			exposed[strings.TrimSuffix(p, "/tcp")] = true
		}
	}
	env := final.env()
	for key, port := range map[string]string{"PGSLUICE_LISTEN": "6432", "PGSLUICE_ADMIN_LISTEN": "9930"} {
		if !exposed[port] {
			t.Errorf("EXPOSE lacks %s", port)
		}
		if _, p, _ := net.SplitHostPort(env[key]); p != port || !strings.HasPrefix(env[key], "0.0.0.0:") {
			t.Errorf("ENV %s=%q: want 0.0.0.0:%s (reachable from outside the container)", key, env[key], port)
		}
	}

	hc := final.last("HEALTHCHECK")
	_, probe, ok := strings.Cut(hc, "CMD ")
	if !ok || !strings.Contains(probe, "http://127.0.0.1:9930/healthz") {
		t.Errorf("HEALTHCHECK %q: want CMD probing http://127.0.0.1:9930/healthz", hc)
	}
	tool := strings.Fields(probe)[0]
	installed := false
	for _, r := range final.all("RUN") {
		if strings.Contains(r, "apt-get install") && regexp.MustCompile(`\b`+regexp.QuoteMeta(tool)+`\b`).MatchString(r) {
			installed = true
		}
	}
	if !installed {
		t.Errorf("HEALTHCHECK runs %q but the runtime stage does not install it", tool)
	}

	var ep []string
	if err := json.Unmarshal([]byte(final.last("ENTRYPOINT")), &ep); err != nil || len(ep) < 3 {
		t.Fatalf("ENTRYPOINT %q: want the exec (JSON) form running sh -c", final.last("ENTRYPOINT"))
	}
	if !strings.Contains(ep[2], "exec /usr/local/bin/pgsluice") {
		t.Errorf("ENTRYPOINT script %q must exec pgsluice so it is PID 1 and gets SIGTERM", ep[2])
	}
	if s := final.last("STOPSIGNAL"); s != "" && s != "SIGTERM" {
		t.Errorf("STOPSIGNAL %s: pgsluice drains on SIGTERM", s)
	}
}

// entrypoint returns the image's ENTRYPOINT + CMD + args as a command for
// this machine: the binary and config paths replaced by bin and cfg, the
// image's ENV plus env as the environment (nothing else leaks in).
func entrypoint(t testing.TB, bin, cfg string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	final := loadDockerfile(t).final()
	var ep, cmdArgs []string
	if err := json.Unmarshal([]byte(final.last("ENTRYPOINT")), &ep); err != nil {
		t.Fatal(err)
	}
	if c := final.last("CMD"); c != "" {
		if err := json.Unmarshal([]byte(c), &cmdArgs); err != nil {
			t.Fatalf("CMD %q: want the exec form", c)
		}
	}
	argv := append(append(append([]string{}, ep...), cmdArgs...), args...)
	for i := range argv {
		argv[i] = strings.ReplaceAll(argv[i], "/usr/local/bin/pgsluice", bin)
		argv[i] = strings.ReplaceAll(argv[i], "/etc/pgsluice/pgsluice.yaml", cfg)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + t.TempDir()}
	for k, v := range final.env() {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// printConfig runs the image's entrypoint with --print-config and decodes
// the YAML it prints.
func printConfig(t testing.TB, bin, cfg string, env ...string) (map[string]any, string, error) {
	t.Helper()
	cmd := entrypoint(t, bin, cfg, env, "--print-config")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, string(out), err
	}
	var m map[string]any
	if err := yaml.Unmarshal(out, &m); err != nil {
		t.Fatalf("--print-config output is not YAML: %v\n%s", err, out)
	}
	return m, string(out), nil
}

// lookup walks a decoded YAML map by a dotted path ("pool.size").
func lookup(m map[string]any, path string) any {
	var v any = m
	for _, k := range strings.Split(path, ".") {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

func TestDockerImageConfiguration(t *testing.T) {
	bin := pgsluiceBinary(t)
	t.Logf("binary built as the Dockerfile builds it:\n%s", binLog)

	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "pgsluice "+testVersion {
		t.Errorf("--version = %q, %v; want the -X main.version stamp %q", out, err, testVersion)
	}

	noFile := filepath.Join(t.TempDir(), "absent.yaml")
	t.Run("env only", func(t *testing.T) {
		cfg, out, err := printConfig(t, bin, noFile,
			"PGSLUICE_PRIMARY_HOST=db.internal", "PGSLUICE_PRIMARY_PORT=5433",
			"PGSLUICE_REPLICAS=r1.internal:5432,r2.internal:5432",
			"PGSLUICE_AUTH_USERS=app:s3cret,report:pw2", "PGSLUICE_POOL_SIZE=33",
			"PGSLUICE_POOL_ACQUIRE_TIMEOUT=2s", "PGSLUICE_LOG_FORMAT=json")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		for path, want := range map[string]any{
			"listen": "0.0.0.0:6432", "admin.listen": "0.0.0.0:9930", // the image's ENV
			"primary.host": "db.internal", "primary.port": 5433, "pool.size": 33,
			"pool.acquire_timeout": "2s", "log.format": "json",
		} {
			if got := lookup(cfg, path); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s = %v, want %v", path, got, want)
			}
		}
		if r, _ := cfg["replicas"].([]any); len(r) != 2 || fmt.Sprint(r[1].(map[string]any)["host"]) != "r2.internal" {
			t.Errorf("replicas = %v, want r1.internal and r2.internal", cfg["replicas"])
		}
		if strings.Contains(out, "s3cret") || strings.Contains(out, "pw2") {
			t.Errorf("--print-config shows a password:\n%s", out)
		}
		if u, _ := lookup(cfg, "auth.users").([]any); len(u) != 2 {
			t.Errorf("auth.users = %v, want 2 users", lookup(cfg, "auth.users"))
		}
	})
	t.Run("mounted file plus env", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "pgsluice.yaml")
		if err := os.WriteFile(file, readFile(t, "deploy/configs/pgsluice.yaml"), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, out, err := printConfig(t, bin, file, "PGSLUICE_POOL_SIZE=7")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		for path, want := range map[string]any{"primary.host": "10.0.0.5", "pool.size": 7, "pool.max_client_conn": 20000} {
			if got := lookup(cfg, path); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s = %v, want %v (file, env overriding pool.size)", path, got, want)
			}
		}
	})
	t.Run("nothing configured", func(t *testing.T) {
		_, out, err := printConfig(t, bin, noFile)
		if err == nil || !strings.Contains(out, "primary.host") {
			t.Errorf("with neither file nor env: err=%v, output %q; want a failure naming primary.host", err, out)
		}
	})
	t.Run("unknown env override", func(t *testing.T) {
		_, out, err := printConfig(t, bin, noFile, "PGSLUICE_PRIMARY_HOST=db", "PGSLUICE_AUTH_USERS=a:b", "PGSLUICE_POOL_SIZ=3")
		if err == nil || !strings.Contains(out, "PGSLUICE_POOL_SIZ") {
			t.Errorf("a misspelt override: err=%v, output %q; want a failure naming it", err, out)
		}
	})
}

// proxyProcess is pgsluice started through the image's entrypoint.
type proxyProcess struct {
	cmd          *exec.Cmd
	listen       string
	admin        string
	exited       chan struct{}
	exitErr      error
	outputBuffer *syncBuffer
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startProxy starts pgsluice with the image's entrypoint and environment on
// free loopback ports (as `docker run -e PGSLUICE_LISTEN=... -e
// PGSLUICE_ADMIN_LISTEN=...` would), and stops it at cleanup.
func startProxy(t testing.TB, bin string, env ...string) *proxyProcess {
	t.Helper()
	p := &proxyProcess{listen: freeAddr(t), admin: freeAddr(t), exited: make(chan struct{}), outputBuffer: &syncBuffer{}}
	env = append(env, "PGSLUICE_LISTEN="+p.listen, "PGSLUICE_ADMIN_LISTEN="+p.admin)
	p.cmd = entrypoint(t, bin, filepath.Join(t.TempDir(), "absent.yaml"), env)
	p.cmd.Stdout = p.outputBuffer
	p.cmd.Stderr = p.outputBuffer
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exitErr = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(10 * time.Second):
				p.cmd.Process.Kill()
				<-p.exited
			}
		}
		t.Logf("pgsluice output:\n%s", p.outputBuffer.String())
	})
	return p
}

func (p *proxyProcess) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// healthcheck runs the Dockerfile's HEALTHCHECK command against p (its
// port rewritten to p's admin port).
func (p *proxyProcess) healthcheck(t testing.TB) error {
	t.Helper()
	hc := loadDockerfile(t).final().last("HEALTHCHECK")
	_, probe, _ := strings.Cut(hc, "CMD ")
	probe = strings.ReplaceAll(probe, "127.0.0.1:9930", p.admin)
	out, err := exec.Command("sh", "-c", probe).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v %s", probe, err, out)
	}
	return nil
}

// waitHealthy retries the HEALTHCHECK until it passes (the image's
// start-period is 5s).
func (p *proxyProcess) waitHealthy(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := p.healthcheck(t)
		if err == nil {
			return
		}
		if !p.alive() || time.Now().After(deadline) {
			t.Fatalf("HEALTHCHECK never passed (alive=%v): %v\n%s", p.alive(), err, p.outputBuffer.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestDockerImageServes(t *testing.T) {
	bin := pgsluiceBinary(t)
	c := local.StartT(t, local.Options{})
	p := startProxy(t, bin,
		"PGSLUICE_PRIMARY_HOST="+c.Primary.Host, "PGSLUICE_PRIMARY_PORT="+strconv.Itoa(c.Primary.Port),
		"PGSLUICE_AUTH_USERS=app:secret", "PGSLUICE_TLS_SERVER=disable", "PGSLUICE_POOL_SIZE=4")
	p.waitHealthy(t)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	host, port, _ := net.SplitHostPort(p.listen)
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app:secret@%s:%s/app?sslmode=disable", host, port))
	if err != nil {
		t.Fatalf("connect through pgsluice: %v", err)
	}
	defer conn.Close(ctx)
	var user string
	var n int
	if err := conn.QueryRow(ctx, "select current_user, count(*)::int from generate_series(1, 1000)").Scan(&user, &n); err != nil || user != "app" || n != 1000 {
		t.Fatalf("query through pgsluice: %v (%q, %d)", err, user, n)
	}
	if _, err := conn.Exec(ctx, "select * from no_such_table"); err == nil {
		t.Fatal("querying a missing table succeeded")
	}

	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200} {
		resp, err := http.Get("http://" + p.admin + path)
		if err != nil || resp.StatusCode != want {
			t.Errorf("GET %s: %v %v, want %d", path, err, resp, want)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
	families := scrape(t, p.admin)
	checkExposedMetrics(t, families)
	// The workload above must show: one client, one pool with 1 connection
	// max 4, one error of class 42.
	if v := gaugeSum(families, "pgsluice_client_connections"); v != 1 {
		t.Errorf("pgsluice_client_connections = %v, want 1", v)
	}
	if v := gaugeSum(families, "pgsluice_pool_max_connections"); v != 4 {
		t.Errorf("pgsluice_pool_max_connections = %v, want 4 (PGSLUICE_POOL_SIZE)", v)
	}
	if f := families["pgsluice_errors_total"]; f == nil || !hasLabel(f, "class", "42") {
		t.Errorf("pgsluice_errors_total has no class=\"42\" series after an undefined_table error")
	}
	conn.Close(ctx)

	// docker stop: SIGTERM to PID 1 (the entrypoint execs pgsluice).
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.exitErr != nil {
			t.Errorf("pgsluice exited with %v on SIGTERM, want 0", p.exitErr)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("pgsluice still running 15s after SIGTERM")
	}
}

func scrape(t testing.TB, admin string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return families
}

// checkExposedMetrics compares every pgsluice_* family the binary exposes
// today with knownMetrics: same type, labels among the declared ones. Names
// outside the list are reported in the log (dashboards cannot use them).
func checkExposedMetrics(t testing.TB, families map[string]*dto.MetricFamily) {
	t.Helper()
	var found, extra []string
	for name, f := range families {
		if !strings.HasPrefix(name, "pgsluice_") {
			continue
		}
		spec, ok := knownMetrics[name]
		if !ok {
			extra = append(extra, name)
			continue
		}
		found = append(found, name)
		if got := strings.ToLower(f.GetType().String()); got != spec.typ {
			t.Errorf("%s is a %s, the dashboard and alerts expect a %s", name, got, spec.typ)
		}
		allowed := map[string]bool{}
		for _, l := range spec.labels {
			allowed[l] = true
		}
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !allowed[lp.GetName()] {
					t.Errorf("%s has label %q, expected only %v", name, lp.GetName(), spec.labels)
				}
			}
		}
	}
	t.Logf("exposed and in the list: %v", found)
	if len(extra) > 0 {
		t.Logf("exposed but not in the dashboard's list: %v", extra)
	}
}

func gaugeSum(families map[string]*dto.MetricFamily, name string) float64 {
	var s float64
	if f := families[name]; f != nil {
		for _, m := range f.GetMetric() {
			s += m.GetGauge().GetValue()
		}
	}
	return s
}

func hasLabel(f *dto.MetricFamily, name, value string) bool {
	for _, m := range f.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == name && lp.GetValue() == value {
				return true
			}
		}
	}
	return false
}
