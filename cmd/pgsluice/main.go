// Command pgsluice is the pgsluice proxy: flags, configuration, metrics
// registry, signals and Serve. All logic lives in the proxy package.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

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
	watchConfig := fs.Duration("watch-config", time.Second, "how often to check the config file for changes and reload it (0: only on SIGHUP)")
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
	level := new(slog.LevelVar)
	level.Set(logLevel(cfg.Log.Level))
	log := newLogger(cfg.Log, level)
	// SIGHUP (reload) and SIGUSR2 (handover) are caught from here on: by
	// default they would end the process.
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP, syscall.SIGUSR2)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rl := &reloader{path: cfgPath, log: log, level: level, current: cfg}
	// admin SHUTDOWN: the main loop below drains as on SIGTERM.
	shutdownReq := make(chan struct{}, 1)
	requestShutdown := func() {
		select {
		case shutdownReq <- struct{}{}:
		default: // already asked
		}
	}
	srv, err := proxy.New(cfg, proxy.Options{Registerer: reg, Gatherer: reg, Logger: log, Version: version,
		Reload: func() error { return rl.reload("admin RELOAD") }, Shutdown: requestShutdown})
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgsluice:", err)
		return 2
	}
	rl.srv = srv
	// SO_REUSEPORT listeners: a new pgsluice can start on the same
	// addresses and take over (SIGUSR2 here; see proxy/handover.go).
	ln, err := proxy.Listen(cfg.Listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgsluice:", err)
		return 1
	}
	if cfg.Admin.Listen != "" {
		aln, err := proxy.Listen(cfg.Admin.Listen)
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
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	if *watchConfig > 0 {
		go rl.watch(watchCtx, *watchConfig)
	}
	for {
		select {
		case sig := <-hups:
			if sig == syscall.SIGHUP {
				rl.reload("SIGHUP")
				continue
			}
			// SIGUSR2: hand the addresses over to a newer process.
			stopWatch()
			timeout := rl.shutdownTimeout()
			log.Info("handing over: serving connected clients until they leave", "timeout", timeout)
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			go func() {
				// SIGTERM/SIGINT or admin SHUTDOWN during a handover
				// (from a console session still connected here): stop
				// now.
				select {
				case <-sigs:
				case <-shutdownReq:
				case <-ctx.Done():
				}
				cancel()
			}()
			err := srv.Handover(ctx)
			cancel()
			if err != nil {
				log.Warn("handover: closed remaining clients", "err", err)
			}
			log.Info("handover done; exiting")
			return 0
		case sig := <-sigs:
			return shutdown(srv, log, sigs, sig.String(), rl.shutdownTimeout())
		case <-shutdownReq:
			return shutdown(srv, log, sigs, "admin SHUTDOWN", rl.shutdownTimeout())
		case err := <-serveErr:
			if err != nil {
				log.Error("listener failed", "err", err)
				return 1
			}
			return 0
		}
	}
}

// shutdown drains on SIGTERM/SIGINT or admin SHUTDOWN (why): idle clients
// are closed, running transactions may finish within timeout; a signal
// during the drain stops at once. (A second SHUTDOWN cannot come: the
// drain closes idle console sessions first.)
func shutdown(srv *proxy.Server, log *slog.Logger, sigs chan os.Signal, why string, timeout time.Duration) int {
	log.Info("shutting down: waiting for running transactions", "reason", why, "timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		<-sigs // a second signal: stop now
		cancel()
	}()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Warn("shutdown timeout: closed remaining clients", "err", err)
	}
	return 0
}

func logLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// newLogger builds the logger; level can change later (log.level reloads).
func newLogger(c config.LogConfig, level *slog.LevelVar) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
