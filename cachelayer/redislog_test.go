package cachelayer

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordHandler keeps the messages logged through it.
type recordHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	h.mu.Lock()
	h.msgs = append(h.msgs, b.String())
	h.mu.Unlock()
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

// go-redis's own messages about an unreachable Redis reach the tier's slog
// logger (at debug level), not stderr.
func TestRedisClientMessagesGoToSlog(t *testing.T) {
	h := &recordHandler{}
	r := newTestRedis(t, RedisOptions{Addr: "127.0.0.1:1", Timeout: 50 * time.Millisecond, Logger: slog.New(h)})
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.Get(bg, "db", key("q"), nil) // a bypass: nothing listens there
		h.mu.Lock()
		var found string
		for _, m := range h.msgs {
			if strings.HasPrefix(m, "redis client ") && strings.Contains(m, "dial") {
				found = m
			}
		}
		h.mu.Unlock()
		if found != "" {
			t.Logf("logged: %s", found)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dial failure logged through slog in 5s; got %q", h.msgs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
