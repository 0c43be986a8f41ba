package bench_test

import (
	"context"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsluice/pgsluice/bench"
	"github.com/pgsluice/pgsluice/deploy/local"
)

// The forwarding-loop benchmarks run `SELECT 1` round trips through an
// in-process pgsluice (proxy.New + Serve, pool of 20, transaction mode) and,
// for reference, directly against the same PostgreSQL. The difference
// between the pgsluice and direct ns/op is what the proxy adds per round
// trip; profile it with
//
//	go test ./bench -run '^$' -bench 'RoundTrip/pgsluice' -cpuprofile cpu.prof
//	go tool pprof -top -focus 'pgsluice/proxy' cpu.prof

func targets(b *testing.B) map[string]string {
	c, proxyAddr := env(b)
	return map[string]string{"direct": c.Primary.Addr(), "pgsluice": proxyAddr}
}

// BenchmarkRoundTrip: one client, sequential round trips.
func BenchmarkRoundTrip(b *testing.B) {
	for _, tn := range []string{"direct", "pgsluice"} {
		for _, proto := range []string{"simple", "extended"} {
			b.Run(tn+"/"+proto, func(b *testing.B) {
				ctx := context.Background()
				conn, err := pgconn.Connect(ctx, dsn(targets(b)[tn]))
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close(ctx)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if err := roundTrip(ctx, conn, proto); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func roundTrip(ctx context.Context, conn *pgconn.PgConn, proto string) error {
	if proto == "simple" {
		_, err := conn.Exec(ctx, "SELECT 1").ReadAll()
		return err
	}
	return conn.ExecParams(ctx, "SELECT 1", nil, nil, nil, nil).Read().Err
}

// BenchmarkRoundTripParallel: GOMAXPROCS*4 clients on a pool of 20, the
// pool contended as in scenario 2.
func BenchmarkRoundTripParallel(b *testing.B) {
	for _, tn := range []string{"direct", "pgsluice"} {
		b.Run(tn+"/extended", func(b *testing.B) {
			addr := targets(b)[tn]
			var failed atomic.Value
			b.SetParallelism(4)
			b.ReportAllocs()
			// cpu-ns/op: CPU of this process (the in-process proxy and the
			// clients) per round trip; pgsluice minus direct is the proxy's
			// share, far less sensitive to a loaded machine than ns/op.
			cpu0, _ := bench.ReadProc(os.Getpid())
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				conn, err := pgconn.Connect(ctx, dsn(addr))
				if err != nil {
					failed.CompareAndSwap(nil, err)
					for pb.Next() {
					}
					return
				}
				defer conn.Close(ctx)
				for pb.Next() {
					if err := roundTrip(ctx, conn, "extended"); err != nil {
						failed.CompareAndSwap(nil, err)
					}
				}
			})
			cpu1, _ := bench.ReadProc(os.Getpid())
			b.ReportMetric(float64(cpu1.CPU-cpu0.CPU)/float64(b.N), "cpu-ns/op")
			if err := failed.Load(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkLogin: a full login (SCRAM-SHA-256) and Terminate per op, with
// the client's PBKDF2 cached (bench.ScramCache) so ns/op is the server
// side's cost plus the network.
func BenchmarkLogin(b *testing.B) {
	for _, tn := range []string{"direct", "pgsluice"} {
		b.Run(tn, func(b *testing.B) {
			addr := targets(b)[tn]
			cache := &bench.ScramCache{}
			ctx := context.Background()
			b.ReportAllocs()
			before := processCPU()
			for i := 0; i < b.N; i++ {
				c, err := bench.ConnectRaw(ctx, addr, local.AppUser, local.AppPassword, local.AppDatabase, cache)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			// Client and (for pgsluice) proxy together: the client's part
			// is the same for both targets.
			b.ReportMetric(float64(processCPU()-before)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
		})
	}
}

// BenchmarkIdleClientMemory opens 1,000 idle clients through the
// in-process pgsluice per iteration and reports what one idle client costs
// in Go heap (in use, after a GC) and goroutine stacks. The harness's
// scenario 5 measures the same thing as RSS of the real binary; this
// breaks it down. Run it with -benchtime 1x.
func BenchmarkIdleClientMemory(b *testing.B) {
	_, addr := env(b)
	const n = 1000
	ctx := context.Background()
	cache := &bench.ScramCache{}
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		conns := make([]*bench.RawConn, 0, n)
		for j := 0; j < n; j++ {
			c, err := bench.ConnectRaw(ctx, addr, local.AppUser, local.AppPassword, local.AppDatabase, cache)
			if err != nil {
				b.Fatal(err)
			}
			c.Idle()
			conns = append(conns, c)
		}
		time.Sleep(200 * time.Millisecond)
		runtime.GC()
		runtime.ReadMemStats(&after)
		// The idle RawConns (a net.Conn each, a few hundred bytes) live in
		// this process too and are included.
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n, "heap-B/client")
		b.ReportMetric(float64(after.StackInuse-before.StackInuse)/n, "stack-B/client")
		for _, c := range conns {
			c.Close()
		}
	}
}

// processCPU is this process's user plus system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
