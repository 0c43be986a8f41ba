package bench_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// BenchmarkCacheHit: one client, sequential round trips answered from the
// in-process cache tier (a hinted read of a small table). Compare with
// BenchmarkRoundTrip/pgsluice; profile the hit path with
//
//	go test ./bench -run '^$' -bench CacheHit -cpuprofile cpu.prof
//	go tool pprof -top -focus 'pgsluice/proxy' cpu.prof
func BenchmarkCacheHit(b *testing.B) {
	c, proxyAddr := env(b)
	ctx := context.Background()
	if err := c.Exec(ctx, c.Primary, `CREATE TABLE IF NOT EXISTS bench_cache_hit(id int, name text);
		TRUNCATE bench_cache_hit; INSERT INTO bench_cache_hit SELECT g, 'name ' || g FROM generate_series(1, 10) g;
		GRANT SELECT ON bench_cache_hit TO PUBLIC`); err != nil {
		b.Fatal(err)
	}
	const sql = "/* pgsluice: cache ttl=1h */ SELECT id, name FROM bench_cache_hit ORDER BY id"
	for _, proto := range []string{"simple", "extended"} {
		b.Run(proto, func(b *testing.B) {
			conn, err := pgconn.Connect(ctx, dsn(proxyAddr))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close(ctx)
			read := func() error {
				if proto == "simple" {
					_, err := conn.Exec(ctx, sql).ReadAll()
					return err
				}
				return conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read().Err
			}
			if err := read(); err != nil { // fill
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := read(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
