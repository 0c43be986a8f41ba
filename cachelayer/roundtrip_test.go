package cachelayer

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// roundTrips counts the commands and pipelines a go-redis client sends:
// one per round trip (a new connection's HELLO aside).
type roundTrips struct{ n atomic.Int64 }

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "hello" { // a new connection's handshake
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// count returns the round trips fn made.
func (h *roundTrips) count(fn func()) int64 {
	before := h.n.Load()
	fn()
	return h.n.Load() - before
}

// A Redis hit whose caller names the entry's tables costs one round trip
// (entry and generations in one pipeline), in the Redis tier and in the
// Redis path of Tiered; without the hint, or with a wrong one, it costs
// two and is still correct. Invalidation is seen either way.
func TestRedisHitOneRoundTrip(t *testing.T) {
	srv := startRedis(t)
	r := newTestRedis(t, RedisOptions{Addr: srv.Addr()})
	h := &roundTrips{}
	r.client.AddHook(h)
	tiered := newTestTiered(t, srv.Addr(), RedisOptions{})
	th := &roundTrips{}
	tiered.r.client.AddHook(th)

	put(t, r, "db", "q", []byte("v1"), time.Minute, "b", "a")
	for _, tc := range []struct {
		name   string
		c      Cache
		h      *roundTrips
		tables []string
		want   int64
	}{
		{"redis hinted", r, h, []string{"a", "b"}, 1},
		{"redis hinted unsorted", r, h, []string{"b", "a", "b"}, 1},
		{"redis no hint", r, h, nil, 2},
		{"redis wrong hint", r, h, []string{"a"}, 2},
		{"tiered from redis hinted", tiered, th, []string{"a", "b"}, 1},
		{"tiered from memory", tiered, th, []string{"a", "b"}, 1},
	} {
		var f []byte
		var ok bool
		n := tc.h.count(func() { f, ok = tc.c.Get(bg, "db", key("q"), tc.tables) })
		if !ok || string(f) != "v1" {
			t.Fatalf("%s: Get = %q %v", tc.name, f, ok)
		}
		if n != tc.want {
			t.Errorf("%s: %d round trips, want %d", tc.name, n, tc.want)
		}
	}
	// Invalidation through another client is seen by a hinted Get, in
	// both tiers, and a missing generation key never matches.
	other := newTestRedis(t, RedisOptions{Addr: srv.Addr()})
	other.Invalidate(bg, "db", []string{"a"})
	if _, ok := r.Get(bg, "db", key("q"), []string{"a", "b"}); ok {
		t.Fatal("redis: hinted Get served an entry invalidated by another instance")
	}
	if _, ok := tiered.Get(bg, "db", key("q"), []string{"a", "b"}); ok {
		t.Fatal("tiered: hinted Get served an entry invalidated by another instance")
	}
	put(t, r, "db", "q2", []byte("v2"), time.Minute, "c")
	if err := rawClient(t, srv.Addr()).Del(bg, r.slotKey(genSlot{db: "db", table: "c", kind: slotTable})).Err(); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Get(bg, "db", key("q2"), []string{"c"}); ok {
		t.Fatal("hinted Get served an entry whose generation key was lost")
	}
}
