// Package bench compares direct PostgreSQL, PgBouncer and pgsluice side by
// side on this machine, as issue 6 asks, and renders the comparison as a
// Markdown table, a JSON document and an SVG chart.
//
// # What it owns
//
// Run starts everything it measures and stops all of it before returning:
// a local PostgreSQL primary (deploy/local), pgbench tables, a PgBouncer in
// transaction mode and one or more pgsluice processes built from
// ./cmd/pgsluice, and for scenario 8 (make bench-floor, never by default)
// the three minimal forwarders of bench/floor. Every server is a child of the calling process in its own
// process group with a parent-death signal, so a harness that dies leaves
// nothing behind; Run also kills them itself on every return path. Nothing
// listens on any address but 127.0.0.1.
//
// The servers are configured alike: the same pool size, transaction pooling,
// the same client authentication (SCRAM-SHA-256 by default, user app), the
// same RLIMIT_NOFILE (the harness raises its own limit and both proxies
// inherit it; PgBouncer is started with setpriv so no PAM session lowers
// it), the same listen backlog, and logging of connections turned off in
// both.
//
// # How it measures
//
// Each scenario runs its targets interleaved (direct, PgBouncer, pgsluice,
// direct, …) because timings on a shared 2-core machine drift by tens of
// percent between minutes; the figure reported is the median of the runs.
// Load comes from pgbench where pgbench can express it (TPS, per-transaction
// latencies from --log, -C churn) and from a small raw-protocol client
// (rawclient.go) for connection storms and idle clients. The raw client
// caches SCRAM salted passwords by salt, so its own PBKDF2 cost does not
// compete with the servers for the two cores.
//
// Proxy CPU time per transaction is the growth of utime+stime in
// /proc/PID/stat over a run divided by the transactions of that run; memory
// is VmRSS from /proc/PID/status.
//
// # Concurrency
//
// Run is not safe for concurrent use with another Run in the same process
// (both would raise the same RLIMIT and fight for the CPU anyway). The
// helpers that measure one process (ReadProc) are safe for concurrent use.
package bench
