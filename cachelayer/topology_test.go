package cachelayer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestRedisClusterForm runs the Redis tier and a tiered pair against a real
// one-node Redis Cluster. Redis refuses multi-key commands across hash slots
// (CROSSSLOT) even on one node, so this checks the key layout: generation
// keys share a hash tag, entries are spread.
func TestRedisClusterForm(t *testing.T) {
	srv := startRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	raw := rawClient(t, srv.Addr())
	if err := raw.Do(bg, "CLUSTER", "ADDSLOTSRANGE", "0", "16383").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "cluster_state:ok", func() bool {
		info, _ := raw.ClusterInfo(bg).Result()
		return strings.Contains(info, "cluster_state:ok")
	})
	newCluster := func() Cache {
		r, err := NewRedis(RedisOptions{Addrs: []string{srv.Addr()}, Timeout: testTimeout, StaleBound: -1}, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		c := NewTiered(NewMemory(MemoryOptions{SweepInterval: -1}, nil), r)
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := newCluster(), newCluster()
	put(t, a, "db", "q", []byte("v"), time.Minute, "public.a", "public.b", "public.c")
	if f, ok := b.Get(bg, "db", key("q"), nil); !ok || string(f) != "v" {
		t.Fatalf("B Get = %q %v", f, ok)
	}
	a.Invalidate(bg, "db", []string{"public.c", "public.a"})
	if _, ok := b.Get(bg, "db", key("q"), nil); ok {
		t.Fatal("B served after A.Invalidate")
	}
	a.FlushDB(bg, "db")
	a.FlushAll(bg)
	newChecker([]Cache{a, b}, 4).run(t, time.Second, 1, 2, false)
	for _, c := range []Cache{a, b} {
		if st := c.Stats(); st.Bypasses != 0 {
			t.Fatalf("bypasses in cluster mode (CROSSSLOT?): %+v", st)
		}
	}
}

// TestRedisSentinelForm runs the Redis tier through a real sentinel that
// monitors a real master.
func TestRedisSentinelForm(t *testing.T) {
	master := startRedis(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	host, port, _ := strings.Cut(master.Addr(), ":")
	body := "sentinel monitor pgs " + host + " " + port + " 1\nsentinel down-after-milliseconds pgs 5000\n"
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	sentinel := &testRedis{t: t, dir: dir, port: freePort(t)}
	sentinel.start(conf, "--sentinel")
	t.Cleanup(sentinel.Stop)
	r := newTestRedis(t, RedisOptions{MasterName: "pgs", SentinelAddrs: []string{sentinel.Addr()}})
	waitFor(t, "a snapshot through sentinel", func() bool {
		_, ok := r.Generations(bg, "db", []string{"t"})
		return ok
	})
	put(t, r, "db", "q", []byte("v"), time.Minute, "t")
	if f, ok := r.Get(bg, "db", key("q"), nil); !ok || string(f) != "v" {
		t.Fatalf("Get = %q %v", f, ok)
	}
	// The entry really is on the monitored master.
	if n := rawClient(t, master.Addr()).Exists(bg, r.entryKey(key("q"))).Val(); n != 1 {
		t.Fatalf("entry not on master (EXISTS=%d)", n)
	}
	r.Invalidate(bg, "db", []string{"t"})
	if _, ok := r.Get(bg, "db", key("q"), nil); ok {
		t.Fatal("served after Invalidate")
	}
}
