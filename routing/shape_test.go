package routing

import (
	"strings"
	"testing"
	"time"
)

func shapeOf(sql string) (string, shapeInfo) {
	k, info := appendShape(nil, sql)
	return string(k), info
}

// TestShapeEquivalence lists pairs of texts that must share a shape (and so
// a cached decision) and pairs that must not.
func TestShapeEquivalence(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
		why  string
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 1;", "SELECT abalance FROM pgbench_accounts WHERE aid = 98765;", true, "integer literal"},
		{"SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = 'it''s longer'", true, "string literal"},
		{"SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = E'\\n\\''", true, "E string"},
		{"SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = $$x'y$$", true, "dollar quote is a string constant"},
		{"SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = $q$;DELETE$q$", true, "tagged dollar quote"},
		{"SELECT 1.5", "SELECT 1e10", true, "numeric forms"},
		{"SELECT .5", "SELECT 0x1F", true, "numeric forms"},
		{"SELECT 1_000", "SELECT 7", true, "underscores"},
		{"SELECT interval '1'", "SELECT interval 1", false, "strings and numbers are different tokens"},
		{"select  *\n\tfrom T", "SELECT * FROM t", true, "case and whitespace"},
		{"SELECT /* c */ 1", "SELECT 1", true, "comments"},
		{"SELECT 1 -- c\n", "SELECT 1", true, "line comment"},
		{"SELECT 1;", "SELECT 1", true, "trailing semicolon"},
		{"SELECT 1 ;; ", "SELECT 1", true, "trailing semicolons"},
		{"SELECT 'a'\n'b'", "SELECT 'ab'", true, "string continuation"},
		{"  SELECT 1", "SELECT 1", true, "leading whitespace"},
		{"/* app */ SELECT 1", "SELECT 1", true, "leading comment without hint"},
		{"SELECT * FROM t WHERE a IN (1, 2)", "SELECT * FROM t WHERE a IN (3, 4)", true, "same list length"},
		{"SELECT a-1", "SELECT a-2", true, "minus literal"},

		{"SELECT * FROM t WHERE a IN (1, 2)", "SELECT * FROM t WHERE a IN (1, 2, 3)", false, "list length"},
		{"SELECT * FROM \"T\"", "SELECT * FROM t", false, "quoted identifier keeps case"},
		{"SELECT * FROM \"t\"", "SELECT * FROM t", false, "quoted identifier is verbatim"},
		{"SELECT a FROM t", "SELECT b FROM t", false, "identifiers"},
		{"SELECT $1", "SELECT $2", false, "parameter numbers"},
		{"SELECT 'a' 'b'", "SELECT 'a'\n'b'", false, "continuation needs a newline"},
		{"SELECT 'a'\n'b'", "SELECT 'a'\n\n'b'", true, "continuation over several newlines"},
		{"SELECT 'a' /*x*/\n'b'", "SELECT 'a'\n'b'", false, "comments break continuation"},
		{"SELECT N'a'", "SELECT 'a'", false, "national string is NCHAR + string"},
		{"SELECT B'1'", "SELECT 'a'", false, "bit string"},
		{"SELECT X'1'", "SELECT B'1'", false, "hex vs bit string"},
		{"SELECT 1", "SELECT 1e", false, "trailing junk is verbatim"},
		{"SELECT 123abc", "SELECT 1abc", false, "junk differs"},
		{"SELECT a<=b", "SELECT a< =b", false, "adjacency matters for operators"},
		{"SELECT a - -1", "SELECT a --1", false, "minus minus starts a comment"},
		{"SELECT 1a", "SELECT 1 a", false, "alias vs junk"},
		{"SELECT current_timestamp(3)", "SELECT current_timestamp(4)", false, "typmod precision is part of the fingerprint"},
		{"/* pgsluice: route=primary */ SELECT 1", "SELECT 1", false, "hints are part of the key"},
		{"/* pgsluice: route=primary */ SELECT 1", "/* pgsluice: route=replica */ SELECT 1", false, "different hints"},
		{"/* pgsluice: cache ttl=1s */ SELECT 1", "/* pgsluice: cache ttl=2s */ SELECT 1", false, "different ttl"},
		{"SELECT 1 /* pgsluice: route=primary */", "SELECT 1", false, "trailing hints are part of the key"},
		{"SELECT 1 /* pgsluice: route=primary */", "SELECT 1 /* app: shop */", false, "a hint is not any comment"},
		{"/* pgsluice: route=primary */ SELECT 1", "SELECT 1 -- pgsluice: route=primary", true, "where the hint is does not matter"},
		{"SET search_path TO a", "SET search_path TO b", false, "SET keyed by full text"},
		{"SET x = 1", "SET x = 2", false, "SET keyed by full text"},
		{"BEGIN", "begin", false, "non-DML statements keyed by exact text"},
		{"SELECT set_config('a', 'b', false)", "SELECT set_config('a', 'c', false)", false, "set_config keyed by full text"},
		{"SELECT 1; SET x = 1", "SELECT 1; SET x = 2", false, "any non-DML statement makes the key full text"},
		{"EXPLAIN (ANALYZE 1) DELETE FROM t", "EXPLAIN (ANALYZE 0) DELETE FROM t", false, "EXPLAIN keyed by full text"},
		{"SELECT U&'a'", "SELECT U&'b'", false, "U& keyed by full text"},
		{"SELECT E'\\x41'", "SELECT E'\\x42'", false, "risky escapes keyed by full text"},
	} {
		ka, _ := shapeOf(tc.a)
		kb, _ := shapeOf(tc.b)
		if (ka == kb) != tc.same {
			t.Errorf("%s: %q vs %q: same=%v, want %v (keys %q, %q)", tc.why, tc.a, tc.b, ka == kb, tc.same, ka, kb)
		}
	}
}

func TestShapeRendering(t *testing.T) {
	for _, tc := range []struct {
		sql, want string
		full      bool
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", "select abalance from pgbench_accounts where aid = \x00#", false},
		{"INSERT INTO t VALUES ('a', 1.5, $1)", "insert into t values (\x00s, \x00#, $1)", false},
		{"SELECT \"A\".b FROM \"A\"", "select \"A\".b from \"A\"", false},
		{"WITH x AS (SELECT 1) SELECT * FROM x", "with x as (select \x00#) select * from x", false},
		{"(SELECT 1)", "(select \x00#)", false},
		{"", "", false},
		{"SET x = 1", phFull + "SET x = 1", true},
		{"SELECT 1; BEGIN", phFull + "SELECT 1; BEGIN", true},
		{"SELECT 'unterminated", phFull + "SELECT 'unterminated", true},
		{"SELECT 1 /* unterminated", phFull + "SELECT 1 /* unterminated", true},
		{"SELECT 1\x00", phFull + "SELECT 1\x00", true},
		{"'a'", phFull + "'a'", true},
	} {
		got, info := shapeOf(tc.sql)
		if got != tc.want || info.fullText != tc.full {
			t.Errorf("%q: got %q full=%v, want %q full=%v", tc.sql, got, info.fullText, tc.want, tc.full)
		}
	}
}

func TestHints(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want Hints
	}{
		{"/* pgsluice: route=primary */ SELECT 1", Hints{Route: "primary"}},
		{"/* pgsluice: route=replica cache ttl=30s */ SELECT 1", Hints{Route: "replica", CacheTTL: 30 * time.Second}},
		{"-- pgsluice: nocache\nSELECT 1", Hints{NoCache: true}},
		{"/*pgsluice:route=replica,nocache*/SELECT 1", Hints{Route: "replica", NoCache: true}},
		{"/* other */ -- pgsluice: ttl=1m\n SELECT 1", Hints{CacheTTL: time.Minute}},
		{"SELECT 1 /* pgsluice: route=primary */", Hints{Route: "primary"}},                            // ActiveRecord annotate
		{"SELECT /* pgsluice: nocache */ a FROM t", Hints{NoCache: true}},                              // SQLAlchemy prefix_with
		{"/* pgsluice: route=replica */ SELECT 1 -- pgsluice: route=primary", Hints{Route: "primary"}}, // the last one wins
		{"SELECT '/* pgsluice: route=primary */'", Hints{}},
		{"/* pgsluice: route=elsewhere ttl=-1s */ SELECT 1", Hints{}},
		{"/* pgsluice: route=primary */", Hints{Route: "primary"}},
		{"/* pgsluice: route=primary */ SET x = 1", Hints{Route: "primary"}},
	} {
		_, info := shapeOf(tc.sql)
		if info.hints != tc.want {
			t.Errorf("%q: got %+v, want %+v", tc.sql, info.hints, tc.want)
		}
	}
}

func TestCleanNumber(t *testing.T) {
	for s, want := range map[string]bool{
		"0": true, "123": true, "1_000": true, "1.": true, ".5": true, "1.5": true, "1e5": true, "1E+5": true, "1.5e-3": true,
		".5e1": true, "1.e5": true, "0x1F": true, "0X1_f": true, "0o17": true, "0b1_01": true,
		"": false, "1__0": false, "1_": false, "_1": false, "1e": false, "1e+": false, "0x": false, "0xg": false, "0o8": false,
		"0b2": false, "1a": false, "1.2.3": false, "..": false, "1..2": false, "0x_1": true, "1ee5": false,
	} {
		if got := cleanNumber(s); got != want {
			t.Errorf("cleanNumber(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestCodeEnd(t *testing.T) {
	for in, want := range map[string]string{
		"SET a = 1 -- c":            "SET a = 1",
		"SET a = 'x -- y' /* z */ ": "SET a = 'x -- y'",
		"SET a = $$--$$ -- c":       "SET a = $$--$$",
		"SET \"--\" = 1":            "SET \"--\" = 1",
		"-- only":                   "",
	} {
		if got := in[:codeEnd(in)]; got != want {
			t.Errorf("codeEnd(%q) -> %q, want %q", in, got, want)
		}
	}
}

// TestClassifyHitAllocations pins the hot path to zero allocations.
func TestClassifyHitAllocations(t *testing.T) {
	c := New(Options{})
	sql := "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"
	c.Classify(sql)
	allocs := testing.AllocsPerRun(1000, func() { c.Classify(sql) })
	if allocs > 0 {
		t.Fatalf("cache hit allocates %.1f times", allocs)
	}
	hinted := "/* pgsluice: cache ttl=30s */ " + sql
	c.Classify(hinted)
	if allocs := testing.AllocsPerRun(1000, func() { c.Classify(hinted) }); allocs > 0 {
		t.Fatalf("cache hit with hints allocates %.1f times", allocs)
	}
}

func TestCacheEvictionAndStats(t *testing.T) {
	c := New(Options{CacheSize: 64})
	for i := 0; i < 1000; i++ {
		c.Classify("SELECT c" + strings.Repeat("x", i%300) + " FROM t")
	}
	n := 0
	for i := range c.shards {
		m := *c.shards[i].snap.Load()
		n += len(m)
		if len(m) != len(c.shards[i].ring) {
			t.Fatalf("shard %d: map %d ring %d", i, len(m), len(c.shards[i].ring))
		}
	}
	if n > 64+numShards {
		t.Fatalf("cache holds %d entries, bound 64", n)
	}
	hits, misses := c.Stats()
	if hits+misses != 1000 || misses < 300 {
		t.Fatalf("hits %d misses %d", hits, misses)
	}
	// A hot entry survives eviction pressure (CLOCK second chance).
	hot := "SELECT hot FROM t"
	c.Classify(hot)
	for i := 0; i < 200; i++ {
		c.Classify(hot)
		c.Classify("SELECT cold" + strings.Repeat("y", i) + " FROM t")
	}
	h0, _ := c.Stats()
	c.Classify(hot)
	if h1, _ := c.Stats(); h1 != h0+1 {
		t.Fatal("hot entry was evicted")
	}
}

func TestSetCatalogClearsCache(t *testing.T) {
	c := New(Options{})
	sql := "SELECT my_fn(1) FROM t"
	if d := c.Classify(sql); d.Target != TargetPrimary || d.Reason != ReasonVolatile {
		t.Fatalf("unknown function: %+v", d)
	}
	cat := StaticCatalog{"my_fn": 'i'}
	c.SetCatalog(cat)
	if d := c.Classify(sql); d.Target != TargetReplica || !d.Cacheable {
		t.Fatalf("after SetCatalog: %+v", d)
	}
}

func TestDisabledCache(t *testing.T) {
	c := New(Options{CacheSize: -1})
	c.Classify("SELECT 1")
	c.Classify("SELECT 1")
	if h, m := c.Stats(); h != 0 || m != 0 {
		t.Fatalf("disabled cache counted %d/%d", h, m)
	}
}

func TestStringers(t *testing.T) {
	if TargetReplica.String() != "replica" || TargetPrimary.String() != "primary" {
		t.Error("Target.String")
	}
	want := []string{"", "listen", "advisory_lock", "temp_table", "hold_cursor", "prepare", "session_auth", "other"}
	for i, w := range want {
		if got := PinReason(i).String(); got != w {
			t.Errorf("PinReason(%d) = %q, want %q", i, got, w)
		}
	}
}

// TestConcurrentClassify exercises the cache from many goroutines while the
// catalog is swapped (run with -race).
func TestConcurrentClassify(t *testing.T) {
	c := New(Options{CacheSize: 100})
	texts := []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 1",
		"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
		"SET search_path TO app",
		"BEGIN READ ONLY",
		"SELECT f(1) FROM t",
	}
	done := make(chan struct{})
	errs := make(chan string, 8)
	for g := 0; g < 8; g++ {
		go func(g int) {
			defer func() { done <- struct{}{} }()
			for i := 0; i < 2000; i++ {
				sql := texts[(g+i)%len(texts)]
				if i%7 == 0 {
					sql = "SELECT c" + strings.Repeat("z", i%200) + " FROM t"
				}
				d := c.Classify(sql)
				if strings.HasPrefix(sql, "UPDATE") && d.Target != TargetPrimary {
					errs <- "write routed to replica"
					return
				}
			}
		}(g)
	}
	for i := 0; i < 20; i++ {
		c.SetCatalog(StaticCatalog{"f": 'i'})
		c.SetCatalog(nil)
	}
	for g := 0; g < 8; g++ {
		<-done
	}
	select {
	case e := <-errs:
		t.Fatal(e)
	default:
	}
	if h, m := c.Stats(); h+m != 8*2000 {
		t.Fatalf("stats %d+%d", h, m)
	}
}

func TestTimeWordsKeyedByFullText(t *testing.T) {
	for _, sql := range []string{"SELECT 'now'::timestamptz", "SELECT date ' Today '", "SELECT E'tomorrow'"} {
		if _, info := shapeOf(sql); !info.fullText {
			t.Errorf("%q: not keyed by full text", sql)
		}
	}
	if _, info := shapeOf("SELECT 'nowhere'"); info.fullText {
		t.Error("'nowhere' keyed by full text")
	}
}
