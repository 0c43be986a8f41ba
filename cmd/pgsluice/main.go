// Command pgsluice is the pgsluice proxy: flags, configuration, metrics
// registry, signals and Serve. All logic lives in the proxy package.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("pgsluice", flag.ContinueOnError)
	var cfgPath string
	fs.StringVar(&cfgPath, "config", "", "path of the YAML configuration file")
	fs.StringVar(&cfgPath, "c", "", "shorthand for --config")
	showVersion := fs.Bool("version", false, "print the version and exit")
	printConfig := fs.Bool("print-config", false, "print the effective configuration (secrets masked) and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Println("pgsluice", version)
		return 0
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgsluice:", err)
		return 2
	}
	if *printConfig {
		fmt.Print(cfg.YAML())
		return 0
	}
	log := newLogger(cfg.Log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := proxy.New(cfg, proxy.Options{Registerer: reg, Gatherer: reg, Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgsluice:", err)
		return 2
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgsluice:", err)
		return 1
	}
	if cfg.Admin.Listen != "" {
		aln, err := net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, "pgsluice: admin:", err)
			return 1
		}
		go func() {
			if err := srv.ServeAdmin(aln); err != nil {
				log.Error("admin endpoint stopped", "err", err)
			}
		}()
	}
	log.Info("pgsluice listening", "version", version, "listen", cfg.Listen, "admin", cfg.Admin.Listen,
		"primary", cfg.Primary.Addr(), "pool_mode", cfg.Pool.Mode, "pool_size", cfg.Pool.Size)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case sig := <-sigs:
		log.Info("shutting down: waiting for running transactions", "signal", sig.String(), "timeout", cfg.ShutdownTimeout)
		ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		go func() {
			<-sigs // a second signal: stop now
			cancel()
		}()
		if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
			log.Warn("shutdown timeout: closed remaining clients", "err", err)
		}
		return 0
	case err := <-serveErr:
		if err != nil {
			log.Error("listener failed", "err", err)
			return 1
		}
		return 0
	}
}

func newLogger(c config.LogConfig) *slog.Logger {
	var level slog.Level
	switch strings.ToLower(c.Level) {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
