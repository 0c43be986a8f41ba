package bench_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/deploy/local"
	"github.com/pgsluice/pgsluice/proxy"
)

// shared is one PostgreSQL primary and one in-process pgsluice in front of
// it, started on first use and stopped by TestMain, so the tests and the
// benchmarks of this package pay the startup once.
var shared struct {
	once    sync.Once
	err     error
	cluster *local.Cluster
	srv     *proxy.Server
	proxyLn net.Listener
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = shared.srv.Shutdown(ctx)
		cancel()
	}
	if shared.cluster != nil {
		_ = shared.cluster.Stop()
	}
	os.Exit(code)
}

// env returns the shared cluster and the in-process proxy's address.
func env(tb testing.TB) (*local.Cluster, string) {
	tb.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c, err := local.Start(ctx, local.Options{})
		if err != nil {
			shared.err = err
			return
		}
		shared.cluster = c
		cfg := config.Default()
		cfg.Listen = "127.0.0.1:0"
		cfg.Admin.Listen = ""
		cfg.Primary = config.Node{Host: c.Primary.Host, Port: c.Primary.Port, Weight: 1}
		cfg.Pool.Size = 20
		cfg.Auth.Users = []config.User{{Name: local.AppUser, Password: local.AppPassword}}
		cfg.TLS.Server = "disable"
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		srv, err := proxy.New(cfg, proxy.Options{Registerer: prometheus.NewRegistry(), Logger: log})
		if err != nil {
			shared.err = fmt.Errorf("proxy.New: %w", err)
			return
		}
		ln, err := proxy.Listen("127.0.0.1:0") // as cmd/pgsluice listens
		if err != nil {
			shared.err = err
			return
		}
		shared.srv, shared.proxyLn = srv, ln
		go srv.Serve(ln)
	})
	if shared.err != nil {
		tb.Fatalf("bench environment: %v", shared.err)
	}
	return shared.cluster, shared.proxyLn.Addr().String()
}

func dsn(addr string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", local.AppUser, local.AppPassword, addr, local.AppDatabase)
}
