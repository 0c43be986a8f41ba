package routing

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v5"
)

func TestAppendCacheText(t *testing.T) {
	for _, c := range []struct{ sql, want string }{
		// no comment: the text itself, byte for byte
		{"SELECT 1", "SELECT 1"},
		{"  SELECT  1 ;\n", "  SELECT  1 ;\n"},
		{"SELECT a-b, c/d FROM t", "SELECT a-b, c/d FROM t"},
		// sqlcommenter, marginalia, Rails query logs
		{"SELECT * FROM dash WHERE id = $1 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/",
			"SELECT * FROM dash WHERE id = $1"},
		{"SELECT * FROM dash /*application:Shop,controller:reports,action:index*/", "SELECT * FROM dash"},
		{"/*action='index',framework='django'*/ SELECT count(*) FROM t", "SELECT count(*) FROM t"},
		{"SELECT 1 -- request 42", "SELECT 1"},
		{"SELECT 1 -- request 42\n", "SELECT 1"},
		// inside: one space, or a newline where the gap held one
		{"SELECT/**/1", "SELECT 1"},
		{"SELECT a /* x */ FROM t", "SELECT a FROM t"},
		{"SELECT a\n  -- x\n  FROM t", "SELECT a\nFROM t"},
		{"SELECT 'a' -- x\n'b'", "SELECT 'a'\n'b'"},
		{"SELECT 1 /* a */ /* b */ -- c\n + 2", "SELECT 1\n+ 2"},
		{"SELECT 1 /* outer /* nested */ still */ + 2", "SELECT 1 + 2"},
		{"SELECT 2 +/**/- 1", "SELECT 2 + - 1"},
		// hints stay: they choose the ttl
		{"/* pgsluice: cache ttl=1s */ SELECT 1 /* trace 1 */", "/* pgsluice: cache ttl=1s */ SELECT 1"},
		{"/* app */ /* pgsluice: cache */ /* trace */ SELECT 1", "/* pgsluice: cache */ SELECT 1"},
		{"SELECT 1 -- PGSLUICE: nocache", "SELECT 1 -- PGSLUICE: nocache"},
		{" /* pgsluice: cache */SELECT '/*'", " /* pgsluice: cache */SELECT '/*'"},
		{"/* pgsluice: cache */ SELECT 1 /* x */", "/* pgsluice: cache */ SELECT 1"},
		{"/* pgsluice: /* n */ cache */ SELECT 1 -- x", "/* pgsluice: /* n */ cache */ SELECT 1"},
		{"/* app */ SELECT 1", "SELECT 1"},
		// comment markers that are not comments
		{"SELECT '/* no */', '-- no' FROM t", "SELECT '/* no */', '-- no' FROM t"},
		{`SELECT "a--b", $$ /* x */ $$, E'\'--' /* yes */`, `SELECT "a--b", $$ /* x */ $$, E'\'--'`},
		{"SELECT 1 - -1", "SELECT 1 - -1"},
		// full-text keys keep everything
		{"SET x = 1 /* c */", "SET x = 1 /* c */"},
		{"SELECT 'unterminated /* c */", "SELECT 'unterminated /* c */"},
		{"SELECT 1 /* unterminated", "SELECT 1 /* unterminated"},
		// more comments than the stack array holds
		{"SELECT /*1*/ a /*2*/, /*3*/ b /*4*/, /*5*/ c /*6*/, /*7*/ d /*8*/, /*9*/ e /*10*/ FROM t",
			"SELECT a , b , c , d , e FROM t"},
	} {
		if got := string(AppendCacheText(nil, []byte(c.sql))); got != c.want {
			t.Errorf("AppendCacheText(%q)\n got %q\nwant %q", c.sql, got, c.want)
		}
		// appends: what dst held stays
		if got := string(AppendCacheText([]byte("x"), []byte(c.sql))); got != "x"+c.want {
			t.Errorf("AppendCacheText appended to x: %q", got)
		}
	}
}

func TestAppendCacheTextAllocs(t *testing.T) {
	for _, sql := range []string{
		"SELECT * FROM dash WHERE id = $1 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/",
		"/* pgsluice: cache */ SELECT 1",
	} {
		b := []byte(sql)
		dst := make([]byte, 0, 256)
		if n := testing.AllocsPerRun(100, func() { AppendCacheText(dst[:0], b) }); n != 0 {
			t.Fatalf("AppendCacheText(%q) allocates %v times per call into a buffer with room", sql, n)
		}
	}
}

// Decision.Normalized, shown for every text of a shape, carries none of
// the comments of the text that happened to be classified first.
func TestNormalizedWithoutComments(t *testing.T) {
	for _, c := range []struct{ sql, want string }{
		{"SELECT * FROM t WHERE id = 5 /*traceparent='00-abc-01'*/", "SELECT * FROM t WHERE id = $1"},
		{"/* app:shop */ SELECT * FROM t WHERE id = 5 -- user 42", "SELECT * FROM t WHERE id = $1"},
		{"SELECT 1 -- a\n + 2", "SELECT $1\n+ $2"},
		{"SELECT '/* not a comment */' FROM t", "SELECT $1 FROM t"},
		{"/* pgsluice: route=primary */ SELECT a FROM t", "SELECT a FROM t"},
		{"SELECT a FROM t", "SELECT a FROM t"},
	} {
		c0 := New(Options{CacheSize: 16})
		if got := c0.Classify(c.sql).Normalized; got != c.want {
			t.Errorf("Normalized(%q) = %q, want %q", c.sql, got, c.want)
		}
	}
	c0 := New(Options{CacheSize: 16})
	c0.Classify("SELECT v FROM t WHERE id = 1 /* customer:alice */")
	if got := c0.Classify("SELECT v FROM t WHERE id = 2 /* customer:bob */").Normalized; strings.Contains(got, "alice") {
		t.Errorf("bob's statement is shown with alice's comment: %q", got)
	}
}

// parseTree is sql's pg_query parse tree without the byte offsets
// (location, stmt_location, stmt_len), which comments shift.
func parseTree(sql string) (any, error) {
	js, err := pg.ParseToJSON(sql)
	if err != nil {
		return nil, err
	}
	var tree any
	if err := json.Unmarshal([]byte(js), &tree); err != nil {
		return nil, err
	}
	var strip func(any)
	strip = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			delete(v, "location")
			delete(v, "stmt_location")
			delete(v, "stmt_len")
			for _, e := range v {
				strip(e)
			}
		case []any:
			for _, e := range v {
				strip(e)
			}
		}
	}
	strip(tree)
	return tree, nil
}

// FuzzCacheText checks the cache text's invariant: a text PostgreSQL
// parses has a cache text that parses into the same tree, so two texts
// with one cache text mean the same statement.
func FuzzCacheText(f *testing.F) {
	for _, s := range []string{
		"SELECT 1 /*traceparent='00-01'*/", "SELECT 'a' -- x\n'b'", "SELECT/**/1", "SELECT 2 +/**/- 1",
		"SELECT '/* no */' -- yes", "SELECT $a$--$a$ /**/", "SELECT 1 /* a /* b */ c */", "SELECT a$b$ /**/ FROM t",
		"SELECT 'a' /* x */\n'b'", "SELECT 1 --x\r+1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		got := string(AppendCacheText(nil, []byte(sql)))
		if !strings.Contains(sql, "--") && !strings.Contains(sql, "/*") && got != sql {
			t.Fatalf("text without comments changed: %q -> %q", sql, got)
		}
		if got == sql || strings.IndexByte(sql, 0) >= 0 {
			return
		}
		want, err := parseTree(sql)
		if err != nil {
			return // not a statement: never cached
		}
		have, err := parseTree(got)
		if err != nil {
			t.Fatalf("%q parses, its cache text %q does not: %v", sql, got, err)
		}
		if !reflect.DeepEqual(want, have) {
			t.Fatalf("%q and its cache text %q parse differently", sql, got)
		}
	})
}
