// Package floor holds five deliberately minimal PostgreSQL forwarders. They
// are not proxies anyone should run: they exist to measure, beside PgBouncer
// and pgsluice, what the cheapest possible forwarder costs in each of several
// Go designs, so that the gap between pgsluice and PgBouncer can be split
// into "our code" and "the model" (bench scenario 8, `make bench-floor`).
//
// The models:
//
//   - ModelCopy: two goroutines per client copying bytes to and from a
//     server connection of its own (net.Conn, no pooling, no parsing). The
//     client logs in to PostgreSQL through it.
//   - ModelPool: one goroutine per client; each batch (what one read of the
//     client returns) borrows a server connection from a channel of size N,
//     copies the answers back until ReadyForQuery with status 'I', and
//     returns it. Clients are let in without a password; the server
//     connections were logged in at start.
//   - ModelLoop: the same pooling done by one epoll loop on one locked OS
//     thread with raw read/write/epoll_wait system calls, PgBouncer's
//     design (Linux only). The loop waits in epoll_wait while holding its P
//     for up to loopRawWait, then falls back to the runtime-aware blocking
//     call, so an idle loop does not hold up the garbage collector.
//   - ModelPark: ModelPool's goroutines, but the sockets are taken away
//     from the runtime's netpoller: a goroutine that finds its socket
//     empty parks on a channel, and one poller goroutine of the
//     forwarder's own (woken through the runtime when its edge-triggered
//     epoll instance has events) wakes every ready socket's goroutine in
//     one pass (Linux only). ModelPark1 is the same with GOMAXPROCS 1
//     while it serves: one thread runs the poller and all the goroutines.
//     They ask whether the loop's advantage is its batched wake-ups,
//     which goroutine code could keep, or its callback structure.
//
// Only frame headers are looked at (to find ReadyForQuery). Nothing here
// handles errors gracefully beyond closing the client: a lost server
// connection ends the process (ModelLoop) or that client (ModelPool).
//
// Serve is safe to call once per listener; the models share no state
// across calls except ModelLoop's epoll instance, which is per call.
package floor
