// Package routing classifies SQL text for the proxy: for each query string it
// decides where the statement may run (a replica or the primary), which
// tables it reads and writes, whether its result may be cached, whether it
// pins the client to its backend, what it does to the transaction state and
// which session settings it changes. It is pure: no network, no net.Conn, no
// dependency on the proxy. pg_query_go (cgo, PostgreSQL's own parser) is used
// here and nowhere else.
//
// # Use
//
// The proxy creates one Classifier with New and calls Classify on every
// simple Query and once per extended-protocol Parse. A Classifier is safe for
// concurrent use; Decisions it returns share their slices with its cache and
// must be treated as read-only. SetCatalog swaps the function-volatility
// Catalog (built from LoadCatalogSQL on the primary) and clears the cache.
// A caller that does not route (routing off) may call MayAffectSession
// first, a cheap substring test, and skip Classify when it returns false:
// such a text cannot set, pin or reset anything in the session
// (SessionNeutralDecision stands in for it).
//
// # The shape cache
//
// pg_query costs tens to hundreds of microseconds per parse, more than a
// whole pooled transaction, so the parser must not run per query. Classify
// first runs a small scanner (shape.go) that mirrors PostgreSQL's lexer and
// renders the text's *shape*: its tokens with constants replaced by
// placeholders, unquoted identifiers folded to lower case, comments dropped
// and whitespace collapsed (adjacent tokens stay adjacent, so operators lex
// the same). Hints in comments are read before they are dropped and end
// the key. The shape keys a bounded, sharded cache: each of 32
// shards publishes an immutable map through an atomic pointer, so a hit takes
// no lock and writes no shared memory (hit counters are striped; an entry's
// CLOCK reference bit is written only when it was clear) and copies out the
// Decision without allocating. pg_query runs only on a miss; the miss then
// copies its shard's map under the shard's mutex (a few microseconds for the
// default 313 entries per shard, next to tens for the parse) and evicts with
// the CLOCK (second chance) algorithm.
//
// Invariants:
//
//   - Two texts with the same shape lex into the same tokens except for the
//     values of constants, so they parse into the same tree and have the same
//     pg_query fingerprint; FuzzShape checks this, and that their decisions
//     are equal, by re-rendering texts with other constants.
//   - No decision depends on a constant's value for a shape-keyed text.
//     Texts where it could (any statement not starting with SELECT, INSERT,
//     UPDATE, DELETE, MERGE, VALUES, TABLE, WITH or '(' — so SET, RESET,
//     BEGIN, EXPLAIN, DECLARE and every utility statement — and anything
//     mentioning set_config) are keyed by their full text, so SessionSet.SQL
//     always comes from the text being classified. So are texts whose lexing
//     is too subtle to mirror (U&” strings, E” strings with octal, hex or
//     Unicode escapes, unterminated tokens, NUL bytes, invalid UTF-8).
//   - Placeholders start with a NUL byte, which never reaches a shape key, so
//     a placeholder cannot collide with verbatim text.
//   - The cache is bounded by Options.CacheSize entries and keys longer than
//     32 KiB are not cached. A catalog swap clears it, and a miss computed
//     under an older catalog is not inserted.
//   - Decision.Normalized is that of the first text seen with the shape.
//
// # Rules
//
// Writes (INSERT/UPDATE/DELETE/MERGE, data-modifying CTEs, SELECT INTO,
// COPY FROM, TRUNCATE), DDL, locks (LOCK, FOR UPDATE/SHARE anywhere), calls
// of volatile or unknown functions, maintenance, CALL/DO, NOTIFY,
// LISTEN, prepared statements, cursors, SET/RESET, read-write BEGIN and
// unparseable text go to the primary. Reads using only immutable and stable
// functions, COPY ... TO STDOUT, EXPLAIN without ANALYZE (or EXPLAIN ANALYZE
// of a read), SHOW and BEGIN READ ONLY may go to a replica. A multi-statement
// string goes to the primary if any of its statements must; transaction
// control, SAVEPOINT, SET LOCAL, SET TRANSACTION and SHOW do not decide. The
// golden files in testdata/*.json are the detailed specification, and
// TestGoldenReplicaReadOnly runs every replica-routed golden statement in a
// READ ONLY transaction on a real PostgreSQL 15.
//
// AppendCacheText (cachetext.go) gives the text a cached result is keyed
// by: the text with its comments, except pgsluice hints, dropped by the
// same scanner, so a per-request tracing comment does not make every
// request a cache miss. FuzzCacheText checks with pg_query that it parses
// into the same tree as the text it came from.
//
// Hints come from any comment, wherever it stands (leading, trailing as
// ActiveRecord's annotate and sqlcommenter put them, or between tokens);
// later words override earlier ones:
// /* pgsluice: route=primary|replica cache ttl=30s nocache */ (or --).
// For a full-text key the shape scanner may stop before the comment, so
// the miss reads the hints with pg_query's own lexer (scanHints).
// route=replica is honoured for reads and for calls of volatile functions;
// on a write it yields Reason "hint_rejected" with TargetPrimary.
//
// Limits: the scanner assumes standard_conforming_strings=on and UTF-8 text
// (as pg_query does); a session that turns standard_conforming_strings off
// should be routed to the primary by the proxy (the SET shows up in Sets).
// pg_query implements PostgreSQL 16's grammar; constructs new in 16 (0x1F
// literals, ...) are accepted here and rejected by a 15 server, which then
// reports the error. Volatility comes from pg_proc, so a function that lies
// about it, user operators and type input functions are not seen; views are
// reported by their own name.
package routing
