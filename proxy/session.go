package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
	"github.com/pgsluice/pgsluice/proxy/wire"
	"github.com/pgsluice/pgsluice/routing"
)

// sessState names the states of a client session.
type sessState uint8

const (
	stateStartup sessState = iota // reading the startup packet, TLS
	stateAuth                     // authenticating the client
	stateIdle                     // logged in, no server connection attached
	stateBusy                     // a server connection is attached (transaction, batch, COPY, pin)
	stateClosed
)

var stateNames = [...]string{"startup", "auth", "idle", "busy", "closed"}

func (s sessState) String() string { return stateNames[s] }

// session is one client connection. Two goroutines work on it: the session
// goroutine (run) reads the client and writes to the attached server; the
// pump goroutine (one per attachment) reads the server and writes to the
// client. mu guards every field marked (mu); the rest belong to the session
// goroutine alone.
type session struct {
	srv  *Server
	cfg  *config.Config
	log  *slog.Logger
	conn net.Conn
	r    *bufio.Reader // client reader: session goroutine only; nil while waiting (buffers.go)
	// Pooled client buffers (buffers.go): rawc is the plain client socket
	// (nil under TLS); rb and wb are the pooled reader and writer s.r and
	// s.w belong to (nil while not held); wSmall is s.w while no pooled
	// writer is held (mu).
	rawc      syscall.RawConn
	rb        *pooledReader
	wb        *pooledWriter
	peekFn    func(fd uintptr) bool
	peekCalls int
	waited    bool // waitClient has returned once (buffers.go)
	wSmall    *bufio.Writer
	wPooled   bool // s.w is a pooled writer (mu)

	user, database string
	admitted       bool       // counted against pool.max_client_conn
	pool           *pool      // the writer's pool of (database, user): logins
	node           *node      // node of the attached server connection (mu)
	cond           *sync.Cond // signalled on release and ReadyForQuery (mu)
	routeOverride  string     // SET pgsluice.route: "", "primary" or "replica"
	wrote          bool       // the current transaction may have written (mu)
	lastWrite      time.Time  // when a transaction of this client that wrote committed (mu)
	settings       *settings  // session goroutine writes under mu; pump reads under mu
	key            cancelKey
	admin          bool      // the admin console (admin.go), not a PostgreSQL client
	appName        string    // application_name of the startup packet
	since          time.Time // when the client connected
	lastReq        int64     // nanotime of the last statement sent (mu)

	mu       sync.Mutex
	w        *bufio.Writer // client writer (mu)
	state    sessState     // (mu)
	b        *backend      // attached server connection (mu)
	ops      opQueue       // in-flight ops (mu)
	inflight int           // session goroutine is writing to b outside mu (mu)
	txStatus byte          // last ReadyForQuery status seen by the client (mu)
	pinned   routing.PinReason
	// skipCycle is the Sync cycle in which the server (or the proxy)
	// reported an error; messages of that cycle are ignored until Sync,
	// as PostgreSQL does. (mu)
	skipping  bool
	skipCycle uint64
	// unsynced: extended-protocol messages went to the attached server
	// since its last ReadyForQuery. The server may be inside an implicit
	// transaction (an Execute commits only at Sync) or ignoring messages
	// until Sync, whatever its last ReadyForQuery said, so the connection
	// is not released before the next one. (mu)
	unsynced bool
	// cycle is the Sync cycle of the next message sent (session goroutine;
	// read by the pump only through ops).
	cycle uint64
	// localSkip: the proxy itself failed a message of the current cycle;
	// discard client messages until Sync.
	localSkip bool
	// dirty is the backend whose writer holds unflushed client bytes.
	dirty *backend
	// pumpDone is closed when the current pump goroutine exits; pumpB is
	// the backend it reads (nil when none runs). (mu)
	pumpDone chan struct{}
	pumpB    *backend
	// tailFlush: the last message written to the attached server makes it
	// answer everything sent so far (Sync, Query, Flush, FunctionCall,
	// CopyDone, CopyFail), so the session goroutine may read the answers
	// itself (inline.go). Session goroutine only.
	tailFlush bool
	// parked: the pump waits on wake for an in-flight write to finish
	// before it can decide whether to release. (mu)
	parked bool
	wake   chan struct{}
	// txn tracks pending SETs and the last command tag (mu).
	txn txnTracker
	// fatal is set when the session must end (server lost, shutdown). (mu)
	fatal error

	stmts   map[string]*stmtInfo // client statement name -> statement (nil until the first: addStmt)
	unnamed *stmtInfo
	// unnamedSpare is a replaced unnamed statement kept for reuse
	// (newStmtInfo, buffers.go).
	unnamedSpare *stmtInfo
	unnamedGen   uint64
	lastBound    *stmtInfo
	scratch      []byte // the session goroutine's, for client bodies over the buffer size
	pscratch     []byte // the pump's, for server bodies (mu held); never shared with scratch
	trace        bool   // log every message (debug level)
	out          []byte // scratch for rewritten messages
	// retry records a read cycle sent to a replica so that it can be
	// replayed elsewhere if the replica fails (retry.go).
	retry retryState
	// catalogDDL: the current transaction ran DDL that may change
	// functions; reload their volatility when it ends (mu).
	catalogDDL bool
	cache      cacheState

	// Query statistics (querystats.go): qstart is when the pending
	// statement's first message arrived, lastQS the last entry used
	// (session goroutine); dbc this session's database counters.
	qstart int64
	lastQS *fpStats
	dbc    dbCounters // (mu)

	// Idle clients (idle.go): waiting is true while the session goroutine
	// waits for the client's next message; messages counts client
	// messages (session goroutine adds, janitor reads); idleSeen and
	// idleSince are the janitor's mark (janitor only); idleKill is set by
	// the janitor.
	waiting   atomic.Bool
	listening bool // the client has sent LISTEN: it waits for notifications (mu)
	messages  atomic.Uint32
	idleSeen  uint32
	idleSince int64 // Unix nanoseconds
	idleKill  atomic.Uint32
}

// run serves the client until it leaves. It owns conn.
func (s *session) run(ctx context.Context) {
	if err := s.startup(ctx); err != nil {
		s.log.Debug("client login failed", "err", err)
		s.cleanup()
		return
	}
	// Serve the logged-in client on a fresh goroutine: login (SCRAM,
	// pgproto3) grows this one's stack to several KiB, which an idle
	// client would otherwise keep (memory per idle client, bench
	// scenario 5). Counted in srv.wg like this one.
	s.srv.wg.Add(1)
	go s.serve()
}

// serve runs the session loop of a logged-in client, then cleans up.
func (s *session) serve() {
	defer s.srv.wg.Done()
	defer s.cleanup()
	if s.admin {
		s.adminLoop()
		return
	}
	s.loop()
}

// setState records a state transition (mu held).
func (s *session) setStateLocked(st sessState) {
	if s.state != st {
		if s.trace { // debug level enabled (newSession)
			s.log.Debug("session state", "from", s.state.String(), "to", st.String())
		}
		s.state = st
	}
}

// loop reads client messages until Terminate, EOF or a fatal error.
func (s *session) loop() {
	max := int(s.cfg.MaxMessageSize)
	s.initClientBuffers()
	for {
		var err error
		if s.r == nil || s.r.Buffered() == 0 {
			if err := s.flushServer(); err != nil {
				s.serverWriteFailed(err)
				return
			}
			s.pumpInline()
			if s.refusedDraining() {
				return
			}
			s.waiting.Store(true) // until the next header is in (idle.go)
			err = s.waitClient()
			if k := s.idleKill.Load(); k != idleKillNone {
				s.sendFatal(idleKillErr(k))
				return
			}
			// Shutdown may have begun while this client waited: the
			// message it sent meanwhile is refused like any idle
			// client's, whether or not Shutdown's wake-up (a read
			// deadline) has reached this session yet.
			if err == nil && s.refusedDraining() {
				return
			}
		}
		var typ byte
		var n int
		if err == nil {
			typ, n, err = wire.PeekHeader(s.r, max)
		}
		s.waiting.Store(false)
		if err != nil {
			s.readFailed(err)
			return
		}
		if f := s.fatalErr(); f != nil {
			return
		}
		if typ == 'X' {
			return
		}
		s.messages.Add(1)
		body, err := wire.ReadBody(s.r, n, &s.scratch)
		if err != nil {
			return
		}
		if err := s.handle(typ, body); err != nil {
			if !isNetErr(err) {
				s.sendFatal(err)
			}
			return
		}
	}
}

// refusedDraining tells an idle client 57P01 once Shutdown has begun;
// true when it did (the session ends).
func (s *session) refusedDraining() bool {
	if !s.srv.draining.Load() || !s.idle() {
		return false
	}
	s.sendFatal(pgerr.ErrShuttingDown)
	return true
}

// readFailed ends a session whose client read failed: a malformed or
// oversized message gets a FATAL naming it, a shutdown gets 57P01, a
// vanished client nothing.
func (s *session) readFailed(err error) {
	switch {
	case errors.Is(err, pgerr.ErrMessageTooLarge) || errors.Is(err, pgerr.ErrProtocol):
		s.sendFatal(err)
	case s.idleKill.Load() != idleKillNone:
		s.sendFatal(idleKillErr(s.idleKill.Load()))
	case s.srv.draining.Load():
		s.sendFatal(pgerr.ErrShuttingDown)
	}
}

// handle processes one client message. An error ends the session.
func (s *session) handle(typ byte, body []byte) error {
	if s.trace {
		// Type and length only: bodies carry literals (passwords in
		// ALTER ROLE, personal data), which never go to the log.
		s.log.Debug("client message", "type", string(typ), "len", len(body))
	}
	if s.localSkip {
		switch typ {
		case 'S':
			s.localSkip = false
		case 'Q':
			s.localSkip = false
		default:
			return nil
		}
	}
	if s.srv.cache != nil {
		if done, err := s.cacheExtended(typ, body); done || err != nil {
			return err
		}
	}
	switch typ {
	case 'Q':
		return s.handleQuery(body)
	case 'P':
		return s.handleParse(body)
	case 'B':
		return s.handleBind(body)
	case 'D':
		return s.handleDescribe(body)
	case 'E':
		return s.handleExecute(body)
	case 'C':
		return s.handleClose(body)
	case 'S':
		return s.handleSync()
	case 'H':
		return s.handleFlush()
	case 'F':
		return s.forwardWithOp(typ, body, op{kind: opFunc}, true)
	case 'd', 'c', 'f':
		return s.handleCopy(typ, body)
	default:
		return pgerr.Fatal(pgerr.ProtocolViolation, "invalid frontend message type %d", typ)
	}
}

// attach makes sure a server connection is attached, choosing the node for
// the statement that starts the transaction (d; nil for messages that
// carry no statement), acquiring a connection from that node's pool and
// replaying the session's settings onto it. Called by the session goroutine
// without mu held.
func (s *session) attach(d *routing.Decision) error {
	s.mu.Lock()
	if s.b != nil {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	if err := s.srv.waitIfPaused(s.database, &s.idleKill); err != nil {
		return err
	}
	p, n := s.choose(d)
	// No context deadline: acquire bounds its wait by pool.acquire_timeout
	// (a timer only when it must wait) and dialing by pool.connect_timeout.
	b, err := p.acquire(context.Background())
	if err != nil {
		if n != s.srv.topo.writer() && !errors.Is(err, pgerr.ErrAcquireTimeout) {
			// A replica we cannot reach: take it out of rotation and
			// read from the primary.
			s.srv.topo.markDown(n)
			return s.attach(nil)
		}
		return err
	}
	if err := killedErr(&s.idleKill); err != nil {
		// KILL came while the client was queued for this connection (the
		// killed sessions' connections closing made room): it runs
		// nothing more on the database.
		p.discard(b)
		return err
	}
	s.mu.Lock()
	s.b = b
	s.node = n
	s.setStateLocked(stateBusy)
	s.tailFlush = false
	if b.settingsSig != s.settings.sig {
		sql := s.settings.replaySQL(b.settingsSig != "")
		s.ops.push(op{kind: opSettings, cycle: s.cycle})
		b.settingsSig = s.settings.sig
		b.unnamedBy = nil
		s.mu.Unlock()
		if err := wire.WriteMessage(b.w, 'Q', append([]byte(sql), 0)); err != nil {
			return err
		}
		s.dirty = b
		s.tailFlush = true
	} else {
		s.mu.Unlock()
	}
	// No pump goroutine yet: the session goroutine reads the answers of
	// a batch that ends in a flush point itself (inline.go), and starts a
	// pump only when it must do something else meanwhile.
	return nil
}

// end finishes a write started under inflight++. Only the pump releases a
// server connection (it is the one reading it); if it parked waiting for
// this write to finish, wake it.
func (s *session) end() {
	s.mu.Lock()
	s.inflight--
	s.wakePumpLocked()
	s.mu.Unlock()
}

// wakePumpLocked wakes a parked pump.
func (s *session) wakePumpLocked() {
	if s.parked {
		s.parked = false
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// pushLocked queues an op and emits synthetic responses that are due.
func (s *session) pushLocked(o op) {
	o.cycle = s.cycle
	if o.kind.toServerUnsynced() {
		s.unsynced = true
	}
	if s.retry.rec {
		s.recordOpLocked(o)
	}
	s.ops.push(o)
	s.wakePumpLocked()
	if o.kind == opSynth {
		s.emitDueLocked()
	}
}

// forwardWithOp sends the message unchanged, queueing o; endsCycle marks
// Sync-like messages that start a new cycle.
func (s *session) forwardWithOp(typ byte, body []byte, o op, endsCycle bool) error {
	b, err := s.lockAttached(nil)
	if err != nil {
		return s.localError(err, endsCycle)
	}
	s.pushLocked(o)
	s.inflight++
	s.mu.Unlock()
	if endsCycle {
		s.cycle++
	}
	s.out = wire.AppendHeader(s.out[:0], typ, len(body))
	s.out = append(s.out, body...)
	return s.send(b)
}

// localError reports an error the proxy itself produced in answer to a
// client message, keeping the protocol in step: after a simple Query it is
// followed by ReadyForQuery; in an extended batch the rest of the batch up
// to Sync is discarded, as PostgreSQL does. Errors that leave the session
// unusable are returned to end it.
func (s *session) localError(err error, atSync bool) error {
	if err == errSkipToSync {
		return nil
	}
	if isNetErr(err) && !errors.Is(err, pgerr.ErrBackendUnavailable) {
		return err
	}
	e := pgerr.ToError(err)
	if e.Severity == "FATAL" || e.Severity == "PANIC" {
		return e
	}
	s.srv.m.errors.WithLabelValues(pgerr.Class(e.Code)).Inc()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pushLocked(op{kind: opSynth, msg: pgerr.AppendResponse(nil, e), synthErr: true})
	if atSync {
		st := s.txStatus
		if s.b == nil {
			st = 'I'
		}
		s.pushLocked(op{kind: opSynth, msg: readyMsg(st)})
		s.cycle++
	} else {
		s.localSkip = true
	}
	return s.flushClientLocked()
}

// handleSync forwards Sync, or answers it locally when nothing is attached.
func (s *session) handleSync() error {
	s.qstart = 0
	s.mu.Lock()
	attached := s.b != nil
	if !attached {
		st := s.txStatus
		s.pushLocked(op{kind: opSynth, msg: readyMsg(st)})
		s.cycle++
		s.skipping = false
		err := s.flushClientLocked()
		s.mu.Unlock()
		return err
	}
	s.mu.Unlock()
	return s.forwardWithOp('S', nil, op{kind: opSync}, true)
}

// handleFlush forwards Flush when something is outstanding on the server
// and flushes the client otherwise.
func (s *session) handleFlush() error {
	s.mu.Lock()
	b := s.b
	if b == nil || s.ops.len() == 0 {
		s.emitDueLocked()
		err := s.flushClientLocked()
		s.mu.Unlock()
		return err
	}
	if s.r.Buffered() > 0 {
		s.ensurePumpLocked() // not the end of the batch: see inline.go
	}
	s.inflight++
	s.mu.Unlock()
	s.tailFlush = true
	err := wire.WriteMessage(b.w, 'H', nil)
	if err == nil {
		err = b.w.Flush()
	}
	if s.dirty == b {
		s.dirty = nil
	}
	s.end()
	return err
}

// handleCopy forwards CopyData/CopyDone/CopyFail during COPY FROM STDIN.
// Outside COPY PostgreSQL ignores them, and so do we.
func (s *session) handleCopy(typ byte, body []byte) error {
	s.mu.Lock()
	b := s.b
	if b == nil || s.ops.len() == 0 {
		s.mu.Unlock()
		return nil
	}
	s.inflight++
	s.mu.Unlock()
	s.out = wire.AppendHeader(s.out[:0], typ, len(body))
	s.out = append(s.out, body...)
	return s.send(b)
}

// flushServer flushes client bytes buffered for the server.
func (s *session) flushServer() error {
	if s.dirty == nil {
		return nil
	}
	b := s.dirty
	s.mu.Lock()
	if b != s.b {
		// Replaced after a failure (retry.go) or released: its
		// unflushed bytes must not reach a server.
		s.mu.Unlock()
		s.dirty = nil
		return nil
	}
	s.inflight++
	s.mu.Unlock()
	err := b.w.Flush()
	s.dirty = nil
	if err != nil && s.retry.rec {
		err = s.retryWriteFailed(b, err)
	}
	s.end()
	return err
}

// idle reports whether no server connection is attached.
func (s *session) idle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b == nil
}

func (s *session) fatalErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fatal
}

// maybeReleaseLocked returns the attached server connection to the pool at
// a safe point: see safeToRelease.
func (s *session) maybeReleaseLocked() {
	if s.b == nil || !s.safeToReleaseLocked() {
		return
	}
	b := s.b
	s.b = nil
	s.setStateLocked(stateIdle)
	b.pool.release(b)
	s.cond.Broadcast()
}

// safeToReleaseLocked is the one rule for giving a server connection back
// in transaction mode: the server said ReadyForQuery 'I' and nothing was
// sent to it since (no open implicit transaction, no skip-until-Sync),
// nothing of the client's is in flight or buffered, no COPY is running, and
// the session is not pinned to its server connection.
func (s *session) safeToReleaseLocked() bool {
	return s.cfg.Pool.Mode == config.ModeTransaction &&
		s.pinned == routing.PinNone &&
		s.txStatus == 'I' &&
		!s.unsynced && !s.skipping &&
		s.ops.len() == 0 &&
		s.inflight == 0 &&
		s.fatal == nil
}

// flushClientLocked flushes the client writer (mu held).
// A pooled writer goes back to its pool once it is empty.
func (s *session) flushClientLocked() error {
	if s.w.Buffered() == 0 {
		s.putClientWriterLocked()
		return nil
	}
	err := s.w.Flush()
	if err == nil {
		s.putClientWriterLocked()
	}
	return err
}

// sendFatal writes a FATAL ErrorResponse to the client.
func (s *session) sendFatal(err error) {
	e := pgerr.ToError(err)
	e.Severity = "FATAL"
	s.srv.m.errors.WithLabelValues(pgerr.Class(e.Code)).Inc()
	s.mu.Lock()
	defer s.mu.Unlock()
	// 5s, not 1s: the deadline starts before this goroutine may next run,
	// and on a saturated machine (a connection storm) a 1s deadline could
	// expire before the write, turning e.g. a 53300 refusal into a silent
	// close. A client that stopped reading still cannot hold us long.
	s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	s.w.Write(pgerr.AppendResponse(nil, e))
	s.w.Flush()
}

// serverWriteFailed ends the session after the server connection broke
// while we were writing to it.
func (s *session) serverWriteFailed(err error) {
	s.sendFatal(pgerr.Wrap(err, pgerr.ConnectionFailure, "server connection lost"))
}

// cleanup runs when the session goroutine exits: the client is gone. An
// attached server connection in a clean state goes back to the pool; one
// in a transaction, COPY or with anything in flight is closed, so that
// PostgreSQL rolls back whatever the client left half-done.
func (s *session) cleanup() {
	s.conn.Close()
	s.mu.Lock()
	s.setStateLocked(stateClosed)
	b := s.b
	s.b = nil
	clean := b != nil && s.txStatus == 'I' && !s.unsynced && !s.skipping && s.ops.len() == 0 && s.inflight == 0 && s.fatal == nil && s.pinned == routing.PinNone
	// A client that vanished while its statement ran: cancel the
	// statement, so that PostgreSQL rolls back and drops its locks now
	// rather than when the statement ends and its answer finds the
	// connection closed.
	running := b != nil && s.ops.len() > 0 && s.fatal == nil
	if b != nil {
		if !clean {
			b.broken = true
		}
		// Unblock the pump: it exits once it sees s.b != its backend.
		b.conn.SetReadDeadline(time.Now())
		s.parked = true
		s.wakePumpLocked()
	}
	done := s.pumpDone
	s.mu.Unlock()
	if b != nil {
		if done != nil {
			<-done
		}
		b.conn.SetReadDeadline(time.Time{})
		if running {
			s.srv.cancelVanished(b)
		}
		if clean && s.cfg.Pool.Mode == config.ModeSession {
			if err := b.exec("DISCARD ALL"); err != nil {
				b.broken = true
			}
			b.settingsSig = ""
			b.prepared.reset()
			b.unnamedBy = nil
		}
		if b.unnamedBy == s {
			b.unnamedBy = nil
		}
		b.pool.release(b)
	}
	s.mu.Lock()
	s.releaseClientBuffersLocked()
	s.mu.Unlock()
	if s.key != (cancelKey{}) {
		s.srv.cancels.Delete(s.key)
	}
	s.cacheSessionEnded()
	s.flushStats()
	s.srv.sessionEnded(s)
}

func isNetErr(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

var errReleased = fmt.Errorf("server connection released")
