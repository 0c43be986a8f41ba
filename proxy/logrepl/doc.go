// Package logrepl tells the result cache which tables changed on the primary,
// whatever wrote them: it streams committed changes with PostgreSQL's built-in
// pgoutput plugin over the streaming replication protocol and reports, once
// per committed transaction, the relations the transaction touched. Writes
// that go through the proxy are invalidated by the proxy itself; this package
// catches the ones that bypass it (psql, cron jobs, another application).
//
// # Lifecycle
//
// Run(ctx, cfg, h) owns one connection at a time, opened with
// replication=database to cfg.Database. Each connection:
//
//  1. makes sure the publication (default "pgsluice_cache") exists, creating
//     it FOR ALL TABLES when missing (a superuser privilege; a role without it
//     gets an error saying which command a superuser must run);
//  2. creates a TEMPORARY logical slot using pgoutput, under a fresh
//     "pgsluice_<random>" name unless cfg.Slot fixes one. Every proxy
//     instance has its own slot; PostgreSQL drops it when the connection
//     ends, so a crashed proxy leaves nothing behind that retains WAL.
//     Creating a logical slot waits until every transaction that was
//     running on the primary when it started has ended (bounded at 10
//     minutes, then retried): a long-running write transaction delays the
//     start of the stream, and Run logs a warning after 5s;
//  3. calls h.Reset(database): everything committed before the slot's
//     consistent point may have been missed, everything after it will be
//     streamed. Reset comes after the slot exists, never before, so no commit
//     falls between what Reset dropped and what the stream reports;
//  4. runs START_REPLICATION ... LOGICAL 0/0 (proto_version '1',
//     publication_names '<publication>') and reads the CopyBoth stream:
//     XLogData carries pgoutput messages, primary keepalives are answered at
//     once when they ask for a reply, and a standby status update is sent
//     every cfg.StatusInterval (default 10s) with the position of the last
//     reported commit (or, between transactions, the server's position from
//     its last keepalive) as flushed and applied.
//
// When a connection fails, or cannot be set up, Run logs why and starts
// again with jittered exponential backoff (100ms doubling to 5s, reset after a
// connection that streamed), and calls Reset again once the new slot exists.
// Run returns nil when ctx ends, having closed the connection (which drops
// the slot); it returns an error at once only for an invalid Config, a nil
// Handler or a metrics registration clash.
//
// # What is reported
//
// pgoutput sends a transaction only when it commits, as Begin, Relation
// (relation OID -> schema and name, sent before the first change of a
// relation in a session and again after its definition changed),
// Insert/Update/Delete, Truncate (several relations) and Commit; Origin, Type
// and Message are ignored. At Commit, h.Changed(database, tables) receives
// the touched relations as "schema.name" (raw names, not quoted: "Odd
// Schema.Mixed Case"), sorted, each once. Rolled-back transactions and
// rolled-back subtransactions are never sent; transactions that changed no
// published table are not reported. DDL is not streamed.
//
// A change to a partition or an inheritance child is reported under its own
// name and the names of all its ancestors ("public.meas_1" and
// "public.meas"), since pgoutput names the leaf a row lives in while queries
// usually read the parent. Ancestors are looked up on a second, regular
// connection (opened during setup) each time a Relation message arrives, i.e. as the relation is
// at decoding time: a partition detached between a commit and the decoding
// of that commit is reported without its former parent. The caller maps
// names to what its cache keys use.
//
// # Metrics
//
// With Config.Registerer set, Run registers (label database):
// pgsluice_logrepl_connected (1 while streaming: alert when 0, bypassing
// writes are then bounded by TTL only), pgsluice_logrepl_streams_total,
// pgsluice_logrepl_failures_total, pgsluice_logrepl_transactions_total and
// pgsluice_logrepl_lag_bytes (primary's WAL end minus the last position
// reported). Collectors already registered for the same database are reused.
//
// # Invariants and caveats
//
//   - The decoder (pgoutput.go, walmsg.go) is pure and never panics: bytes
//     that do not follow the protocol, an unknown message type, or a change of
//     a relation never described are errors wrapping ErrMalformed, which end
//     the connection; the next one starts with Reset. Decoded values never
//     alias the receive buffer.
//   - Handler methods are called from Run's goroutine, one at a time. While one
//     runs nothing is read, so they must be quick: a stream silent for longer
//     than the server's wal_sender_timeout is closed by the server.
//   - A server silent for 3 x StatusInterval + 5s is taken for gone (a dropped
//     link sends no FIN): status updates sent after a quiet interval ask the
//     server to answer, so a live server is never silent that long.
//   - While disconnected, writes that bypass the proxy are not seen; the
//     Reset at reconnect drops what they may have made stale, and until then
//     only the cache TTL bounds staleness.
//   - PostgreSQL refuses UPDATE and DELETE (SQLSTATE 55000) on a table that
//     is in a publication publishing them and has no replica identity (no
//     primary key, or REPLICA IDENTITY NOTHING). A FOR ALL TABLES publication
//     covers every table, so creating it breaks such writes on keyless
//     tables. Run logs the affected tables (up to 20) when it creates the
//     publication; operators must give them a primary key or REPLICA
//     IDENTITY FULL, or not enable this feature on that database.
//   - The role needs the REPLICATION attribute (or superuser), a pg_hba.conf
//     line matching the database (not "replication"), the server
//     wal_level = logical and a free slot under max_replication_slots and a
//     free walsender under max_wal_senders per proxy instance, plus one
//     regular connection for catalog lookups.
//   - Publication and slot names are limited to [a-z0-9_]{1,63} so they never
//     need quoting.
package logrepl
