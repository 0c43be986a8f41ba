package cachelayer

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// testTimeout is generous: tests share two cores under -race, and a timeout
// would turn an expected hit into a bypass.
const testTimeout = time.Second

func newTestRedis(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	if opts.Timeout == 0 {
		opts.Timeout = testTimeout
	}
	r, err := NewRedis(opts, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func newTestTiered(t testing.TB, addr string, ropts RedisOptions) *Tiered {
	t.Helper()
	ropts.Addr = addr
	if ropts.Timeout == 0 {
		ropts.Timeout = testTimeout
	}
	reg := prometheus.NewRegistry()
	r, err := NewRedis(ropts, reg)
	if err != nil {
		t.Fatal(err)
	}
	tc := NewTiered(NewMemory(MemoryOptions{SweepInterval: -1}, reg), r)
	t.Cleanup(func() { tc.Close() })
	return tc
}

func rawClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestNewRedisOptions(t *testing.T) {
	cases := []struct {
		name    string
		opts    RedisOptions
		wantErr string
	}{
		{"none", RedisOptions{}, "needs Addr"},
		{"sentinel without sentinels", RedisOptions{MasterName: "m"}, "SentinelAddrs"},
		{"cluster with db", RedisOptions{Addrs: []string{"127.0.0.1:1"}, DB: 2}, "does not support DB"},
		{"standalone", RedisOptions{Addr: "127.0.0.1:1"}, ""},
		{"sentinel", RedisOptions{MasterName: "m", SentinelAddrs: []string{"127.0.0.1:1"}}, ""},
		{"cluster", RedisOptions{Addrs: []string{"127.0.0.1:1"}}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRedis(tc.opts, nil)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.opts.Timeout != 20*time.Millisecond {
				t.Fatalf("default timeout = %v", r.opts.Timeout)
			}
			r.Close()
		})
	}
}

func TestRedisSetGetInvalidate(t *testing.T) {
	srv := startRedis(t)
	r := newTestRedis(t, RedisOptions{Addr: srv.Addr()})
	put(t, r, "db1", "a", []byte("A"), time.Minute, "a")
	put(t, r, "db1", "ab", []byte("AB"), time.Minute, "a", "b")
	put(t, r, "db1", "b", []byte("B"), time.Minute, "b")
	put(t, r, "db2", "a", []byte("2A"), time.Minute, "a") // same key string, other db: overwrites "a"
	if f, ok := r.Get(bg, "db2", key("a"), nil); !ok || string(f) != "2A" {
		t.Fatalf("Get = %q %v", f, ok)
	}
	if _, ok := r.Get(bg, "db1", key("a"), nil); ok {
		t.Fatal("entry of db2 served for db1")
	}
	put(t, r, "db1", "a", []byte("A"), time.Minute, "a")
	put(t, r, "db2", "a2", []byte("2A"), time.Minute, "a")

	r.Invalidate(bg, "db1", []string{"a"})
	for _, tc := range []struct {
		db, k string
		want  bool
	}{{"db1", "a", false}, {"db1", "ab", false}, {"db1", "b", true}, {"db2", "a2", true}} {
		if _, ok := r.Get(bg, tc.db, key(tc.k), nil); ok != tc.want {
			t.Errorf("after Invalidate: Get(%s/%s) = %v, want %v", tc.db, tc.k, ok, tc.want)
		}
	}
	r.FlushDB(bg, "db1")
	if _, ok := r.Get(bg, "db1", key("b"), nil); ok {
		t.Error("db1 entry served after FlushDB")
	}
	if _, ok := r.Get(bg, "db2", key("a2"), nil); !ok {
		t.Error("db2 entry lost by FlushDB(db1)")
	}
	r.FlushAll(bg)
	if _, ok := r.Get(bg, "db2", key("a2"), nil); ok {
		t.Error("entry served after FlushAll")
	}

	// Generations race: an invalidation between snapshot and Set drops it.
	g, ok := r.Generations(bg, "db1", []string{"t"})
	if !ok {
		t.Fatal("snapshot failed")
	}
	r.Invalidate(bg, "db1", []string{"t"})
	if r.Set(bg, key("race"), []byte("old"), g, time.Minute) {
		t.Fatal("Set accepted a moved snapshot")
	}
	// TTL is applied in Redis.
	put(t, r, "db1", "ttl", []byte("x"), 1500*time.Millisecond, "t")
	pttl := rawClient(t, srv.Addr()).PTTL(bg, r.entryKey(key("ttl"))).Val()
	if pttl <= 0 || pttl > 1500*time.Millisecond {
		t.Fatalf("PTTL = %v", pttl)
	}
	if st := r.Stats(); st.Bypasses != 0 || st.Hits == 0 {
		t.Fatalf("stats = %+v", st)
	}
}

// TestRedisGenerationKeyLoss: a generation key lost to eviction or a Redis
// restart must never come back to a value an entry recorded.
func TestRedisGenerationKeyLoss(t *testing.T) {
	srv := startRedis(t)
	r := newTestRedis(t, RedisOptions{Addr: srv.Addr()})
	raw := rawClient(t, srv.Addr())
	put(t, r, "db", "q", []byte("v"), time.Minute, "t")
	tk := r.slotKey(genSlot{db: "db", table: "t", kind: slotTable})
	if err := raw.Del(bg, tk).Err(); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Get(bg, "db", key("q"), nil); ok {
		t.Fatal("entry served although its generation key vanished")
	}
	if _, ok := r.Generations(bg, "db", []string{"t"}); !ok { // re-creates the key
		t.Fatal("snapshot failed")
	}
	if _, ok := r.Get(bg, "db", key("q"), nil); ok {
		t.Fatal("entry served after its generation key was re-created")
	}
	// Garbage in a generation key is a miss, not an error.
	put(t, r, "db", "q2", []byte("v"), time.Minute, "t")
	raw.Set(bg, tk, "garbage", 0)
	if _, ok := r.Get(bg, "db", key("q2"), nil); ok {
		t.Fatal("entry served with malformed generation")
	}
	// A corrupt entry is a miss.
	raw.Set(bg, r.entryKey(key("bad")), "\x07junk", time.Minute)
	if _, ok := r.Get(bg, "db", key("bad"), nil); ok {
		t.Fatal("corrupt entry served")
	}
}

// TestTieredTwoInstances: a write-invalidate on A is seen on B at once.
func TestTieredTwoInstances(t *testing.T) {
	srv := startRedis(t)
	a := newTestTiered(t, srv.Addr(), RedisOptions{})
	b := newTestTiered(t, srv.Addr(), RedisOptions{})
	put(t, a, "db", "q", []byte("v1"), time.Minute, "public.t")
	// B finds it in Redis and copies it into its memory tier.
	if f, ok := b.Get(bg, "db", key("q"), nil); !ok || string(f) != "v1" {
		t.Fatalf("B Get = %q %v", f, ok)
	}
	if f, ok := b.Get(bg, "db", key("q"), nil); !ok || string(f) != "v1" {
		t.Fatalf("B second Get = %q %v", f, ok)
	}
	if h := testutil.ToFloat64(b.mem.m.hits); h != 1 {
		t.Fatalf("B memory hits = %v, want 1", h)
	}
	if h := testutil.ToFloat64(a.mem.m.hits); h != 0 {
		t.Fatalf("A memory hits = %v, want 0", h)
	}
	if f, ok := a.Get(bg, "db", key("q"), nil); !ok || string(f) != "v1" {
		t.Fatalf("A Get = %q %v", f, ok)
	}
	a.Invalidate(bg, "db", []string{"public.t"})
	// No waiting for pub/sub: B's Get checks Redis generations.
	if _, ok := b.Get(bg, "db", key("q"), nil); ok {
		t.Fatal("B served an entry A invalidated")
	}
	if _, ok := a.Get(bg, "db", key("q"), nil); ok {
		t.Fatal("A served an entry it invalidated")
	}
	// Pub/sub frees B's memory entries eagerly (B never looked them up).
	put(t, a, "db", "q2", []byte("v2"), time.Minute, "public.u")
	if _, ok := b.Get(bg, "db", key("q2"), nil); !ok {
		t.Fatal("B miss on q2")
	}
	if b.mem.Stats().Entries != 1 {
		t.Fatalf("B memory entries = %d", b.mem.Stats().Entries)
	}
	a.Invalidate(bg, "db", []string{"public.u"})
	waitFor(t, "pub/sub eviction on B", func() bool { return b.mem.Stats().Entries == 0 })
	// FlushDB and FlushAll through A reach B too.
	put(t, b, "db", "q3", []byte("v3"), time.Minute, "x")
	a.FlushDB(bg, "db")
	if _, ok := b.Get(bg, "db", key("q3"), nil); ok {
		t.Fatal("B served after A.FlushDB")
	}
	// B learns of A's FlushDB by pub/sub, asynchronously; a Set whose
	// generations were read before that message arrives is refused (the
	// safe side), so store q4 once B has caught up.
	waitFor(t, "B stores q4 after A's FlushDB", func() bool {
		g, ok := b.Generations(bg, "db", []string{"x"})
		return ok && b.Set(bg, key("q4"), []byte("v4"), g, time.Minute)
	})
	a.FlushAll(bg)
	if _, ok := b.Get(bg, "db", key("q4"), nil); ok {
		t.Fatal("B served after A.FlushAll")
	}
	if st := b.Stats(); st.Bypasses != 0 {
		t.Fatalf("B stats = %+v", st)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func bypassCount(m *metrics, op, reason string) float64 {
	return testutil.ToFloat64(m.bypasses.WithLabelValues(op, reason))
}

// TestTieredRedisKilledAndRestarted: killing Redis mid-run produces no
// errors, only counted bypasses; the stale bound and local invalidations
// hold; a restart is recovered from without intervention.
func TestTieredRedisKilledAndRestarted(t *testing.T) {
	srv := startRedis(t)
	const staleBound = 300 * time.Millisecond
	ropts := RedisOptions{Timeout: 100 * time.Millisecond, BreakerThreshold: 3,
		BreakerBackoff: 20 * time.Millisecond, BreakerMaxBackoff: 200 * time.Millisecond, StaleBound: staleBound}
	a := newTestTiered(t, srv.Addr(), ropts)
	b := newTestTiered(t, srv.Addr(), ropts)
	put(t, a, "db", "keep", []byte("k"), time.Minute, "t1")
	put(t, a, "db", "drop", []byte("d"), time.Minute, "t2")
	for _, k := range []string{"keep", "drop"} {
		if _, ok := a.Get(bg, "db", key(k), nil); !ok {
			t.Fatalf("%s not cached", k)
		}
	}
	srv.Stop()
	killed := time.Now()

	// Within the stale bound, verified memory entries are still served;
	// local invalidations apply at once.
	if _, ok := a.Get(bg, "db", key("keep"), nil); !ok && time.Since(killed) < staleBound/2 {
		t.Fatal("memory entry not served within the stale bound")
	}
	a.Invalidate(bg, "db", []string{"t2"})
	if _, ok := a.Get(bg, "db", key("drop"), nil); ok {
		t.Fatal("locally invalidated entry served during outage")
	}
	if n := testutil.ToFloat64(a.r.m.pending); n != 1 {
		t.Fatalf("pending invalidations = %v, want 1", n)
	}
	// Hammer every operation: no errors, no hits beyond the stale bound.
	time.Sleep(staleBound)
	for i := 0; i < 200; i++ {
		for _, c := range []Cache{a, b} {
			if _, ok := c.Get(bg, "db", key("keep"), nil); ok {
				t.Fatal("entry served beyond the stale bound during outage")
			}
			if g, ok := c.Generations(bg, "db", []string{"t1"}); ok || c.Set(bg, key("new"), []byte("n"), g, time.Minute) {
				t.Fatal("snapshot or Set succeeded without Redis")
			}
			f, hit, err := c.Do(bg, "db", key(fmt.Sprint("do", i%5)), []string{"t1"}, time.Minute,
				func() ([]byte, bool, error) { return []byte("fresh"), true, nil })
			if err != nil || hit || string(f) != "fresh" {
				t.Fatalf("Do during outage = %q %v %v", f, hit, err)
			}
			c.Invalidate(bg, "db", []string{"t3"})
		}
	}
	for _, c := range []*Tiered{a, b} {
		st := c.Stats()
		if st.Bypasses == 0 {
			t.Fatalf("no bypasses counted: %+v", st)
		}
		if bypassCount(c.r.m, "get", reasonBreakerOpen) == 0 {
			t.Fatal("breaker never opened")
		}
		if bypassCount(c.r.m, "get", reasonUnavailable)+bypassCount(c.r.m, "get", reasonTimeout)+
			bypassCount(c.r.m, "snapshot", reasonUnavailable)+bypassCount(c.r.m, "snapshot", reasonTimeout) == 0 {
			t.Fatal("no connection failures counted")
		}
		if testutil.ToFloat64(c.r.m.breakerState) == breakerClosed {
			t.Fatal("breaker gauge closed during outage")
		}
	}
	t.Logf("bypasses during outage: a=%d b=%d", a.Stats().Bypasses, b.Stats().Bypasses)

	// Restart (empty: no persistence). Recovery needs no calls from us.
	srv.Start()
	for _, c := range []*Tiered{a, b} {
		waitFor(t, "breaker to close and pending invalidations to flush", func() bool {
			return c.r.br.isClosed() && c.r.pendingN.Load() == 0
		})
	}
	// Entries verified before the outage are not trusted again: Redis came
	// back empty, so their generations cannot match.
	if _, ok := a.Get(bg, "db", key("keep"), nil); ok {
		t.Fatal("pre-outage entry served after Redis lost its data")
	}
	// go-redis keeps returning its last dial error for up to a second after
	// many failed dials; recovery must still happen without intervention.
	for _, c := range []*Tiered{a, b} {
		waitFor(t, "snapshots to succeed again", func() bool {
			_, ok := c.Generations(bg, "db", []string{"t1"})
			return ok
		})
	}
	put(t, a, "db", "after", []byte("x"), time.Minute, "t1")
	if f, ok := b.Get(bg, "db", key("after"), nil); !ok || string(f) != "x" {
		t.Fatalf("B after recovery = %q %v", f, ok)
	}
	a.Invalidate(bg, "db", []string{"t1"})
	if _, ok := b.Get(bg, "db", key("after"), nil); ok {
		t.Fatal("invalidation after recovery not seen by B")
	}
}

// TestRedisPendingInvalidationResent: an invalidation that failed during an
// outage where Redis kept its data is written when Redis returns, so entries
// other instances cached before the outage are not served again.
func TestRedisPendingInvalidationResent(t *testing.T) {
	srv := startRedis(t)
	ropts := RedisOptions{Timeout: 100 * time.Millisecond, BreakerThreshold: 1, BreakerBackoff: 20 * time.Millisecond,
		BreakerMaxBackoff: 50 * time.Millisecond}
	a := newTestTiered(t, srv.Addr(), ropts)
	b := newTestTiered(t, srv.Addr(), ropts)
	put(t, b, "db", "q", []byte("old"), time.Minute, "t")
	// Simulate a network partition of Redis from everyone by pausing it.
	if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	a.Invalidate(bg, "db", []string{"t"}) // times out: queued
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("Invalidate blocked %v with a 100ms timeout", d)
	}
	if bypassCount(a.r.m, "invalidate", reasonTimeout) != 1 {
		t.Fatal("timeout not counted")
	}
	if err := srv.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pending invalidation flushed", func() bool { return a.r.pendingN.Load() == 0 })
	if _, ok := b.Get(bg, "db", key("q"), nil); ok {
		t.Fatal("B served an entry invalidated during the outage")
	}
}

// TestRedisOOM: writes refused by maxmemory are bypasses; reads keep
// working and the breaker stays closed.
func TestRedisOOM(t *testing.T) {
	srv := startRedis(t, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
	r := newTestRedis(t, RedisOptions{Addr: srv.Addr(), MaxEntryBytes: 1 << 20})
	put(t, r, "db", "small", []byte("s"), time.Minute, "t")
	big := frames(256<<10, 'x')
	oom := false
	for i := 0; i < 64 && !oom; i++ {
		g, ok := r.Generations(bg, "db", []string{"t"})
		if !ok {
			t.Fatal("snapshot failed")
		}
		r.Set(bg, key(fmt.Sprint("big", i)), big, g, time.Minute)
		oom = bypassCount(r.m, "set", reasonOOM) > 0
	}
	if !oom {
		t.Fatal("Redis never refused a write")
	}
	if _, ok := r.Get(bg, "db", key("small"), nil); !ok {
		t.Fatal("read failed while Redis is out of memory")
	}
	if !r.br.isClosed() {
		t.Fatal("OOM opened the breaker")
	}
}

// TestRedisSlow: a paused Redis costs at most about the timeout per call.
func TestRedisSlow(t *testing.T) {
	srv := startRedis(t)
	r := newTestRedis(t, RedisOptions{Addr: srv.Addr(), Timeout: 20 * time.Millisecond, BreakerThreshold: 1000})
	put(t, r, "db", "q", []byte("v"), time.Minute)
	// Warm the pool so the pause hits reads, not dials.
	r.Get(bg, "db", key("q"), nil)
	if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer srv.cmd.Process.Signal(syscall.SIGCONT)
	start := time.Now()
	const n = 5
	for range n {
		if _, ok := r.Get(bg, "db", key("q"), nil); ok {
			t.Fatal("hit from a paused Redis")
		}
	}
	if d := time.Since(start); d > n*150*time.Millisecond {
		t.Fatalf("%d Gets took %v with a 20ms timeout", n, d)
	}
	if bypassCount(r.m, "get", reasonTimeout) != n {
		t.Fatalf("timeouts counted = %v", bypassCount(r.m, "get", reasonTimeout))
	}
	_ = context.Background
}

func TestMetricsRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, err := NewRedis(RedisOptions{Addr: "127.0.0.1:1", Timeout: 50 * time.Millisecond}, reg)
	if err != nil {
		t.Fatal(err)
	}
	c := NewTiered(NewMemory(MemoryOptions{}, reg), r)
	defer c.Close()
	c.Get(bg, "db", key("q"), nil) // unreachable Redis: a bypass, no error
	c.Invalidate(bg, "db", []string{"t"})
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"pgsluice_cache_misses_total", "pgsluice_cache_bypasses_total",
		"pgsluice_cache_invalidations_total", "pgsluice_cache_memory_bytes", "pgsluice_cache_redis_breaker_state",
		"pgsluice_cache_redis_pending_invalidations"} {
		if !names[want] {
			t.Errorf("metric %s not registered (have %v)", want, names)
		}
	}
	if v := testutil.ToFloat64(r.m.pending); v != 1 {
		t.Errorf("pending = %v", v)
	}
}
