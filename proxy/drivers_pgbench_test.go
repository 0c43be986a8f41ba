package proxy_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsluice/pgsluice/config"
)

// pgbench in the client matrix (issue 7): every query mode, in transaction
// and in session pooling, with replica routing (read_your_writes=user) and
// a cache rule on pgbench_accounts. A read-only script over 20 accounts
// must be answered partly from the cache (misses of ruled statements fill
// from the primary) and, for its unruled statement in transaction
// pooling, by the replica (session pooling stays on the primary); the
// built-in simple-update script (-N) must lose nothing: every committed
// update of an account balance has its pgbench_history row, so the growth
// of sum(abalance) equals the sum of the new deltas, and the history grows
// by exactly the transactions pgbench counted.
func TestPgbenchRoutingCacheMatrix(t *testing.T) {
	pgbenchInit(t)
	script := filepath.Join(t.TempDir(), "hot.sql")
	if err := os.WriteFile(script, []byte("\\set aid random(1, 20)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\nSELECT bbalance FROM pgbench_branches WHERE bid = 1;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const clients = 8 // ≤ the pool: in session mode each client holds a server connection
	for _, pool := range []string{"transaction", "session"} {
		for _, mode := range []string{"simple", "extended", "prepared"} {
			t.Run(pool+"_"+mode, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
				defer cancel()
				reg := prometheus.NewRegistry()
				dsn, srv := startProxy(t, cluster, withReplicaReg(reg, func(cfg *config.Config) {
					cfg.Pool.Mode = pool
					cfg.Routing.ReadYourWrites = "user"
					cfg.Cache.Backend = config.CacheMemory
					cfg.Cache.Rules = []config.CacheRule{{Tables: []string{"pgbench_accounts"}, TTL: time.Minute}}
				}))
				if pool == "transaction" {
					waitReplicaReads(t, ctx, connect(t, ctx, dsn))
				}
				balances := func() (accounts, deltas, history int64) {
					t.Helper()
					q := "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT coalesce(sum(delta), 0) FROM pgbench_history), (SELECT count(*) FROM pgbench_history)"
					if err := cluster.QueryRow(ctx, cluster.Primary, q, nil, &accounts, &deltas, &history); err != nil {
						t.Fatal(err)
					}
					return
				}
				run := func(args ...string) int {
					t.Helper()
					cmd := exec.CommandContext(ctx, cluster.Bin("pgbench"), append(append([]string{"-n", "-M", mode,
						"-c", strconv.Itoa(clients), "-j", "2"}, args...), dsn)...)
					cmd.Env = cleanPGEnv()
					out, err := cmd.CombinedOutput()
					if err != nil {
						t.Fatalf("pgbench %v -M %s (%s pooling): %v\n%s", args, mode, pool, err, out)
					}
					if f := failedRE.FindSubmatch(out); f == nil || string(f[1]) != "0" {
						t.Fatalf("want 'number of failed transactions: 0':\n%s", out)
					}
					m := processedRE.FindSubmatch(out)
					if m == nil {
						t.Fatalf("no processed count:\n%s", out)
					}
					n, _ := strconv.Atoi(string(m[1]))
					return n
				}
				if n := run("-f", script, "-t", "100"); n != clients*100 {
					t.Fatalf("read script: %d transactions, want %d", n, clients*100)
				}
				if st := srv.CacheStats(); st.Hits == 0 {
					t.Errorf("%d reads of 20 rows under a cache rule gave no cache hit: %+v", clients*100, st)
				}
				if _, replica, _ := routedCounts(t, reg); pool == "transaction" && replica == 0 {
					t.Error("no statement was routed to the replica")
				}
				acc0, del0, hist0 := balances()
				n := run("-N", "-t", "50")
				if n != clients*50 {
					t.Fatalf("-N: %d transactions, want %d", n, clients*50)
				}
				acc1, del1, hist1 := balances()
				if hist1-hist0 != int64(n) || acc1-acc0 != del1-del0 {
					t.Errorf("after %d -N transactions: history grew by %d, balances by %d, deltas by %d (want %d, and the last two equal)",
						n, hist1-hist0, acc1-acc0, del1-del0, n)
				}
			})
		}
	}
}
