// Package proxy is pgsluice's server: the accept loop, the client session
// state machine, backend pools, authentication, TLS, the cancel-key map, the
// admin HTTP endpoint and console, query metrics and graceful shutdown.
//
// # Sessions
//
// Each client connection is a session (session.go) that moves through named
// states: startup -> auth -> idle <-> busy -> closed. "busy" means a server
// connection is attached. The session goroutine reads client messages and
// writes them to the server; the pump (pump.go) reads server messages and
// forwards them to the client. A batch that ends in Sync, Query or Flush is
// answered on the session goroutine itself, by the pump's code, for a few
// milliseconds at most (inline.go): most transactions in transaction mode
// start no second goroutine. Otherwise (an open transaction, COPY, a slow
// statement, a pinned connection) a pump goroutine reads the server while
// the session goroutine reads the client. The session mutex guards what
// they share: the attached backend, the queue of in-flight operations, the
// client writer and the transaction status.
//
// Every message sent to a server pushes an op (ops.go) describing the
// response it will produce; the pump matches each server message to the op
// at the head of the queue. This is what lets the proxy inject messages
// (re-Parse of a prepared statement on a server that lacks it, replay of
// session settings, Close of an evicted statement) and swallow their
// answers, and synthesise answers itself (ParseComplete for a statement the
// server already has, CloseComplete, errors) at exactly the right place in
// the response stream. After an ErrorResponse the ops of that Sync cycle are
// dropped, as PostgreSQL ignores the rest of the batch until Sync.
//
// # Memory and the hot path
//
// An idle client holds no I/O buffers: the client reader and writer come
// from sync.Pools while a message is handled (buffers.go), and a waiting
// session parks on its socket without a buffer; the logged-in client is
// served on a fresh goroutine so login's stack growth is not kept. A
// server connection idle for less than peekAfter is lent without the
// MSG_PEEK liveness check (pool.go). On Linux, plain TCP sockets are read
// and written with raw system calls inside syscall.RawConn (rawio_linux.go),
// so the Go runtime never takes a P from a thread preempted in a loopback
// write; the raw I/O travels with the pooled buffers, not the session.
// bench/ measures all of it (scenario 5, BenchmarkIdleClientMemory,
// BenchmarkRoundTrip, the harness's system-call counts).
//
// # Safe points
//
// In transaction mode a server connection goes back to the pool only at a
// safe point (safeToReleaseLocked): the server sent ReadyForQuery 'I', no op
// is outstanding, no write is in flight, no COPY runs, and the session is not
// pinned. Only the pump releases (on whichever goroutine it runs), because
// only it may stop reading the server. Session state that cannot move (LISTEN, advisory locks, temp
// tables, WITH HOLD cursors, SQL PREPARE, SET ROLE) pins the session to its
// server connection until the client leaves; pins are counted by reason.
//
// # Carried session state
//
// Named prepared statements get a proxy-wide name derived from their text,
// parameter types and the session's settings (extended.go); each server
// connection keeps an LRU of the names it has prepared. Startup parameters
// and committed SETs form the session's settings (settings.go); a server
// connection whose settings signature differs is brought in line with one
// injected query before the client's first message.
//
// # Observability and the admin console
//
// metrics.go holds the instruments registered on the injected Registerer.
// querystats.go times each statement: the session stamps the Query or
// Execute op it queues (arrival of the statement's first message, the send
// to the server, the target node, the fingerprint's statistics entry) and
// the pump records it when the op completes (CommandComplete for Execute,
// ReadyForQuery for Query); the hot path takes two clock readings and a few
// atomic adds, and the fingerprint comes from routing's shape cache. The
// statistics table is bounded (5000 shapes) and so is the label set of the
// latency histogram (metrics.max_fingerprints, the rest "other"). A client
// that logs in to the database "pgsluice" as one of admin.users gets the
// admin console (admin.go, admin_show.go) instead of a server connection;
// PAUSE closes a gate that attach waits on (for every database, or one:
// admin_db.go, with DISABLE, KILL and WAIT_CLOSE); RECONNECT advances each
// pool's epoch, and a connection dialled in an older epoch is closed when
// released.
//
// # Pools and their limits
//
// A pool serves one (database, user, node) with at most pool.size server
// connections (pool.go). pool.max_db_connections caps one (database, node)
// across users and pool.max_user_connections one (user, node) across
// databases (dblimit.go): a dial takes a slot of each, backend.close gives
// them back, and while anyone waits for a slot a released connection under
// that limit is closed instead of pooled. Logins: a user missing from auth.users is looked up
// with auth.query (authquery.go), and its stored secret answers the
// servers through proxy/auth.
//
// # Result cache
//
// cache.go wires cachelayer in. Between transactions, with nothing in
// flight, a statement a rule or hint asks for is looked up by a key over
// database, user, session settings, text (without comments:
// routing.AppendCacheText), parameters and formats; a hit is
// answered with the stored frames as synthetic ops (no server attached).
// On a miss the generations are snapshotted, the statement is sent to the
// writer with a capture attached to its op, and the pump copies the
// RowDescription/DataRow/CommandComplete frames it forwards and stores them
// at CommandComplete. Extended-protocol Parse/Bind/Describe of the unnamed
// portal are held back until the Execute decides. Writes invalidate the
// tables they wrote at CommandComplete and again at the ReadyForQuery that
// ends their transaction, before the client sees it. Concurrent misses of
// one key share one fill (cacheflight.go: the leader always releases its
// waiters, whether it stored or not). Statements reading a table with
// row-level security, or a view on one, never use the cache (cacherls.go:
// the set is loaded per database from the writer and marked stale by DDL
// through the proxy).
//
// # Failure
//
// A client that leaves with a transaction open, a COPY running or anything in
// flight has its server connection closed, so PostgreSQL rolls back. A server
// that goes away under a busy client ends that client's session with a FATAL
// error; other clients are unaffected. A client silent beyond
// pool.idle_transaction_timeout inside a transaction, or beyond
// pool.client_idle_timeout outside one, is closed by a janitor (idle.go)
// the same way. All errors reach clients through proxy/pgerr, the one
// place that assigns SQLSTATEs.
//
// # Reload and handover
//
// The running configuration is an immutable *config.Config behind an
// atomic pointer; so are each pool's and the topology's copies. Server.Reload
// (reload.go) validates a new one, keeps the settings that cannot change live,
// and swaps the snapshots section by section (the reloaders table); pools
// resize in place, the topology swaps its node list. Listen (handover.go)
// opens SO_REUSEPORT listeners that steer new connections to the newest
// process on the port; Server.Handover drains the old accept queue, closes
// it and serves the connected clients until they leave.
package proxy
