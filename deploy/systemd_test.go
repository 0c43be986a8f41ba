package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// unitFile maps section -> key -> values (a key may repeat).
type unitFile map[string]map[string][]string

func parseUnit(src string) (unitFile, error) {
	u := unitFile{}
	section := ""
	for i, line := range strings.Split(src, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				return nil, fmt.Errorf("line %d: %q is neither a section nor key=value", i+1, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u, nil
}

func (u unitFile) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func TestSystemdUnit(t *testing.T) {
	src := string(readFile(t, "deploy/systemd/pgsluice.service"))
	u, err := parseUnit(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"Unit", "Service", "Install"} {
		if u[s] == nil {
			t.Errorf("section [%s] missing", s)
		}
	}
	for key, want := range map[string]string{
		"Type": "simple", "User": "pgsluice", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes", "KillSignal": "SIGTERM",
		"Restart": "on-failure", "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes",
	} {
		if _, ok := u["Service"][key]; !ok {
			t.Errorf("[Service] %s missing", key)
		} else if got := u.get("Service", key); got != want {
			t.Errorf("[Service] %s=%s, want %s", key, got, want)
		}
	}
	if got := u.get("Service", "ExecStart"); got != "/usr/local/bin/pgsluice --config /etc/pgsluice/pgsluice.yaml" {
		t.Errorf("ExecStart=%s", got)
	}
	if n, err := strconv.Atoi(u.get("Service", "LimitNOFILE")); err != nil || n < 65536 {
		t.Errorf("LimitNOFILE=%s: want a number >= 65536 (one descriptor per client and server connection)", u.get("Service", "LimitNOFILE"))
	}
	stop, err := time.ParseDuration(u.get("Service", "TimeoutStopSec"))
	if err != nil || stop <= 30*time.Second {
		t.Errorf("TimeoutStopSec=%s: must exceed shutdown_timeout (30s in the sample config)", u.get("Service", "TimeoutStopSec"))
	}
	if u.get("Install", "WantedBy") != "multi-user.target" {
		t.Errorf("WantedBy=%s", u.get("Install", "WantedBy"))
	}
	if !strings.Contains(u.get("Unit", "After"), "network-online.target") {
		t.Error("After= should include network-online.target")
	}

	// systemd's own parser, offline, with ExecStart pointing at a binary
	// that exists here: any warning (unknown key, bad value) fails.
	analyze := needTool(t, "systemd-analyze", "apt-get install -y systemd")
	bin := pgsluiceBinary(t)
	unit := filepath.Join(t.TempDir(), "pgsluice.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(src, "/usr/local/bin/pgsluice", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runErr("", os.Environ(), analyze, "verify", unit)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestSystemdReloadMatchesBinary: `systemctl reload` sends SIGHUP, which
// pgsluice handles by reloading its configuration; the unit must say so
// (ExecReload=/bin/kill -HUP $MAINPID) and the binary must survive it (a Go
// program that does not handle SIGHUP exits on it).
func TestSystemdReloadMatchesBinary(t *testing.T) {
	u, err := parseUnit(string(readFile(t, "deploy/systemd/pgsluice.service")))
	if err != nil {
		t.Fatal(err)
	}
	reload := u.get("Service", "ExecReload")
	bin := pgsluiceBinary(t)
	// No PostgreSQL needed: pgsluice starts and serves /healthz before any
	// client asks for a server connection.
	p := startProxy(t, bin, "PGSLUICE_PRIMARY_HOST=127.0.0.1", "PGSLUICE_PRIMARY_PORT=1", "PGSLUICE_AUTH_USERS=app:secret")
	p.waitHealthy(t)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	survives := p.alive() && p.healthcheck(t) == nil
	t.Logf("pgsluice survives SIGHUP: %v; unit ExecReload=%q", survives, reload)
	if !survives {
		t.Errorf("pgsluice exits on SIGHUP (%v): systemctl reload would stop it", p.exitErr)
	}
	if reload != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload=%q: want /bin/kill -HUP $MAINPID (pgsluice reloads on SIGHUP)", reload)
	}
	if out := p.outputBuffer.String(); !strings.Contains(out, "configuration reload done") {
		t.Errorf("no reload logged after SIGHUP:\n%s", out)
	}
}

// TestSampleConfigs loads every sample in deploy/configs with the real
// binary (compose.yaml needs its users from the environment, as there).
func TestSampleConfigs(t *testing.T) {
	bin := pgsluiceBinary(t)
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "deploy", "configs", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no sample configs: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, out, err := printConfig(t, bin, f, "PGSLUICE_AUTH_USERS=app:from-env")
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if lookup(cfg, "primary.host") == "" {
				t.Error("no primary.host")
			}
		})
	}
}
