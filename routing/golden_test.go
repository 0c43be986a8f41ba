package routing

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// goldenCase is one entry of routing/testdata/*.json. `go test ./routing
// -update` rewrites every want from the classifier's output; review the diff.
type goldenCase struct {
	Comment string     `json:"comment"`
	SQL     string     `json:"sql"`
	Want    goldenWant `json:"want"`
}

type goldenSet struct {
	Kind string `json:"kind"`
	Name string `json:"name,omitempty"`
	SQL  string `json:"sql"`
}

type goldenHints struct {
	Route    string `json:"route,omitempty"`
	CacheTTL string `json:"cache_ttl,omitempty"`
	NoCache  bool   `json:"nocache,omitempty"`
}

type goldenWant struct {
	Target      string       `json:"target"`
	Reason      string       `json:"reason"`
	ReadTables  []string     `json:"read_tables,omitempty"`
	WriteTables []string     `json:"write_tables,omitempty"`
	Cacheable   bool         `json:"cacheable"`
	Pin         string       `json:"pin,omitempty"`
	Txn         string       `json:"txn,omitempty"`
	Sets        []goldenSet  `json:"sets,omitempty"`
	Command     string       `json:"command"`
	Statements  int          `json:"statements,omitempty"` // only when not 1
	ParseError  bool         `json:"parse_error,omitempty"`
	Hints       *goldenHints `json:"hints,omitempty"`
}

func wantOf(d Decision) goldenWant {
	w := goldenWant{
		Target: d.Target.String(), Reason: d.Reason, ReadTables: d.ReadTables, WriteTables: d.WriteTables,
		Cacheable: d.Cacheable, Pin: d.Pin.String(), Txn: d.Txn.String(), Command: d.Command, ParseError: d.ParseError,
	}
	if d.Statements != 1 {
		w.Statements = d.Statements
	}
	for _, s := range d.Sets {
		w.Sets = append(w.Sets, goldenSet{Kind: s.Kind.String(), Name: s.Name, SQL: s.SQL})
	}
	if d.Hints != (Hints{}) {
		h := &goldenHints{Route: d.Hints.Route, NoCache: d.Hints.NoCache}
		if d.Hints.CacheTTL != 0 {
			h.CacheTTL = d.Hints.CacheTTL.String()
		}
		w.Hints = h
	}
	return w
}

func goldenFiles(t *testing.T) []string {
	files, err := filepath.Glob("testdata/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	return files
}

func readGolden(t *testing.T, file string) []goldenCase {
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var cases []goldenCase
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return cases
}

func TestGolden(t *testing.T) {
	cached := New(Options{})
	uncached := New(Options{CacheSize: -1})
	total := 0
	for _, file := range goldenFiles(t) {
		cases := readGolden(t, file)
		total += len(cases)
		t.Run(filepath.Base(file), func(t *testing.T) {
			for i := range cases {
				c := &cases[i]
				d1 := cached.Classify(c.SQL) // miss
				d2 := cached.Classify(c.SQL) // hit
				d3 := uncached.Classify(c.SQL)
				// Normalized comes from the first text of a shape: it may
				// differ in whitespace and comments.
				n1, n3 := d1.Normalized, d3.Normalized
				d1.Normalized, d2.Normalized, d3.Normalized = "", "", ""
				if !reflect.DeepEqual(d1, d2) || !reflect.DeepEqual(d1, d3) {
					t.Errorf("%s: cached and uncached decisions differ:\n%+v\n%+v\n%+v", c.Comment, d1, d2, d3)
				}
				if d1.ParseError != (d1.Fingerprint == 0) {
					t.Errorf("%s: parse error %v with fingerprint %x", c.Comment, d1.ParseError, d1.Fingerprint)
				}
				if (n1 == "") != (n3 == "") {
					t.Errorf("%s: normalized %q vs %q", c.Comment, n1, n3)
				}
				got := wantOf(d1)
				if *update {
					c.Want = got
					continue
				}
				if !reflect.DeepEqual(got, c.Want) {
					gj, _ := json.Marshal(got)
					wj, _ := json.Marshal(c.Want)
					t.Errorf("%s\nsql:  %s\ngot:  %s\nwant: %s", c.Comment, c.SQL, gj, wj)
				}
			}
			if *update {
				var buf bytes.Buffer
				enc := json.NewEncoder(&buf)
				enc.SetEscapeHTML(false)
				enc.SetIndent("", "  ")
				if err := enc.Encode(cases); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	if total < 300 {
		t.Errorf("only %d golden cases, want at least 300", total)
	}
}

// goldenSchema creates the tables the golden cases use, so that they can be
// run against a real PostgreSQL.
const goldenSchema = `
DROP SCHEMA IF EXISTS golden CASCADE;
CREATE SCHEMA golden;
SET search_path TO golden, public;
CREATE TABLE users (id bigserial PRIMARY KEY, name text, email text, org_id int, created_at timestamptz DEFAULT now(), active bool DEFAULT true);
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint, total numeric, status text, created_at timestamptz DEFAULT now());
CREATE TABLE items (id bigserial PRIMARY KEY, order_id bigint, sku text, qty int, price numeric);
CREATE TABLE orgs (id serial PRIMARY KEY, name text);
CREATE TABLE accounts (id int PRIMARY KEY, balance numeric);
CREATE TABLE events (id bigserial, kind text, payload jsonb, at timestamptz);
CREATE TABLE audit (id bigserial, msg text);
CREATE TABLE t (id int, a int, b text, c jsonb);
CREATE TABLE "Mixed" (id int);
CREATE TABLE schema_migrations (version text);
CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
CREATE SEQUENCE order_seq;
CREATE VIEW active_users AS SELECT * FROM users WHERE active;
CREATE MATERIALIZED VIEW order_totals AS SELECT user_id, sum(total) AS total FROM orders GROUP BY user_id;
CREATE SCHEMA IF NOT EXISTS app;
CREATE TABLE IF NOT EXISTS app.settings (k text PRIMARY KEY, v text);
INSERT INTO users (name, email, org_id) VALUES ('a', 'a@x', 1), ('b', 'b@x', 2);
INSERT INTO pgbench_accounts VALUES (1, 1, 0, ''), (12345, 1, 0, '');
`

// TestGoldenOnHotStandby runs every golden statement routed to a replica on
// a real PostgreSQL 15 hot standby (streaming from the primary the schema
// was created on). None may be refused for being on a standby: SQLSTATE
// 25006 (read-only transaction), 0A000 (e.g. SERIALIZABLE in hot standby)
// or 55000 (recovery is in progress). Statements may fail for other reasons
// (unknown objects, type errors); those are logged, not errors. COPY is left
// out (it needs the copy sub-protocol), and so are texts with $n parameters.
func TestGoldenOnHotStandby(t *testing.T) {
	primaryConn := connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := primaryConn.Exec(ctx, goldenSchema); err != nil {
		t.Fatal(err)
	}
	var lsn string
	if err := primaryConn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	conn := connectStandby(t)
	for {
		var replayed bool
		if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&replayed); err != nil {
			t.Fatal(err)
		}
		if replayed {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("standby did not replay the golden schema")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := conn.Exec(ctx, "SET search_path TO golden, public"); err != nil {
		t.Fatal(err)
	}
	pc := conn.PgConn()
	c := New(Options{})
	ran, failed := 0, 0
	for _, file := range goldenFiles(t) {
		for _, gc := range readGolden(t, file) {
			d := c.Classify(gc.SQL)
			// A route=replica hint is the client's explicit choice (reason "hint").
			if d.Target != TargetReplica || d.Reason == ReasonHint || d.Command == "copy" || strings.Contains(gc.SQL, "$1") {
				continue
			}
			ran++
			_, err := pc.Exec(ctx, gc.SQL).ReadAll()
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				failed++
				t.Logf("%s: %v", gc.Comment, pgErr)
				switch pgErr.Code {
				case "25006", "0A000", "55000":
					t.Errorf("%s: routed to a replica but the hot standby refuses it: %v\nsql: %s", gc.Comment, pgErr, gc.SQL)
				}
			} else if err != nil {
				t.Fatalf("%s: %v", gc.Comment, err)
			}
			// leave any transaction the statement opened or broke
			if err := pc.Exec(ctx, "ROLLBACK").Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("ran %d replica statements on the hot standby, %d failed for other reasons", ran, failed)
	if ran < 100 {
		t.Errorf("only %d replica statements exercised", ran)
	}
}
