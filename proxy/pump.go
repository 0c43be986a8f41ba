package proxy

import (
	"errors"
	"os"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
	"github.com/pgsluice/pgsluice/proxy/wire"
)

// maxServerMessage bounds what we accept from a server (PostgreSQL never
// sends more than 1 GiB in one message).
const maxServerMessage = 1<<30 + 1024

// pump forwards server messages to the client while b is attached to s,
// matching them to the in-flight ops, and gives b back to the pool at a
// safe point. It exits when b is released or the session ends.
//
// A pump goroutine runs only while the session goroutine cannot read the
// answers itself (inline.go): an open transaction, a pinned or
// session-mode connection, COPY, a batch that does not end in a flush
// point, or a wait for a release.
func (s *session) pump(b *backend, done chan struct{}) {
	defer close(done)
	defer s.srv.pumpsRunning.Add(-1)
	if s.trace {
		defer s.log.Debug("pump exit", "backend", b.id)
	}
	for {
		var stop bool
		if b, stop = s.pumpRound(b, false); stop {
			return
		}
	}
}

// pumpRound waits until b has data, then forwards what is buffered and
// releases b if it is safe. It returns the backend to go on with (a retry
// may replace b) and whether to stop: b was released, replaced or failed,
// or, inline, the session goroutine must go back to its client (every
// answer is in, or COPY started). Called without mu held.
func (s *session) pumpRound(b *backend, inline bool) (*backend, bool) {
	// Block for data without holding the lock. Inline, for inlineWait
	// at most: then a pump goroutine takes over and the session goroutine
	// watches its client again.
	wait := inline && b.r.Buffered() == 0
	if wait {
		b.boundWait(inlineWait)
	}
	_, err := b.r.Peek(1)
	if wait {
		b.endWait()
	}
	if err != nil {
		if wait && errors.Is(err, os.ErrDeadlineExceeded) {
			return b, true
		}
		s.mu.Lock()
		if s.retryLocked(b, causeLost) {
			b = s.b
			s.adoptLocked(b, inline)
			s.mu.Unlock()
			return b, false
		}
		s.mu.Unlock()
		s.pumpFailed(b, err)
		return b, true
	}
	s.mu.Lock()
	if s.b != b {
		s.pumpExitLocked(b, inline)
		s.mu.Unlock()
		return b, true
	}
	s.clientWriterLocked()
	copying := false
	for b.r.Buffered() > 0 {
		if inline {
			if t, _ := b.r.Peek(1); t[0] == 'G' || t[0] == 'W' {
				copying = true // the server waits for the client's data
			}
		}
		if err := s.serverMessageLocked(b); err != nil {
			if err == errRetried || s.retryLocked(b, causeLost) {
				b = s.b
				s.adoptLocked(b, inline)
				break
			}
			s.mu.Unlock()
			s.pumpFailed(b, err)
			return b, true
		}
		if s.b != b {
			// Released at a safe point.
			err := s.flushClientLocked()
			s.pumpExitLocked(b, inline)
			s.mu.Unlock()
			if err != nil {
				s.conn.Close()
			}
			return b, true
		}
	}
	if s.retry.armed && len(s.retry.held) > 0 {
		s.releaseHeldLocked()
	}
	if err := s.flushClientLocked(); err != nil {
		// The client is gone; the session goroutine notices and
		// cleans up. Stop forwarding.
		s.pumpExitLocked(b, inline)
		s.mu.Unlock()
		s.conn.Close()
		return b, true
	}
	// The server is idle and the batch is answered, but the session
	// goroutine is still writing: nothing more can come from the
	// server, so wait for the write to end rather than read. (Inline,
	// the session goroutine is the reader and writes nothing meanwhile.)
	for !inline && s.b == b && s.ops.len() == 0 && s.txStatus == 'I' && s.inflight > 0 && s.state != stateClosed {
		s.parked = true
		s.mu.Unlock()
		<-s.wake
		s.mu.Lock()
	}
	if s.b == b && s.state != stateClosed {
		s.maybeReleaseLocked()
	}
	stop := s.b != b || inline && (copying || s.ops.len() == 0)
	if s.b != b {
		s.pumpExitLocked(b, inline)
	}
	s.mu.Unlock()
	return b, stop
}

// adoptLocked records that the pump goes on with b after a retry (mu
// held).
func (s *session) adoptLocked(b *backend, inline bool) {
	if !inline {
		s.pumpB = b
	}
}

// pumpExitLocked records that the pump goroutine of b stops, in the same
// critical section that decided it (mu held), so that a session that gets
// b again starts a new one.
func (s *session) pumpExitLocked(b *backend, inline bool) {
	if !inline && s.pumpB == b {
		s.pumpB = nil
	}
}

// pumpFailed handles a read error on the server connection.
func (s *session) pumpFailed(b *backend, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pumpB == b {
		s.pumpB = nil
	}
	if s.b != b || s.state == stateClosed {
		return // session cleanup woke us
	}
	// The server went away under the client (restart, pg_terminate_backend,
	// network). Whatever was in flight is lost: tell the client and end the
	// session, as PostgreSQL itself would.
	b.broken = true
	s.fatal = err
	if s.retry.armed {
		s.disarmLocked() // what the server answered before it failed comes first
	}
	e := pgerr.Wrap(err, pgerr.ConnectionFailure, "server connection lost")
	if pe := pgerr.ToError(err); pe.Code != pgerr.InternalError && pe.Code != pgerr.ConnectionFailure {
		e = pe
	}
	if k := s.idleKill.Load(); k == idleKillAdmin { // KILL closed the server connection
		e = pgerr.ToError(idleKillErr(k))
	}
	e.Severity = "FATAL"
	s.w.Write(pgerr.AppendResponse(nil, e))
	s.w.Flush()
	s.conn.Close()
}

// emitDueLocked emits synthetic responses at the head of the queue: every
// op before them has completed, so they are next in the response stream.
func (s *session) emitDueLocked() {
	for {
		o := s.ops.front()
		if o == nil || o.kind != opSynth {
			return
		}
		x := s.ops.pop()
		if s.skipping && s.skipCycle == x.cycle && !isReady(x.msg) {
			continue
		}
		if s.retry.retryBufs != nil && len(s.retry.held) > 0 {
			s.disarmLocked() // held server responses come first
		}
		s.clientWriterLocked().Write(x.msg)
		if x.synthErr {
			s.startSkipLocked(x.cycle)
		}
		if isReady(x.msg) {
			s.skipping = false
		}
	}
}

func isReady(msg []byte) bool { return len(msg) > 0 && msg[0] == 'Z' }

// readyMsgs are the ReadyForQuery messages the proxy synthesizes, by
// transaction status; shared and never written to.
var readyMsgs = [3][]byte{{'Z', 0, 0, 0, 5, 'I'}, {'Z', 0, 0, 0, 5, 'T'}, {'Z', 0, 0, 0, 5, 'E'}}

// readyMsg returns a ReadyForQuery with transaction status st, without
// allocating for PostgreSQL's three statuses.
func readyMsg(st byte) []byte {
	switch st {
	case 'I':
		return readyMsgs[0]
	case 'T':
		return readyMsgs[1]
	case 'E':
		return readyMsgs[2]
	}
	return []byte{'Z', 0, 0, 0, 5, st}
}

// startSkipLocked enters PostgreSQL's "ignore until Sync" state after an
// error in cycle c: queued ops of that cycle before its Sync will get no
// response and are removed (forgetting statements whose Parse the server
// will now ignore).
func (s *session) startSkipLocked(c uint64) {
	s.skipping = true
	s.skipCycle = c
	for i := 0; i < s.ops.len(); {
		o := s.ops.at(i)
		if o.cycle != c {
			break
		}
		if o.kind == opSync || o.kind == opQuery || o.kind == opSplit || (o.kind == opSynth && isReady(o.msg)) {
			break
		}
		x := s.ops.removeAt(i)
		if (x.kind == opParse || x.kind == opParseDrop) && s.b != nil {
			s.b.prepared.remove(x.stmt)
		}
		s.cacheOpDroppedLocked(&x)
	}
}

// serverMessageLocked handles one server message (mu held).
func (s *session) serverMessageLocked(b *backend) error {
	s.emitDueLocked()
	typ, n, err := wire.PeekHeader(b.r, maxServerMessage)
	if err != nil {
		return err
	}
	head := s.ops.front()
	if head != nil && head.cap != nil {
		s.cacheCaptureLocked(b, head, typ, n)
	}
	drop := head != nil && head.kind.dropped()
	if s.retry.armed && typ != 'E' {
		if done, err := s.retryScreenLocked(b, typ, n, head, drop); done || err != nil {
			return err
		}
	}
	if s.trace {
		h := -1
		if head != nil {
			h = int(head.kind)
		}
		s.log.Debug("server message", "type", string(typ), "len", n, "head", h, "queue", s.ops.len(), "backend", b.id)
	}
	switch typ {
	case 'D', 'T', 'n', 't', '2', '1', '3', 'I', 's', 'N', 'G', 'H', 'W', 'd', 'c', 'V':
		// Fast path: forward (or drop) the raw frame.
		if drop && typ != 'N' || drop && head.kind == opSettings {
			if err := wire.Skip(b.r, n); err != nil {
				return err
			}
		} else if s.retry.armed {
			if err := s.holdLocked(b, n); err != nil {
				return err
			}
		} else if err := wire.Forward(s.w, b.r, n); err != nil {
			return err
		}
		if head == nil {
			return nil
		}
		switch typ {
		case '1':
			if head.kind == opParse || head.kind == opParseDrop {
				s.ops.pop()
			}
		case '2':
			if head.kind == opBind {
				s.ops.pop()
			}
		case '3':
			if head.kind == opClose || head.kind == opCloseDrop {
				s.ops.pop()
			}
		case 'T', 'n':
			if head.kind == opDescribe {
				s.ops.pop()
			}
		case 'I', 's':
			if head.kind == opExecute {
				s.queryDoneLocked(head)
				s.ops.pop()
			}
		}
		s.emitDueLocked()
		return nil
	case 'C':
		body, err := wire.ReadBody(b.r, n, &s.pscratch)
		if err != nil {
			return err
		}
		if head != nil && !drop {
			s.txn.noteTag(body)
			noteTagRows(head, body)
		}
		if !drop {
			s.holdFrameLocked('C', body)
		}
		s.cacheCompleteLocked(head)
		if head != nil && head.kind == opExecute {
			s.txn.add(head.sets)
			s.queryDoneLocked(head)
			s.ops.pop()
			s.emitDueLocked()
		}
		return nil
	case 'S':
		body, err := wire.ReadBody(b.r, n, &s.pscratch)
		if err != nil {
			return err
		}
		b.noteParameterStatus(body)
		if !drop {
			wire.WriteMessage(s.w, 'S', body)
		}
		return nil
	case 'A':
		return wire.Forward(s.w, b.r, n)
	case 'E':
		body, err := wire.ReadBody(b.r, n, &s.pscratch)
		if err != nil {
			return err
		}
		if s.retry.armed {
			if c := retryCauseOf(body); c != causeNone && s.retryLocked(b, c) {
				return errRetried
			}
			head = s.ops.front() // retryLocked may have waited
			if head == nil || head.kind != opSettings {
				s.disarmLocked()
			}
		}
		if head != nil && head.kind == opSettings {
			s.log.Warn("replaying session settings failed", "err", errorText(body))
			b.settingsSig = "?"
			return nil
		}
		wire.WriteMessage(s.w, 'E', body)
		s.srv.m.errors.WithLabelValues(pgerr.Class(errorCode(body))).Inc()
		s.txn.noteError()
		if head == nil {
			return nil
		}
		head.qfailed = true
		if !head.kind.endsWithReady() {
			s.queryDoneLocked(head)
			x := s.ops.pop()
			if x.kind == opParse || x.kind == opParseDrop {
				b.prepared.remove(x.stmt)
			}
			s.startSkipLocked(x.cycle)
		}
		return nil
	case 'Z':
		body, err := wire.ReadBody(b.r, n, &s.pscratch)
		if err != nil {
			return err
		}
		if len(body) != 1 {
			return pgerr.New(pgerr.ProtocolViolation, "malformed ReadyForQuery from server")
		}
		status := body[0]
		if head == nil || !head.kind.endsWithReady() {
			// Out of step: never hand this connection to anyone else.
			b.broken = true
			s.log.Error("ReadyForQuery with no matching request", "head", head)
		}
		var x op
		if head != nil {
			x = s.ops.pop()
		}
		if x.kind == opQuery && !s.txn.cycleErr {
			s.txn.add(x.sets)
		}
		s.queryDoneLocked(&x)
		s.cacheCatalogChangedLocked(status)
		s.cacheTxEndLocked(status)
		if x.kind != opSettings {
			if x.kind != opSplit {
				// A split's ReadyForQuery is the proxy's own: the
				// client's comes with its Sync, from the next server.
				wire.WriteMessage(s.w, 'Z', body)
			}
			s.txStatus = status
			s.txn.ready(status, s.settings, b)
			s.noteReadyLocked(status)
		}
		if x.kind == opSync || x.kind == opQuery {
			s.skipping = false
		}
		if x.kind != opSettings && x.kind.endsWithReady() {
			s.unsynced = false
		}
		s.emitDueLocked()
		s.maybeReleaseLocked()
		return nil
	default:
		if s.retry.armed {
			// Screening let it through (the head op's answer is dropped);
			// it must not pass the answers held before it.
			s.disarmLocked()
		}
		return wire.Forward(s.w, b.r, n)
	}
}

// errorCode extracts the SQLSTATE field of an ErrorResponse body.
func errorCode(body []byte) string {
	for len(body) > 1 {
		f := body[0]
		v, rest, ok := wire.CString(body[1:])
		if !ok {
			break
		}
		if f == 'C' {
			return string(v)
		}
		body = rest
	}
	return ""
}

// errorText extracts the message field of an ErrorResponse body.
func errorText(body []byte) string {
	for len(body) > 1 {
		f := body[0]
		v, rest, ok := wire.CString(body[1:])
		if !ok {
			break
		}
		if f == 'M' {
			return string(v)
		}
		body = rest
	}
	return ""
}
