package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy"
)

// reloader re-reads the configuration file and applies it to the running
// server: on SIGHUP, when the file changes, and on the admin console's
// RELOAD. Reloads are serialised.
type reloader struct {
	path  string
	srv   *proxy.Server
	log   *slog.Logger
	level *slog.LevelVar

	mu      sync.Mutex
	current config.Config
}

// reload loads the file (defaults and PGSLUICE_* environment as at start)
// and applies it. An invalid file changes nothing: each problem is logged
// with its key and the error is returned. A *proxy.NotReloadedError means
// the rest was applied.
func (r *reloader) reload(trigger string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	next, err := config.Load(r.path)
	if err != nil {
		var ve *config.ValidationError
		if errors.As(err, &ve) {
			for _, p := range ve.Problems {
				key, msg := problemKey(p)
				r.log.Error("configuration reload rejected; the running configuration stays in force", "trigger", trigger, "file", r.path, "key", key, "problem", msg)
			}
		} else {
			r.log.Error("configuration reload rejected; the running configuration stays in force", "trigger", trigger, "file", r.path, "err", err)
		}
		return err
	}
	err = r.srv.Reload(next)
	if err != nil && !proxy.IsNotReloaded(err) {
		r.log.Error("configuration reload rejected; the running configuration stays in force", "trigger", trigger, "err", err)
		return err
	}
	r.level.Set(logLevel(next.Log.Level))
	r.current = next
	r.log.Info("configuration reload done", "trigger", trigger, "file", r.path)
	return err
}

// shutdownTimeout returns the current shutdown_timeout.
func (r *reloader) shutdownTimeout() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current.ShutdownTimeout
}

// watch polls the file every interval and reloads when its content
// changes (a rename over it, as editors and Kubernetes ConfigMaps do,
// counts). Polling needs no extra dependency and works on every
// filesystem; a second is quick enough for configuration.
func (r *reloader) watch(ctx context.Context, interval time.Duration) {
	if r.path == "" {
		return
	}
	last := fileSum(r.path)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		sum := fileSum(r.path)
		if sum == nil || bytes.Equal(sum, last) {
			continue
		}
		// Let a writer finish: reload once the content is stable.
		time.Sleep(interval / 4)
		if again := fileSum(r.path); !bytes.Equal(again, sum) {
			continue
		}
		last = sum
		r.reload("file change")
	}
}

func fileSum(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	s := sha256.Sum256(b)
	return s[:]
}

// problemKey splits one config.ValidationError problem into the key it
// names and the rest, for a log line with a key= attribute. It knows the
// shapes Load produces: "pool.size: want >= 1", "'pool' has invalid keys:
// sise, foo" (unknown keys, listed as pool.sise,pool.foo) and
// "'pool.acquire_timeout' time: invalid duration …".
func problemKey(p string) (key, msg string) {
	if rest, ok := strings.CutPrefix(p, "'"); ok {
		if prefix, after, ok := strings.Cut(rest, "'"); ok {
			if keys, ok := strings.CutPrefix(after, " has invalid keys: "); ok {
				var full []string
				for _, k := range strings.Split(keys, ",") {
					k = strings.TrimSpace(k)
					if prefix != "" {
						k = prefix + "." + k
					}
					full = append(full, k)
				}
				return strings.Join(full, ","), "unknown key"
			}
			return prefix, strings.TrimSpace(after)
		}
	}
	if k, m, ok := strings.Cut(p, ": "); ok {
		return k, m
	}
	return "", p
}
