package proxy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy"

	"github.com/pgsluice/pgsluice/deploy/local"
)

// TargetConfig is what an integration test may tweak about the server it
// talks to. Against direct PostgreSQL (today) it is ignored.
type TargetConfig struct {
	PoolSize       int           // backend connections per (user, database); default 10
	PoolMode       string        // "transaction" (default) or "session"
	AuthMethod     string        // client-facing auth: "scram-sha-256" (default), "md5", ...
	AcquireTimeout time.Duration // how long a client waits for a backend; default 10s
	MaxClientConn  int           // client connections accepted; default 5000
	TLS            bool          // accept TLS from clients (use testTLS's certificate)
	// Log, when set, also receives every proxy log line at debug level.
	Log io.Writer
	// Tweak edits the full proxy configuration last.
	Tweak func(*config.Config)
	// Registry receives the proxy's metrics (default: a fresh one).
	Registry *prometheus.Registry
	// Reload is passed as proxy.Options.Reload (admin RELOAD).
	Reload func() error
}

// defaultTargetConfig returns the configuration every test starts from.
func defaultTargetConfig() TargetConfig {
	return TargetConfig{
		PoolSize:       10,
		PoolMode:       "transaction",
		AuthMethod:     "scram-sha-256",
		AcquireTimeout: 10 * time.Second,
		MaxClientConn:  5000,
		TLS:            false,
	}
}

// routingOff makes startProxy turn routing.enabled off (see
// TestSessionTrackingRoutingOff).
var routingOff bool

// viaProxy is true when startTarget returns a pgsluice DSN; assertions that
// only hold through a pool (backend counts bounded by PoolSize) check it.
var viaProxy bool

// startTarget starts a pgsluice proxy in front of the cluster's primary,
// configured from TargetConfig, and returns its DSN for user `app`, password
// `secret`, database `app`; tests change user/password/db with dsnFor. The
// proxy is shut down in t.Cleanup.
func startTarget(t *testing.T, c *local.Cluster, tweak func(*TargetConfig)) string {
	t.Helper()
	dsn, _ := startProxy(t, c, tweak)
	return dsn
}

// startProxy is startTarget that also returns the running server, for tests
// that drive it (shutdown, metrics).
func startProxy(t *testing.T, c *local.Cluster, tweak func(*TargetConfig)) (string, *proxy.Server) {
	t.Helper()
	tc := defaultTargetConfig()
	if tweak != nil {
		tweak(&tc)
	}
	viaProxy = true
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = ""
	cfg.Primary = config.Node{Host: c.Primary.Host, Port: c.Primary.Port, Weight: 1}
	cfg.Pool.Size = tc.PoolSize
	cfg.Pool.Mode = tc.PoolMode
	cfg.Pool.AcquireTimeout = tc.AcquireTimeout
	cfg.Pool.MaxClientConn = tc.MaxClientConn
	cfg.Auth.Method = tc.AuthMethod
	cfg.Auth.Users = []config.User{{Name: local.AppUser, Password: local.AppPassword}, {Name: "md5u", Password: "md5pass"}}
	cfg.TLS.Server = "disable"
	if tc.TLS {
		dir := t.TempDir()
		cfg.TLS.CertFile = filepath.Join(dir, "server.crt")
		cfg.TLS.KeyFile = filepath.Join(dir, "server.key")
		if err := os.WriteFile(cfg.TLS.CertFile, testTLS.certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfg.TLS.KeyFile, testTLS.keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if routingOff {
		cfg.Routing.Enabled = false
	}
	if tc.Tweak != nil {
		tc.Tweak(&cfg)
	}
	log := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if tc.Log != nil {
		log = slog.New(slog.NewTextHandler(tc.Log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	reg := tc.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	srv, err := proxy.New(cfg, proxy.Options{Registerer: reg, Logger: log, Reload: tc.Reload})
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("proxy shutdown: %v", err)
		}
	})
	port := ln.Addr().(*net.TCPAddr).Port
	return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", local.AppUser, local.AppPassword, port, local.AppDatabase), srv
}

// testLogWriter sends proxy logs to the test log.
type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Logf("pgsluice| %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
