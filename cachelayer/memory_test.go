package cachelayer

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
func key(s string) Key                       { return sha256.Sum256([]byte(s)) }
func frames(n int, fill byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = fill
	}
	return b
}

var bg = context.Background()

// put snapshots and stores in one step (no query in between).
func put(t testing.TB, c Cache, db, k string, f []byte, ttl time.Duration, tables ...string) {
	t.Helper()
	g, ok := c.Generations(bg, db, tables)
	if !ok {
		t.Fatalf("Generations(%s, %v) failed", db, tables)
	}
	if !c.Set(bg, key(k), f, g, ttl) {
		t.Fatalf("Set(%s) not stored", k)
	}
}

func newTestMemory(t testing.TB, opts MemoryOptions) (*Memory, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	if opts.SweepInterval == 0 {
		opts.SweepInterval = -1
	}
	m := NewMemory(opts, reg)
	t.Cleanup(func() { m.Close() })
	return m, reg
}

func TestMemoryGetSet(t *testing.T) {
	m, reg := newTestMemory(t, MemoryOptions{})
	if _, ok := m.Get(bg, "db", key("q"), nil); ok {
		t.Fatal("hit on empty cache")
	}
	put(t, m, "db", "q", []byte("frames"), time.Minute, "public.t")
	got, ok := m.Get(bg, "db", key("q"), nil)
	if !ok || string(got) != "frames" {
		t.Fatalf("Get = %q, %v", got, ok)
	}
	if _, ok := m.Get(bg, "other", key("q"), nil); ok {
		t.Fatal("entry served for another database")
	}
	st := m.Stats()
	if st.Hits != 1 || st.Misses != 2 || st.Entries != 1 || st.Bytes != entrySize([]byte("frames"), []string{"public.t"}) {
		t.Fatalf("stats = %+v", st)
	}
	if v := testutil.ToFloat64(m.m.hits); v != 1 {
		t.Fatalf("hits metric = %v", v)
	}
	n, err := testutil.GatherAndCount(reg, "pgsluice_cache_hits_total", "pgsluice_cache_misses_total")
	if err != nil || n != 2 {
		t.Fatalf("gathered %d series, err %v", n, err)
	}
}

func TestMemoryLRUBudget(t *testing.T) {
	const n = 10
	size := entrySize(frames(100, 0), []string{"t"})
	m, _ := newTestMemory(t, MemoryOptions{Shards: 1, MaxBytes: n * size})
	for i := range n {
		put(t, m, "db", fmt.Sprint(i), frames(100, byte(i)), time.Minute, "t")
	}
	if st := m.Stats(); st.Entries != n || st.Evictions != 0 || st.Bytes != n*size {
		t.Fatalf("full cache stats = %+v", st)
	}
	// Touch 0 so that 1 becomes the least recently used.
	if _, ok := m.Get(bg, "db", key("0"), nil); !ok {
		t.Fatal("0 missing")
	}
	put(t, m, "db", "new1", frames(100, 1), time.Minute, "t")
	put(t, m, "db", "new2", frames(100, 1), time.Minute, "t")
	for _, tc := range []struct {
		k    string
		want bool
	}{{"0", true}, {"1", false}, {"2", false}, {"3", true}, {"9", true}, {"new1", true}, {"new2", true}} {
		if _, ok := m.Get(bg, "db", key(tc.k), nil); ok != tc.want {
			t.Errorf("Get(%s) = %v, want %v", tc.k, ok, tc.want)
		}
	}
	st := m.Stats()
	if st.Evictions != 2 || st.Entries != n || st.Bytes > n*size {
		t.Fatalf("stats after eviction = %+v", st)
	}
	if v := testutil.ToFloat64(m.m.evictions.WithLabelValues("lru")); v != 2 {
		t.Fatalf("lru evictions metric = %v", v)
	}
	// Replacing a key does not count as an eviction and keeps bytes exact.
	put(t, m, "db", "new2", frames(50, 2), time.Minute, "t")
	if st := m.Stats(); st.Evictions != 2 || st.Bytes != (n-1)*size+entrySize(frames(50, 0), []string{"t"}) {
		t.Fatalf("stats after replace = %+v", st)
	}
}

func TestMemoryMaxEntryBytes(t *testing.T) {
	m, _ := newTestMemory(t, MemoryOptions{MaxEntryBytes: 100})
	g, _ := m.Generations(bg, "db", nil)
	if m.Set(bg, key("big"), frames(101, 0), g, time.Minute) {
		t.Fatal("oversized entry stored")
	}
	if !m.Set(bg, key("ok"), frames(100, 0), g, time.Minute) {
		t.Fatal("entry at the limit refused")
	}
	if m.Set(bg, key("zero"), []byte("x"), Gens{}, time.Minute) {
		t.Fatal("zero Gens accepted")
	}
}

func TestMemoryTTL(t *testing.T) {
	clk := newFakeClock()
	m, _ := newTestMemory(t, MemoryOptions{Now: clk.Now, DefaultTTL: 30 * time.Second})
	put(t, m, "db", "short", []byte("a"), 10*time.Second, "t")
	put(t, m, "db", "default", []byte("b"), 0, "t")
	put(t, m, "db", "swept", []byte("c"), 10*time.Second, "t")
	clk.Advance(9 * time.Second)
	if _, ok := m.Get(bg, "db", key("short"), nil); !ok {
		t.Fatal("expired too early")
	}
	clk.Advance(time.Second)
	if _, ok := m.Get(bg, "db", key("short"), nil); ok {
		t.Fatal("served after TTL")
	}
	if _, ok := m.Get(bg, "db", key("default"), nil); !ok {
		t.Fatal("default TTL entry expired early")
	}
	m.sweep() // removes "swept" without a Get
	if st := m.Stats(); st.Entries != 1 || st.Evictions != 2 {
		t.Fatalf("stats = %+v", st)
	}
	if v := testutil.ToFloat64(m.m.evictions.WithLabelValues("ttl")); v != 2 {
		t.Fatalf("ttl evictions = %v", v)
	}
	clk.Advance(20 * time.Second)
	if _, ok := m.Get(bg, "db", key("default"), nil); ok {
		t.Fatal("served after default TTL")
	}
}

func TestMemoryInvalidation(t *testing.T) {
	type entry struct {
		db     string
		tables []string
	}
	entries := map[string]entry{
		"a":     {"db1", []string{"a"}},
		"b":     {"db1", []string{"b"}},
		"ab":    {"db1", []string{"b", "a", "a"}},
		"none":  {"db1", nil},
		"db2a":  {"db2", []string{"a"}},
		"db2ab": {"db2", []string{"a", "b"}},
	}
	cases := []struct {
		name    string
		op      func(Cache)
		survive []string
	}{
		{"table a in db1", func(c Cache) { c.Invalidate(bg, "db1", []string{"a"}) }, []string{"b", "none", "db2a", "db2ab"}},
		{"tables a,b in db2", func(c Cache) { c.Invalidate(bg, "db2", []string{"b", "a"}) }, []string{"a", "b", "ab", "none"}},
		{"unknown table", func(c Cache) { c.Invalidate(bg, "db1", []string{"zzz"}) }, []string{"a", "b", "ab", "none", "db2a", "db2ab"}},
		{"no tables", func(c Cache) { c.Invalidate(bg, "db1", nil) }, []string{"a", "b", "ab", "none", "db2a", "db2ab"}},
		{"flush db1", func(c Cache) { c.FlushDB(bg, "db1") }, []string{"db2a", "db2ab"}},
		{"flush all", func(c Cache) { c.FlushAll(bg) }, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := newTestMemory(t, MemoryOptions{Shards: 4})
			for k, e := range entries {
				put(t, m, e.db, k, []byte(k), time.Minute, e.tables...)
			}
			tc.op(m)
			want := map[string]bool{}
			for _, k := range tc.survive {
				want[k] = true
			}
			for k, e := range entries {
				if _, ok := m.Get(bg, e.db, key(k), nil); ok != want[k] {
					t.Errorf("Get(%s) = %v, want %v", k, ok, want[k])
				}
			}
			if st := m.Stats(); st.Entries != int64(len(tc.survive)) {
				t.Errorf("entries = %d, want %d (memory not freed eagerly)", st.Entries, len(tc.survive))
			}
			// New entries for invalidated tables are cacheable again.
			put(t, m, "db1", "again", []byte("x"), time.Minute, "a")
			if _, ok := m.Get(bg, "db1", key("again"), nil); !ok {
				t.Error("entry stored after invalidation not served")
			}
		})
	}
}

// TestMemoryGenerationsRace: a write that commits while a slow read runs
// must make the read's Set a no-op.
func TestMemoryGenerationsRace(t *testing.T) {
	m, reg := newTestMemory(t, MemoryOptions{})
	g, _ := m.Generations(bg, "db", []string{"t", "u"})
	m.Invalidate(bg, "db", []string{"u"}) // write commits during the read
	if m.Set(bg, key("q"), []byte("old"), g, time.Minute) {
		t.Fatal("Set accepted a snapshot taken before an invalidation")
	}
	if _, ok := m.Get(bg, "db", key("q"), nil); ok {
		t.Fatal("stale result served")
	}
	if v := testutil.ToFloat64(m.m.setDrops.WithLabelValues("generation_moved")); v != 1 {
		t.Fatalf("set_drops{generation_moved} = %v", v)
	}
	_ = reg
	// Flushes move snapshots too.
	for _, flush := range []func(){func() { m.FlushDB(bg, "db") }, func() { m.FlushAll(bg) }} {
		g, _ := m.Generations(bg, "db", []string{"t"})
		flush()
		if m.Set(bg, key("q"), []byte("old"), g, time.Minute) {
			t.Fatal("Set accepted a snapshot taken before a flush")
		}
	}
	// Other tables and databases do not.
	g, _ = m.Generations(bg, "db", []string{"t"})
	m.Invalidate(bg, "db", []string{"u"})
	m.Invalidate(bg, "db2", []string{"t"})
	if !m.Set(bg, key("q"), []byte("new"), g, time.Minute) {
		t.Fatal("unrelated invalidation dropped the Set")
	}
}

// TestMemoryGenerationsRaceConcurrent hammers Set against Invalidate: after
// the final Invalidate returns, no entry may be served.
func TestMemoryGenerationsRaceConcurrent(t *testing.T) {
	m, _ := newTestMemory(t, MemoryOptions{Shards: 4})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				g, _ := m.Generations(bg, "db", []string{"t"})
				m.Set(bg, key(fmt.Sprint(w, i%50)), []byte("x"), g, time.Minute)
			}
		}()
	}
	for range 200 {
		m.Invalidate(bg, "db", []string{"t"})
	}
	close(stop)
	wg.Wait()
	m.Invalidate(bg, "db", []string{"t"})
	for w := range 4 {
		for i := range 50 {
			if _, ok := m.Get(bg, "db", key(fmt.Sprint(w, i)), nil); ok {
				t.Fatalf("entry %d/%d served after invalidation", w, i)
			}
		}
	}
	if st := m.Stats(); st.Entries != 0 || st.Bytes != 0 {
		t.Fatalf("stats after invalidation = %+v", st)
	}
}

func TestDoSingleFlight(t *testing.T) {
	m, _ := newTestMemory(t, MemoryOptions{FlightWait: 10 * time.Second})
	var fills atomic.Int32
	release := make(chan struct{})
	const n = 8
	var wg sync.WaitGroup
	results := make([]string, n)
	hits := make([]bool, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, hit, err := m.Do(bg, "db", key("q"), []string{"t"}, time.Minute, func() ([]byte, bool, error) {
				fills.Add(1)
				<-release
				return []byte("result"), true, nil
			})
			if err != nil {
				t.Error(err)
			}
			results[i], hits[i] = string(f), hit
		}()
	}
	// Wait until everyone is either leading or waiting.
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.m.flight.WithLabelValues("leader")) != 1 || waiting(m) < n-1 {
		if time.Now().After(deadline) {
			t.Fatal("callers did not join the flight")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if fills.Load() != 1 {
		t.Fatalf("fill ran %d times", fills.Load())
	}
	nhit := 0
	for i := range n {
		if results[i] != "result" {
			t.Fatalf("result %d = %q", i, results[i])
		}
		if hits[i] {
			nhit++
		}
	}
	if nhit != n-1 {
		t.Fatalf("%d callers reported hit, want %d", nhit, n-1)
	}
	if f, hit, _ := m.Do(bg, "db", key("q"), []string{"t"}, time.Minute, nil); !hit || string(f) != "result" {
		t.Fatal("result not cached after flight")
	}
}

// waiting counts Do callers blocked behind a leader: misses beyond the leader's.
func waiting(m *Memory) int { return int(m.Stats().Misses) - 1 }

func TestDoWaitTimeoutAndErrors(t *testing.T) {
	m, _ := newTestMemory(t, MemoryOptions{FlightWait: 20 * time.Millisecond})
	release := make(chan struct{})
	leaderIn := make(chan struct{})
	var fills atomic.Int32
	go m.Do(bg, "db", key("q"), nil, time.Minute, func() ([]byte, bool, error) {
		fills.Add(1)
		close(leaderIn)
		<-release
		return []byte("leader"), true, nil
	})
	<-leaderIn
	f, hit, err := m.Do(bg, "db", key("q"), nil, time.Minute, func() ([]byte, bool, error) {
		fills.Add(1)
		return []byte("own"), false, nil
	})
	close(release)
	if err != nil || hit || string(f) != "own" || fills.Load() != 2 {
		t.Fatalf("follower after timeout: %q hit=%v err=%v fills=%d", f, hit, err, fills.Load())
	}
	if v := testutil.ToFloat64(m.m.flight.WithLabelValues("timeout")); v != 1 {
		t.Fatalf("timeout outcome = %v", v)
	}
	// A fill error is returned and nothing is cached.
	boom := errors.New("boom")
	if _, _, err := m.Do(bg, "db", key("e"), nil, time.Minute, func() ([]byte, bool, error) { return nil, true, boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if _, ok := m.Get(bg, "db", key("e"), nil); ok {
		t.Fatal("failed fill cached")
	}
	// Not cacheable: returned, not cached.
	if f, _, _ := m.Do(bg, "db", key("nc"), nil, time.Minute, func() ([]byte, bool, error) { return []byte("x"), false, nil }); string(f) != "x" {
		t.Fatal("uncacheable result not returned")
	}
	if _, ok := m.Get(bg, "db", key("nc"), nil); ok {
		t.Fatal("uncacheable result cached")
	}
}

// TestDoStaleFlightNotShared: an invalidation during the leader's fill must
// not let waiters receive the leader's (possibly stale) result.
func TestDoStaleFlightNotShared(t *testing.T) {
	m, _ := newTestMemory(t, MemoryOptions{FlightWait: 10 * time.Second})
	release := make(chan struct{})
	leaderIn := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Do(bg, "db", key("q"), []string{"t"}, time.Minute, func() ([]byte, bool, error) {
			close(leaderIn)
			<-release
			return []byte("v1"), true, nil
		})
	}()
	<-leaderIn
	res := make(chan string, 1)
	go func() {
		f, _, _ := m.Do(bg, "db", key("q"), []string{"t"}, time.Minute, func() ([]byte, bool, error) {
			return []byte("v2"), true, nil
		})
		res <- string(f)
	}()
	for waiting(m) < 1 {
		time.Sleep(time.Millisecond)
	}
	m.Invalidate(bg, "db", []string{"t"}) // the write the follower must see
	close(release)
	<-done
	if got := <-res; got != "v2" {
		t.Fatalf("follower got %q, want its own fill v2", got)
	}
}
