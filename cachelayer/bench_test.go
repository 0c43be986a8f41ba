package cachelayer

import (
	"testing"
	"time"
)

func BenchmarkMemoryGetHit(b *testing.B) {
	m := NewMemory(MemoryOptions{SweepInterval: -1}, nil)
	defer m.Close()
	keys := make([]Key, 1024)
	for i := range keys {
		keys[i] = key(string(rune(i)))
		put(b, m, "db", string(rune(i)), frames(512, 1), time.Hour, "public.a", "public.b")
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := m.Get(bg, "db", keys[i&1023], nil); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
}

// BenchmarkTieredGetHit measures a memory-tier hit, which includes the MGET
// that verifies the entry's Redis generations (one round trip).
func BenchmarkTieredGetHit(b *testing.B) {
	srv := startRedis(b)
	t := newTestTiered(b, srv.Addr(), RedisOptions{})
	put(b, t, "db", "q", frames(512, 1), time.Hour, "public.a", "public.b")
	if _, ok := t.Get(bg, "db", key("q"), nil); !ok {
		b.Fatal("miss")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, ok := t.Get(bg, "db", key("q"), nil); !ok {
			b.Fatal("miss")
		}
	}
}

// BenchmarkRedisGetHit measures a Redis-tier hit (GET+PTTL, then MGET).
func BenchmarkRedisGetHit(b *testing.B) {
	srv := startRedis(b)
	r := newTestRedis(b, RedisOptions{Addr: srv.Addr()})
	put(b, r, "db", "q", frames(512, 1), time.Hour, "public.a", "public.b")
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, ok := r.Get(bg, "db", key("q"), nil); !ok {
			b.Fatal("miss")
		}
	}
}
