package proxy

import (
	"context"
	"errors"
	"strings"

	"github.com/pgsluice/pgsluice/proxy/wire"
	"github.com/pgsluice/pgsluice/routing"
)

// Transparent retry of reads on a replica.
//
// A Sync cycle (one simple Query, or extended messages up to and including
// Sync) that starts outside a transaction while the session is attached to
// a replica is recorded: the session goroutine keeps the bytes it sends to
// the server for that cycle. If the replica connection then fails (read
// error, EOF, a FATAL ErrorResponse) or the replica answers 25006
// (read-only transaction: a statement we took for a read writes) before
// any server message of the cycle has been forwarded to the client, the
// pump drops that connection and replays the recorded bytes on another
// server — another healthy replica or, for 25006 or when none is left, the
// node that takes writes — and carries on pumping from there. Replaying is
// safe because nothing of the cycle ran anywhere but on a replica, which
// cannot have changed data. A cycle is retried at most once.
//
// Synthetic responses emitted before the first server message (the
// ParseComplete of a named Parse answered by the proxy) stay valid: the
// replay prepares, on the new server, every statement the recorded bytes
// use without parsing themselves. Synthetic responses queued behind server
// responses are emitted only after them, so by then the cycle is disarmed.
//
// The server's answers are held back (retryBufs.held) until the cycle's
// ReadyForQuery, up to maxHeld: a server killed mid-statement flushes what
// it had buffered, the statement's first rows included, with its FATAL
// error (or, stopped in immediate mode, its shutdown warning), and a row
// already forwarded would make the retry impossible.
//
// Cost when nothing fails: lockAttached compares the attached node with the
// writer; on a replica, the first message of a cycle is kept by swapping
// buffers (no copy) and later messages of the same cycle are appended to a
// reused buffer; the pump tests one bool per server message, and a
// replica's answers are copied once more (into held, then to the client's
// buffer) when the cycle ends.

// retryState is the recorded cycle. armed, cycle, b are guarded by mu. rec
// and buf belong to the session goroutine, which writes buf only while
// inflight > 0 or under mu; the pump reads buf only under mu with
// inflight == 0.
type retryState struct {
	armed bool     // the pump may still retry the cycle (mu)
	rec   bool     // the session goroutine records what it sends
	cycle uint64   // the recorded cycle
	b     *backend // the replica connection the cycle was sent to
	// The buffers are allocated when a cycle is first armed: most
	// sessions never read from a replica, and an idle one should not
	// carry them. nil until then.
	*retryBufs
}

// retryBufs are a retryState's buffers.
type retryBufs struct {
	buf []byte // the bytes sent to b in the cycle
	// ops are the ops queued for the cycle, in order (mu): those already
	// completed are queued again for the replay.
	ops []op
	// held are the cycle's server responses (ParseComplete, BindComplete,
	// RowDescription, and results: DataRow, CommandComplete), kept from
	// the client while the cycle may still be retried, up to maxHeld: a
	// server killed mid-query flushes what it had buffered (a statement's
	// first rows included) together with its FATAL error or, stopped in
	// immediate mode, its shutdown warning. (mu)
	held []byte
}

// maxHeld bounds the responses a retryable cycle keeps from the client;
// past it the cycle is disarmed and they are forwarded.
const maxHeld = 64 << 10

// retryCause says why a cycle is retried.
type retryCause uint8

const (
	causeNone     retryCause = iota
	causeLost                // connection lost or FATAL: mark the node down, try another
	causeFatal               // FATAL the node survives (recovery conflict, timeouts): try another
	causeReadOnly            // 25006: the statement writes; run it on the primary
)

// errRetried tells the pump that serverMessageLocked moved the session to
// another server connection (s.b).
var errRetried = errors.New("pgsluice: cycle retried on another server")

// noteRetryLocked runs in lockAttached with a server attached and mu held,
// before the message for decision d (nil: no statement) is sent: it starts
// recording a cycle that begins on a replica outside a transaction, keeps
// recording within it, and stops otherwise.
func (s *session) noteRetryLocked(d *routing.Decision) {
	r := &s.retry
	if !r.rec && len(s.srv.topo.list()) == 1 {
		return
	}
	if r.rec && r.b == s.b && r.cycle == s.cycle {
		return // a later message of the recorded cycle
	}
	r.rec = false
	if s.node == nil || s.node == s.srv.topo.writer() {
		return
	}
	if d != nil && d.Target != routing.TargetReplica {
		return
	}
	if s.txStatus != 'I' || s.pinned != routing.PinNone || s.inflight != 0 || s.fatal != nil || s.skipping {
		return
	}
	for i := 0; i < s.ops.len(); i++ {
		if s.ops.at(i).kind != opSettings {
			return // responses of an earlier cycle are still due
		}
	}
	r.rec, r.armed, r.cycle, r.b = true, true, s.cycle, s.b
	if r.retryBufs == nil {
		r.retryBufs = &retryBufs{}
	}
	r.buf = r.buf[:0]
	r.ops = r.ops[:0]
	r.held = r.held[:0]
}

// recordOpLocked keeps an op queued for the recorded cycle.
func (s *session) recordOpLocked(o op) {
	if r := &s.retry; r.armed && o.cycle == r.cycle {
		r.ops = append(r.ops, o)
	}
}

// retryScreenLocked looks at a server message (not an ErrorResponse) while
// the cycle is armed: a message that would reach the client disarms it,
// except those holdLocked and holdFrameLocked keep back. It reports
// whether it consumed the message.
func (s *session) retryScreenLocked(b *backend, typ byte, n int, head *op, drop bool) (bool, error) {
	switch typ {
	case 'N':
		if head != nil && head.kind == opSettings {
			return false, nil
		}
		return s.retryNoticeLocked(b, n)
	case '1', '2', '3', 't', 'T', 'n':
		return false, nil // dropped, or held by holdLocked
	case 'D', 'C':
		// Results are held too, unless a cache fill captures them: a
		// replay would complete that fill a second time.
		if head == nil || head.cap == nil {
			return false, nil // held by holdLocked or holdFrameLocked
		}
	case 'A':
	default:
		if drop {
			return false, nil
		}
	}
	s.disarmLocked()
	return false, nil
}

// holdLocked keeps a server message of n body bytes, still in b's
// buffer, back while armed.
func (s *session) holdLocked(b *backend, n int) error {
	if wire.HeaderLen+n > b.r.Size() || len(s.retry.held) > maxHeld {
		s.disarmLocked()
		return wire.Forward(s.w, b.r, n)
	}
	frame, err := b.r.Peek(wire.HeaderLen + n)
	if err != nil {
		return err
	}
	s.retry.held = append(s.retry.held, frame...)
	b.r.Discard(len(frame))
	return nil
}

// holdFrameLocked keeps a server message already read (body) back while
// armed, or forwards it.
func (s *session) holdFrameLocked(typ byte, body []byte) {
	if s.retry.armed {
		if len(s.retry.held)+wire.HeaderLen+len(body) <= maxHeld {
			s.retry.held = wire.AppendHeader(s.retry.held, typ, len(body))
			s.retry.held = append(s.retry.held, body...)
			return
		}
		s.disarmLocked()
	}
	wire.WriteMessage(s.w, typ, body)
}

// disarmLocked ends the chance of a retry: held responses go to the client.
func (s *session) disarmLocked() {
	s.retry.armed = false
	if s.retry.retryBufs != nil && len(s.retry.held) > 0 {
		s.clientWriterLocked().Write(s.retry.held)
		s.retry.held = s.retry.held[:0]
	}
}

// releaseHeldLocked runs when the pump has read all the server sent and is
// about to flush the client. While the cycle's Sync (or Query) is queued
// the server owes more (its ReadyForQuery at least) and held responses can
// wait for it; otherwise the client may be waiting on a Flush for exactly
// them: let them go.
func (s *session) releaseHeldLocked() {
	for i := 0; i < s.ops.len(); i++ {
		if o := s.ops.at(i); o.cycle == s.retry.cycle && (o.kind == opSync || o.kind == opQuery || o.kind == opFunc || o.kind == opSplit) {
			return
		}
	}
	s.disarmLocked()
}

// recordForRetry keeps the message in s.out (about to be sent) for a
// replay and returns the bytes to send. The first message of a cycle is
// kept by swapping buffers; later ones are appended.
func (s *session) recordForRetry() []byte {
	r := &s.retry
	if len(r.buf) == 0 {
		r.buf, s.out = s.out, r.buf[:0]
		return r.buf
	}
	r.buf = append(r.buf, s.out...)
	return s.out
}

// retryNoticeLocked handles a NoticeResponse while a cycle is armed: a
// shutdown warning (57P01/57P02, sent by a server stopped in immediate
// mode just before it closes the connection) is swallowed, so that the
// cycle can still be retried; any other notice disarms (the responses
// held so far go to the client first) and is forwarded. It reports
// whether it consumed the message.
func (s *session) retryNoticeLocked(b *backend, n int) (bool, error) {
	if n > 4096 {
		s.disarmLocked()
		return false, nil
	}
	frame, err := b.r.Peek(wire.HeaderLen + n)
	if err != nil {
		return false, nil // let the normal path report it
	}
	if strings.HasPrefix(errorCode(frame[wire.HeaderLen:]), "57P") {
		b.r.Discard(wire.HeaderLen + n)
		return true, nil
	}
	s.disarmLocked()
	return false, nil
}

// retryCauseOf classifies an ErrorResponse received while armed.
func retryCauseOf(body []byte) retryCause {
	code, sev := errorCodeSeverity(body)
	switch {
	case code == "25006":
		return causeReadOnly
	case sev != "FATAL" && sev != "PANIC":
		return causeNone
	case code == "57P01" || code == "57P02" || code == "57P03" || strings.HasPrefix(code, "08"):
		return causeLost
	}
	return causeFatal
}

// errorCodeSeverity extracts SQLSTATE and the non-localised severity (V,
// else S) of an ErrorResponse body.
func errorCodeSeverity(body []byte) (code, sev string) {
	var sevS string
	for len(body) > 1 {
		f := body[0]
		v, rest, ok := wire.CString(body[1:])
		if !ok {
			break
		}
		switch f {
		case 'C':
			code = string(v)
		case 'V':
			sev = string(v)
		case 'S':
			sevS = string(v)
		}
		body = rest
	}
	if sev == "" {
		sev = sevS
	}
	return code, sev
}

// retryLocked replays the armed cycle of b on another server after cause.
// It reports whether it did; then s.b is the new connection, b has been
// released (closed) and the pump must continue with s.b. Called by the
// pump with mu held; it may wait (mu released) for an in-flight write of
// the session goroutine to end.
func (s *session) retryLocked(b *backend, cause retryCause) bool {
	r := &s.retry
	if !r.armed || r.b != b {
		return false
	}
	// The session goroutine may be writing to b; its bytes belong to the
	// cycle (or to a later one, which forbids the retry).
	for s.inflight > 0 && s.b == b && s.state != stateClosed {
		s.parked = true
		s.mu.Unlock()
		<-s.wake
		s.mu.Lock()
	}
	if !r.armed || r.b != b || s.b != b || s.state == stateClosed || s.fatal != nil || s.inflight != 0 {
		return false
	}
	// The queue must hold the cycle's ops that are still due, which are
	// the tail of those recorded; the others have completed and will be
	// answered again by the replay (synthetic ones emitted are not
	// emitted again).
	var due []op
	for i := 0; i < s.ops.len(); i++ {
		if o := s.ops.at(i); o.kind != opSettings {
			due = append(due, *o)
		}
	}
	done := len(r.ops) - len(due)
	if done < 0 {
		return false
	}
	for i, o := range due {
		if o.cycle != r.cycle || r.ops[done+i].kind != o.kind {
			return false
		}
	}
	failed := s.node
	if cause == causeLost {
		s.srv.topo.markDown(failed)
	}
	var n *node
	if cause != causeReadOnly {
		n = s.srv.topo.reader(s.rywSinceLocked(), func(n *node) int {
			active, _, _, _ := s.poolOn(n).stats()
			return active
		})
		if n == failed {
			n = nil
		}
	}
	if n == nil {
		n = s.srv.topo.writer()
	}
	if n == failed {
		return false
	}
	// Holding mu while acquiring keeps the session goroutine from sending
	// anything to b meanwhile; this is the rare path.
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Pool.AcquireTimeout+s.cfg.Pool.ConnectTimeout)
	nb, err := s.poolOn(n).acquire(ctx)
	cancel()
	if err != nil {
		s.log.Warn("retry of a failed read: no server connection", "node", n.name, "err", err)
		return false
	}
	// Committed to the replay: until here a refusal left the cycle armed
	// with its held answers, for the caller to disarm (they go to the
	// client before the error); now the replay answers again.
	r.armed = false
	r.held = r.held[:0]
	// Drop b: its responses will never come.
	b.broken = true
	b.conn.Close()
	b.pool.release(b)
	s.b, s.node = nb, n
	s.cond.Broadcast()
	if cause == causeReadOnly {
		s.wrote = true // it evidently writes: read-your-writes applies
	}
	msg, front := s.replayPrefix(nb)
	msg = append(msg, r.buf...)
	msg = wire.AppendHeader(msg, 'H', 0) // the cycle may be waiting on a Flush
	// Queue the prefix's ops, then the cycle's completed server ops
	// again, then those still due.
	s.ops.reset()
	for _, o := range front {
		s.ops.push(o)
	}
	for _, o := range r.ops[:done] {
		if o.kind != opSynth {
			o.q = nil // counted in the query statistics when it first completed
			s.ops.push(o)
		}
	}
	for _, o := range due {
		s.ops.push(o)
	}
	// A cache fill of the cycle has captured part of the first server's
	// answer; the replay would add the same frames again. Drop the fill.
	for i := 0; i < s.ops.len(); i++ {
		if c := s.ops.at(i).cap; c != nil && !c.done {
			c.abandon()
		}
	}
	s.srv.m.routed(n.role(s.srv.topo), "retry")
	_, err = nb.w.Write(msg)
	if err == nil {
		err = nb.w.Flush()
	}
	if err != nil {
		// The pump's next read fails and reports it.
		nb.broken = true
	}
	return true
}

// role names the node's part for metrics.
func (n *node) role(t *topology) string {
	if n == t.writer() {
		return "primary"
	}
	return "replica"
}

// replayPrefix returns what must precede the recorded bytes on nb, and the
// ops it queues: the session settings, and every statement the recorded
// bytes use without parsing it themselves (the old server had it); names
// they parse that nb already has are closed first. It updates nb's
// statement bookkeeping as the replay will leave it.
func (s *session) replayPrefix(nb *backend) ([]byte, []op) {
	var msg []byte
	var ops []op
	cyc := s.retry.cycle
	if nb.settingsSig != s.settings.sig {
		sql := s.settings.replaySQL(nb.settingsSig != "")
		ops = append(ops, op{kind: opSettings, cycle: cyc})
		msg = wire.AppendHeader(msg, 'Q', len(sql)+1)
		msg = append(msg, sql...)
		msg = append(msg, 0)
		nb.settingsSig = s.settings.sig
		nb.unnamedBy = nil
	}
	parsed := map[string]bool{}
	var parsedOrder []string
	needUnnamed, parsesUnnamed, simple := false, false, false
	var need []string
	for buf := s.retry.buf; len(buf) >= wire.HeaderLen; {
		typ := buf[0]
		l := int(uint32(buf[1])<<24 | uint32(buf[2])<<16 | uint32(buf[3])<<8 | uint32(buf[4]))
		if l < 4 || len(buf) < 1+l {
			break
		}
		body := buf[wire.HeaderLen : 1+l]
		buf = buf[1+l:]
		var ref []byte
		switch typ {
		case 'Q':
			simple = true
		case 'P':
			if name, _, _, ok := parseMsg(body); ok {
				if len(name) == 0 {
					parsesUnnamed = true
				} else if !parsed[string(name)] {
					parsed[string(name)] = true
					parsedOrder = append(parsedOrder, string(name))
				}
			}
			continue
		case 'B':
			_, rest, ok := wire.CString(body)
			if !ok {
				continue
			}
			ref, _, _ = wire.CString(rest)
		case 'D':
			if len(body) > 1 && body[0] == 'S' {
				ref, _, _ = wire.CString(body[1:])
			} else {
				continue
			}
		default:
			continue
		}
		if len(ref) == 0 {
			if !parsesUnnamed {
				needUnnamed = true
			}
		} else if !parsed[string(ref)] {
			parsed[string(ref)] = true // needed once
			need = append(need, string(ref))
		}
	}
	closeStmt := func(name string) {
		ops = append(ops, op{kind: opCloseDrop, cycle: cyc})
		msg = wire.AppendHeader(msg, 'C', 1+len(name)+1)
		msg = append(msg, 'S')
		msg = append(msg, name...)
		msg = append(msg, 0)
	}
	for _, name := range parsedOrder {
		if nb.prepared.has(name) {
			closeStmt(name)
			nb.prepared.remove(name)
		}
	}
	for _, name := range need {
		if nb.prepared.has(name) {
			continue
		}
		info := s.stmtByServerName(name)
		if info == nil {
			continue // let the server report it, as it would have
		}
		if evicted := nb.prepared.add(name); evicted != "" {
			closeStmt(evicted)
		}
		ops = append(ops, op{kind: opParseDrop, cycle: cyc, stmt: name})
		msg = wire.AppendHeader(msg, 'P', len(info.parse))
		msg = append(msg, info.parse...)
	}
	if needUnnamed && s.unnamed != nil {
		ops = append(ops, op{kind: opParseDrop, cycle: cyc})
		msg = wire.AppendHeader(msg, 'P', len(s.unnamed.parse))
		msg = append(msg, s.unnamed.parse...)
		nb.unnamedBy, nb.unnamedGen = s, s.unnamedGen
	}
	for _, name := range parsedOrder {
		if evicted := nb.prepared.add(name); evicted != "" {
			closeStmt(evicted)
		}
	}
	switch {
	case parsesUnnamed:
		nb.unnamedBy, nb.unnamedGen = s, s.unnamedGen
	case simple:
		nb.unnamedBy = nil
	}
	return msg, ops
}

// stmtByServerName finds the client statement prepared under the proxy-wide
// name (rare path: a linear scan).
func (s *session) stmtByServerName(name string) *stmtInfo {
	for _, info := range s.stmts {
		if info.name == name {
			return info
		}
	}
	return nil
}

// retryWriteFailed handles a failed write to b (session goroutine, while
// inflight > 0) during a recorded cycle: the cycle is not lost yet, so the
// session must not end. Closing b makes the pump's read fail, and the pump
// retries the cycle or, if it no longer can, reports the lost connection
// to the client as it would have.
func (s *session) retryWriteFailed(b *backend, err error) error {
	if s.retry.b != b {
		return err
	}
	b.conn.Close()
	return nil
}
