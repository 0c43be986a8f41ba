package routing

import (
	"strconv"
	"sync/atomic"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v5"
)

// pgbenchTexts are pgbench's select with varying literals, as the simple
// protocol sends them.
func pgbenchTexts(n int) []string {
	texts := make([]string, n)
	for i := range texts {
		texts[i] = "SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(1+i*7919%100000) + ";"
	}
	return texts
}

// BenchmarkClassifyHit is the hot path: a known shape with a new literal.
func BenchmarkClassifyHit(b *testing.B) {
	c := New(Options{})
	texts := pgbenchTexts(1024)
	c.Classify(texts[0])
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := c.Classify(texts[i&1023])
		if d.Target != TargetReplica {
			b.Fatal(d)
		}
	}
}

// BenchmarkClassifyHitParallel measures scaling of the hit path across
// goroutines (run with -cpu 1,2,...).
func BenchmarkClassifyHitParallel(b *testing.B) {
	c := New(Options{})
	texts := pgbenchTexts(1024)
	c.Classify(texts[0])
	b.ReportAllocs()
	b.ResetTimer()
	var seq atomic.Uint64
	b.RunParallel(func(p *testing.PB) {
		i := int(seq.Add(1) * 131)
		for p.Next() {
			c.Classify(texts[i&1023])
			i++
		}
	})
}

// BenchmarkClassifyHitMixed cycles through several shapes, as a real
// workload does (pgbench tpcb-like plus a few app queries).
func BenchmarkClassifyHitMixed(b *testing.B) {
	c := New(Options{})
	texts := []string{
		"BEGIN;",
		"UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 777;",
		"SELECT abalance FROM pgbench_accounts WHERE aid = 777;",
		"UPDATE pgbench_tellers SET tbalance = tbalance + -4321 WHERE tid = 3;",
		"UPDATE pgbench_branches SET bbalance = bbalance + -4321 WHERE bid = 1;",
		"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 777, -4321, CURRENT_TIMESTAMP);",
		"END;",
		"SELECT u.id, u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id WHERE u.email = 'someone@example.com' AND o.status IN ('paid', 'shipped') ORDER BY o.created_at DESC LIMIT 20",
	}
	for _, t := range texts {
		c.Classify(t)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Classify(texts[i%len(texts)])
	}
}

// BenchmarkClassifyHitSet is a full-text-keyed statement (SET) on a hit.
func BenchmarkClassifyHitSet(b *testing.B) {
	c := New(Options{})
	sql := "SET search_path TO app, public"
	c.Classify(sql)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.Classify(sql)
	}
}

// BenchmarkClassifyMiss is a shape never seen before: the pg_query path.
func BenchmarkClassifyMiss(b *testing.B) {
	c := New(Options{})
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.Classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1 AND c" + strconv.Itoa(i) + " = 2")
	}
}

// BenchmarkClassifyMissCTE is a miss on a larger statement.
func BenchmarkClassifyMissCTE(b *testing.B) {
	c := New(Options{})
	if d := c.Classify("WITH x AS (SELECT 1) SELECT * FROM x"); d.ParseError {
		b.Fatal(d)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.Classify("WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '1 day'), big AS (SELECT user_id, sum(total) AS s FROM recent GROUP BY user_id HAVING sum(total) > 100) SELECT u.name AS c" + strconv.Itoa(i) + ", b.s FROM users u JOIN big b ON b.user_id = u.id WHERE u.org_id = 42 ORDER BY b.s DESC LIMIT 10")
	}
}

// BenchmarkShape is the scanner alone.
func BenchmarkShape(b *testing.B) {
	texts := pgbenchTexts(1024)
	var buf [stackKeyBytes]byte
	b.ReportAllocs()
	b.SetBytes(int64(len(texts[0])))
	for i := 0; i < b.N; i++ {
		appendShape(buf[:0], texts[i&1023])
	}
}

// BenchmarkPgQueryParse is the reference cost the shape cache avoids.
func BenchmarkPgQueryParse(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := pg.Parse("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendCacheText is the cache key's text: a dashboard query
// without a comment and with a leading hint (the common cases: copied as
// is) and with a sqlcommenter traceparent (scanned, the comment dropped).
func BenchmarkAppendCacheText(b *testing.B) {
	for _, c := range []struct{ name, sql string }{
		{"plain", "SELECT region, sum(total) FROM orders WHERE created_at >= $1 GROUP BY region ORDER BY 2 DESC"},
		{"hint", "/* pgsluice: cache ttl=30s */ SELECT region, sum(total) FROM orders WHERE created_at >= $1 GROUP BY region ORDER BY 2 DESC"},
		{"traceparent", "SELECT region, sum(total) FROM orders WHERE created_at >= $1 GROUP BY region ORDER BY 2 DESC /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/"},
	} {
		b.Run(c.name, func(b *testing.B) {
			sql := []byte(c.sql)
			dst := make([]byte, 0, 512)
			b.ReportAllocs()
			b.SetBytes(int64(len(sql)))
			for i := 0; i < b.N; i++ {
				AppendCacheText(dst[:0], sql)
			}
		})
	}
}
