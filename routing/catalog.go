package routing

import (
	"bufio"
	_ "embed"
	"strings"
	"sync"
)

// Catalog tells the classifier the volatility of functions. Implementations
// must be safe for concurrent use.
//
// Volatility is asked the function name as the parser produced it (unquoted
// names are lower case), first qualified ("pg_catalog.now", "public.f") when
// the call was qualified, then unqualified ("now"). It returns 'i'
// (immutable), 's' (stable) or 'v' (volatile); ok=false when the function is
// unknown, which the classifier treats as volatile.
type Catalog interface {
	Volatility(name string) (vol byte, ok bool)
}

// StaticCatalog is a map-backed Catalog (name -> 'i', 's' or 'v'). It must
// not be mutated once handed to a Classifier; concurrent reads are safe.
type StaticCatalog map[string]byte

// Volatility implements Catalog.
func (s StaticCatalog) Volatility(name string) (byte, bool) {
	v, ok := s[name]
	return v, ok
}

// mergeVolatility keeps the most volatile of two volatilities.
func mergeVolatility(a, b byte) byte {
	rank := func(v byte) int {
		switch v {
		case 'i':
			return 0
		case 's':
			return 1
		}
		return 2
	}
	if rank(b) > rank(a) {
		return b
	}
	return a
}

// Add records a function's volatility, keeping the most volatile value when
// the name is already present (overloads may differ). Use it only while
// building a catalog, before sharing it.
func (s StaticCatalog) Add(name string, vol byte) {
	if old, ok := s[name]; ok {
		vol = mergeVolatility(old, vol)
	}
	s[name] = vol
}

//go:generate go test -run TestBuiltinCatalogGenerate -update .

//go:embed testdata/pg15_functions.tsv
var pg15Functions string

var (
	builtinOnce sync.Once
	builtin     StaticCatalog
)

// BuiltinCatalog returns the volatility of PostgreSQL 15's built-in
// functions (from testdata/pg15_functions.tsv, generated from a real
// PostgreSQL 15 by `go generate`). The returned map is shared and must not be
// mutated; it is safe for concurrent reads.
func BuiltinCatalog() StaticCatalog {
	builtinOnce.Do(func() {
		builtin = ParseCatalogTSV(pg15Functions)
	})
	return builtin
}

// ParseCatalogTSV parses lines "name<TAB>volatility" into a new
// StaticCatalog, merging duplicate names to the most volatile value. Lines
// that are empty or start with '#' are skipped.
func ParseCatalogTSV(tsv string) StaticCatalog {
	cat := make(StaticCatalog, 4096)
	sc := bufio.NewScanner(strings.NewReader(tsv))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, vol, ok := strings.Cut(line, "\t")
		if !ok || len(vol) != 1 {
			continue
		}
		cat.Add(name, vol[0])
	}
	return cat
}

// LoadCatalogSQL is the query the proxy runs on the primary to build a live
// catalog: rows (name text, volatility "char") for every function, once
// unqualified and once schema-qualified, each with the most volatile
// volatility among its overloads. Feed the rows to StaticCatalog.Add.
const LoadCatalogSQL = `SELECT p.proname::text AS name, max(p.provolatile::text)::"char" AS volatility
  FROM pg_catalog.pg_proc p
 GROUP BY 1
UNION ALL
SELECT n.nspname || '.' || p.proname, max(p.provolatile::text)::"char"
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 GROUP BY 1`
