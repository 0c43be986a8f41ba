package proxy

import (
	"encoding/binary"
	"encoding/hex"
	"errors"

	"github.com/cespare/xxhash/v2"

	"github.com/pgsluice/pgsluice/config"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
	"github.com/pgsluice/pgsluice/proxy/wire"
	"github.com/pgsluice/pgsluice/routing"
)

// stmtInfo is a client's prepared statement. name is the proxy-wide name it
// has on every server connection: derived from the text, the parameter
// types and the session settings (search_path changes what a name means),
// so clients that prepare the same statement share it on a server.
type stmtInfo struct {
	name     string
	parse    []byte // Parse body under the proxy-wide name, ready to send
	decision routing.Decision
	gen      uint64 // the classifier generation decision was made in
}

// pendingSets carries what a statement changes in the session, recorded
// when it completes.
type pendingSets struct {
	sets          []routing.SessionSet
	resetPrepared bool // DISCARD ALL / DEALLOCATE ALL wiped the server's statements
}

func effects(d *routing.Decision) *pendingSets {
	reset := d.Command == "discard" || d.Command == "deallocate"
	if len(d.Sets) == 0 && !reset {
		return nil
	}
	return &pendingSets{sets: d.Sets, resetPrepared: reset}
}

// stmtName returns the proxy-wide name of a statement.
func stmtName(sig string, query, paramTypes []byte) string {
	h := xxhash.New()
	h.WriteString(sig)
	h.Write([]byte{0})
	h.Write(query)
	h.Write([]byte{0})
	h.Write(paramTypes)
	var sum [8]byte
	binary.BigEndian.PutUint64(sum[:], h.Sum64())
	return "pgsluice_" + hex.EncodeToString(sum[:])
}

// addStmt records a client's named statement. The map is made at the
// first one: most clients never name a statement.
func (s *session) addStmt(name []byte, info *stmtInfo) {
	if s.stmts == nil {
		s.stmts = make(map[string]*stmtInfo)
	}
	s.stmts[string(name)] = info
}

// parseMsg splits a Parse body into name, query and the parameter-type
// section (Int16 count + Int32 OIDs), validating its layout.
func parseMsg(body []byte) (name, query, params []byte, ok bool) {
	name, rest, ok := wire.CString(body)
	if !ok {
		return nil, nil, nil, false
	}
	query, params, ok = wire.CString(rest)
	if !ok || len(params) < 2 {
		return nil, nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(params))
	if len(params) != 2+4*n {
		return nil, nil, nil, false
	}
	return name, query, params, true
}

// appendParse appends a whole Parse message.
func appendParse(dst []byte, name string, query, params []byte) []byte {
	dst = wire.AppendHeader(dst, 'P', len(name)+1+len(query)+1+len(params))
	dst = append(dst, name...)
	dst = append(dst, 0)
	dst = append(dst, query...)
	dst = append(dst, 0)
	return append(dst, params...)
}

// skippingNow reports whether the current cycle is being ignored after an
// error (the server will not answer its messages).
func (s *session) skippingNow() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.skipping && s.skipCycle == s.cycle
}

// lockAttached attaches a server connection and returns it with mu held.
// A statement that needs the primary while the session is attached to a
// replica outside a transaction (a pipelined write after a read) waits for
// that connection to be released, then attaches to the primary. When the
// reads' Sync has not come yet (one pipeline: reads, then the write, then
// Sync), the proxy ends the replica's part with a Sync of its own (see
// splitLocked) and waits for that. A statement that starts a transaction
// on a connection still attached from the one before (the client was
// quicker than the release), when that connection dates from before a
// RECONNECT, waits for its release the same way (staleAttachedLocked).
func (s *session) lockAttached(d *routing.Decision) (*backend, error) {
	for {
		if err := s.attach(d); err != nil {
			return nil, err
		}
		s.mu.Lock()
		for s.b != nil && d != nil && s.txStatus == 'I' && s.pinned == routing.PinNone && s.fatal == nil &&
			(s.node != nil && s.node != s.srv.topo.writer() && (d.Target == routing.TargetPrimary || s.routeOverride == "primary" || d.Hints.Route == "primary") ||
				s.staleAttachedLocked()) {
			if s.dirty != nil {
				// The replica is released after the ReadyForQuery of
				// what was sent to it; bytes still buffered for it (a
				// Sync followed by this message in one client packet)
				// must go out first, or the wait never ends.
				s.mu.Unlock()
				if err := s.flushServer(); err != nil {
					return nil, err
				}
				s.mu.Lock()
				continue
			}
			if s.skipping && s.skipCycle == s.cycle {
				// A read of this pipeline failed on the replica: the
				// write is skipped like the rest, up to the client's
				// Sync (which then goes to the replica).
				s.localSkip = true
				s.mu.Unlock()
				return nil, errSkipToSync
			}
			if s.unsynced && !s.splitPendingLocked() {
				if err := s.splitLocked(); err != nil {
					return nil, err
				}
				continue
			}
			s.ensurePumpLocked() // the release needs a reader of the replica
			s.cond.Wait()
		}
		if s.b != nil {
			if d != nil && writesData(d) {
				s.wrote = true
			}
			s.noteAttachedLocked(d)
			return s.b, nil
		}
		s.mu.Unlock()
	}
}

// staleAttachedLocked reports whether the attached connection dates from
// before its pool's last RECONNECT and may be given up now: transaction
// pooling, outside an extended-protocol batch (mu held; with the other
// conditions of lockAttached's wait).
func (s *session) staleAttachedLocked() bool {
	return s.cfg.Pool.Mode == config.ModeTransaction && !s.unsynced && s.b.epoch != s.b.pool.epoch.Load()
}

// errSkipToSync tells a message handler that the message is dropped
// silently: the client already has the error that started the skip.
var errSkipToSync = errors.New("pgsluice: skipping to Sync after an error")

// splitPendingLocked reports whether a split Sync awaits its ReadyForQuery.
func (s *session) splitPendingLocked() bool {
	for i := 0; i < s.ops.len(); i++ {
		if s.ops.at(i).kind == opSplit {
			return true
		}
	}
	return false
}

// splitLocked ends the part of the current pipeline that went to a
// replica with a Sync of the proxy's own, so that the replica answers what
// it was sent, commits its implicit read-only transaction and can be
// released; the rest of the pipeline then goes to the primary. The
// split's ReadyForQuery is not forwarded (the client gets one for its own
// Sync). Called with mu held; returns with mu held unless it fails.
func (s *session) splitLocked() error {
	b := s.b
	s.pushLocked(op{kind: opSplit})
	s.inflight++
	s.mu.Unlock()
	s.out = wire.AppendHeader(s.out[:0], 'S', 0)
	err := s.send(b) // recorded for a replay like the client's own messages
	if err == nil {
		err = s.flushServer()
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	return nil
}

// send writes s.out to b (mu not held) and ends the in-flight write.
// While the write is in flight (inflight > 0) the pump cannot release b.
// When the client has nothing more buffered the bytes are flushed at once;
// otherwise they wait for the next message (one syscall per batch).
func (s *session) send(b *backend) error {
	msg := s.out
	if s.retry.rec {
		msg = s.recordForRetry()
	}
	s.tailFlush = endsInFlushPoint(s.out)
	if len(msg) > b.w.Available() {
		// The write reaches the socket before the batch ends: a server
		// blocked on unread answers would block it (inline.go).
		s.mu.Lock()
		s.ensurePumpLocked()
		s.mu.Unlock()
	}
	_, err := b.w.Write(msg)
	s.out = s.out[:0]
	if err == nil && s.r.Buffered() == 0 {
		err = b.w.Flush()
		if s.dirty == b {
			s.dirty = nil
		}
	} else {
		s.dirty = b
	}
	if err != nil && s.retry.rec {
		err = s.retryWriteFailed(b, err)
	}
	s.end()
	return err
}

// ensureStmtLocked makes sure b has info prepared, queueing an injected
// Parse (and the Close of an evicted statement) into s.out.
func (s *session) ensureStmtLocked(b *backend, info *stmtInfo) {
	if b.prepared.has(info.name) {
		return
	}
	if evicted := b.prepared.add(info.name); evicted != "" {
		s.pushLocked(op{kind: opCloseDrop})
		s.out = wire.AppendHeader(s.out, 'C', 1+len(evicted)+1)
		s.out = append(s.out, 'S')
		s.out = append(s.out, evicted...)
		s.out = append(s.out, 0)
	}
	s.pushLocked(op{kind: opParseDrop, stmt: info.name})
	s.out = wire.AppendHeader(s.out, 'P', len(info.parse))
	s.out = append(s.out, info.parse...)
}

// ensureUnnamedLocked re-creates the client's unnamed statement on b when
// another client (or a simple query) has replaced it since it was parsed.
func (s *session) ensureUnnamedLocked(b *backend) {
	if s.unnamed == nil || (b.unnamedBy == s && b.unnamedGen == s.unnamedGen) {
		return
	}
	s.pushLocked(op{kind: opParseDrop})
	s.out = wire.AppendHeader(s.out, 'P', len(s.unnamed.parse))
	s.out = append(s.out, s.unnamed.parse...)
	b.unnamedBy, b.unnamedGen = s, s.unnamedGen
}

// forwardRaw sends a message the server will ignore (skip mode), with no op.
func (s *session) forwardRaw(typ byte, body []byte) error {
	b, err := s.lockAttached(nil)
	if err != nil {
		return s.localError(err, false)
	}
	s.inflight++
	s.mu.Unlock()
	s.out = wire.AppendHeader(s.out[:0], typ, len(body))
	s.out = append(s.out, body...)
	return s.send(b)
}

func (s *session) handleParse(body []byte) error {
	if s.skippingNow() {
		return s.forwardRaw('P', body)
	}
	name, query, params, ok := parseMsg(body)
	if !ok {
		return s.localError(pgerr.New(pgerr.ProtocolViolation, "invalid Parse message"), false)
	}
	d, gen := s.classifyParse(query)
	if d.Reason == routing.ReasonHintRejected {
		return s.localError(errWriteToReplica, false)
	}
	if d.Pin != routing.PinNone {
		s.pin(d.Pin)
	}
	pn := ""
	if len(name) > 0 {
		if _, exists := s.stmts[string(name)]; exists {
			return s.localError(pgerr.New("42P05", "prepared statement \"%s\" already exists", name), false)
		}
		pn = stmtName(s.settings.sig, query, params)
	}
	info := s.newStmtInfo(pn)
	info.decision, info.gen = d, gen
	info.parse = append(info.parse, pn...)
	info.parse = append(info.parse, 0)
	info.parse = append(info.parse, query...)
	info.parse = append(info.parse, 0)
	info.parse = append(info.parse, params...)

	if pn != "" && s.idle() {
		// Outside a transaction a named Parse needs no server yet: answer
		// it now and prepare the statement lazily on whichever server runs
		// its first Bind or Describe. Clients that prepare with a blocking
		// call (libpq's PQprepare, used by pgbench -M prepared) would
		// otherwise hold a pgbench thread waiting for a server while other
		// clients of that thread hold the servers in transactions.
		// A statement with an error is reported at its first use.
		s.addStmt(name, info)
		s.mu.Lock()
		s.pushLocked(op{kind: opSynth, msg: parseComplete})
		s.mu.Unlock()
		return nil
	}
	if pn == "" {
		s.markQueryStart()
	}
	b, err := s.lockAttached(unnamedDecision(pn, &d))
	if err != nil {
		return s.localError(err, false)
	}
	s.out = s.out[:0]
	if pn == "" {
		s.recycleUnnamed(s.unnamed)
		s.unnamed = info
		s.unnamedGen++
		b.unnamedBy, b.unnamedGen = s, s.unnamedGen
		s.pushLocked(op{kind: opParse})
		s.out = wire.AppendHeader(s.out, 'P', len(body))
		s.out = append(s.out, body...)
	} else {
		s.addStmt(name, info)
		if b.prepared.has(pn) {
			s.pushLocked(op{kind: opSynth, msg: parseComplete})
			s.mu.Unlock()
			return nil
		}
		if evicted := b.prepared.add(pn); evicted != "" {
			s.pushLocked(op{kind: opCloseDrop})
			s.out = wire.AppendHeader(s.out, 'C', 1+len(evicted)+1)
			s.out = append(s.out, 'S')
			s.out = append(s.out, evicted...)
			s.out = append(s.out, 0)
		}
		s.pushLocked(op{kind: opParse, stmt: pn})
		s.out = wire.AppendHeader(s.out, 'P', len(info.parse))
		s.out = append(s.out, info.parse...)
	}
	s.inflight++
	s.mu.Unlock()
	return s.send(b)
}

var (
	parseComplete = []byte{'1', 0, 0, 0, 4}
	closeComplete = []byte{'3', 0, 0, 0, 4}
)

// resolveStmtLocked rewrites a statement reference for b, injecting a Parse
// if b lacks it, and appends the message with the reference renamed:
// prefix + name + NUL + suffix.
func (s *session) resolveStmtLocked(b *backend, typ byte, prefix, name, suffix []byte) *stmtInfo {
	var info *stmtInfo
	if len(name) == 0 {
		s.ensureUnnamedLocked(b)
		info = s.unnamed
	} else if info = s.stmts[string(name)]; info != nil {
		s.ensureStmtLocked(b, info)
		name = []byte(info.name)
	}
	s.out = wire.AppendHeader(s.out, typ, len(prefix)+len(name)+1+len(suffix))
	s.out = append(s.out, prefix...)
	s.out = append(s.out, name...)
	s.out = append(s.out, 0)
	s.out = append(s.out, suffix...)
	return info
}

func (s *session) handleBind(body []byte) error {
	if s.skippingNow() {
		return s.forwardRaw('B', body)
	}
	portal, rest, ok := wire.CString(body)
	if !ok {
		return s.localError(pgerr.New(pgerr.ProtocolViolation, "invalid Bind message"), false)
	}
	stmt, rest, ok := wire.CString(rest)
	if !ok {
		return s.localError(pgerr.New(pgerr.ProtocolViolation, "invalid Bind message"), false)
	}
	s.markQueryStart()
	b, err := s.lockAttached(s.stmtDecision(stmt))
	if err != nil {
		return s.localError(err, false)
	}
	s.out = s.out[:0]
	prefix := body[:len(portal)+1]
	info := s.resolveStmtLocked(b, 'B', prefix, stmt, rest)
	s.pushLocked(op{kind: opBind})
	s.lastBound = info
	s.inflight++
	s.mu.Unlock()
	return s.send(b)
}

func (s *session) handleDescribe(body []byte) error {
	if s.skippingNow() {
		return s.forwardRaw('D', body)
	}
	if len(body) < 2 {
		return s.localError(pgerr.New(pgerr.ProtocolViolation, "invalid Describe message"), false)
	}
	name, rest, ok := wire.CString(body[1:])
	if !ok || len(rest) != 0 {
		return s.localError(pgerr.New(pgerr.ProtocolViolation, "invalid Describe message"), false)
	}
	b, err := s.lockAttached(describeDecision(s, body[0], name))
	if err != nil {
		return s.localError(err, false)
	}
	s.out = s.out[:0]
	if body[0] == 'S' {
		s.resolveStmtLocked(b, 'D', body[:1], name, nil)
	} else {
		s.out = wire.AppendHeader(s.out, 'D', len(body))
		s.out = append(s.out, body...)
	}
	o := op{kind: opDescribe}
	s.cacheNoteOpLocked(&o, nil)
	s.pushLocked(o)
	s.inflight++
	s.mu.Unlock()
	return s.send(b)
}

func (s *session) handleExecute(body []byte) error {
	if s.skippingNow() {
		return s.forwardRaw('E', body)
	}
	o := op{kind: opExecute}
	var d *routing.Decision
	if s.lastBound != nil {
		o.sets = effects(&s.lastBound.decision)
		d = &s.lastBound.decision
	}
	b, err := s.lockAttached(nil)
	if err != nil {
		return s.localError(err, false)
	}
	o = s.timedLocked(o, d, 0)
	s.cacheNoteOpLocked(&o, d)
	s.pushLocked(o)
	s.inflight++
	s.mu.Unlock()
	s.out = wire.AppendHeader(s.out[:0], 'E', len(body))
	s.out = append(s.out, body...)
	return s.send(b)
}

func (s *session) handleClose(body []byte) error {
	if s.skippingNow() {
		return s.forwardRaw('C', body)
	}
	if len(body) < 2 {
		return s.localError(pgerr.New(pgerr.ProtocolViolation, "invalid Close message"), false)
	}
	name, rest, ok := wire.CString(body[1:])
	if !ok || len(rest) != 0 {
		return s.localError(pgerr.New(pgerr.ProtocolViolation, "invalid Close message"), false)
	}
	if body[0] == 'S' && len(name) > 0 {
		// The server keeps the statement for whoever needs it next; the
		// client's name is gone.
		delete(s.stmts, string(name))
		s.mu.Lock()
		s.pushLocked(op{kind: opSynth, msg: closeComplete})
		s.mu.Unlock()
		return nil
	}
	b, err := s.lockAttached(nil)
	if err != nil {
		return s.localError(err, false)
	}
	if body[0] == 'S' {
		s.unnamed = nil
		if b.unnamedBy == s {
			b.unnamedBy = nil
		}
	}
	s.pushLocked(op{kind: opClose})
	s.inflight++
	s.mu.Unlock()
	s.out = wire.AppendHeader(s.out[:0], 'C', len(body))
	s.out = append(s.out, body...)
	return s.send(b)
}

// handleQuery forwards a simple Query, classifying it for pins and
// session settings.
func (s *session) handleQuery(body []byte) error {
	if len(body) == 0 || body[len(body)-1] != 0 {
		return pgerr.Fatal(pgerr.ProtocolViolation, "invalid Query message")
	}
	d := s.srv.classifyBytes(body[:len(body)-1])
	if d.Reason == routing.ReasonHintRejected {
		return s.localError(errWriteToReplica, true)
	}
	if len(d.Sets) == 1 && d.Sets[0].Name == "pgsluice.route" && d.Statements == 1 {
		return s.setRoute(d.Sets[0])
	}
	if d.Pin != routing.PinNone {
		s.pin(d.Pin)
	}
	start := nanotime()
	if s.srv.cache != nil {
		if done, err := s.cacheQuery(&d, body); done || err != nil {
			return err
		}
	}
	b, err := s.lockAttached(&d)
	if err != nil {
		s.cacheDropCapture()
		return s.localError(err, true)
	}
	b.unnamedBy = nil // a simple query replaces the unnamed statement
	o := s.timedLocked(op{kind: opQuery, sets: effects(&d)}, &d, start)
	s.cacheNoteOpLocked(&o, &d)
	s.pushLocked(o)
	s.inflight++
	s.mu.Unlock()
	s.out = wire.AppendHeader(s.out[:0], 'Q', len(body))
	s.out = append(s.out, body...)
	s.cycle++
	return s.send(b)
}

// pin binds the session to its server connection for good. In session
// mode every session keeps its server connection anyway.
func (s *session) pin(r routing.PinReason) {
	if r == routing.PinListen {
		s.mu.Lock()
		s.listening = true
		s.mu.Unlock()
	}
	if s.cfg.Pool.Mode == config.ModeSession {
		return
	}
	s.mu.Lock()
	first := s.pinned == routing.PinNone
	if first {
		s.pinned = r
	}
	s.mu.Unlock()
	if first {
		s.srv.m.pins.WithLabelValues(r.String()).Inc()
	}
}

// unnamedDecision routes on an unnamed Parse (it is executed next); a named
// Parse routes nothing.
func unnamedDecision(name string, d *routing.Decision) *routing.Decision {
	if name == "" {
		return d
	}
	return nil
}

// stmtDecision returns the routing decision of a client statement.
func (s *session) stmtDecision(name []byte) *routing.Decision {
	var info *stmtInfo
	if len(name) == 0 {
		info = s.unnamed
	} else {
		info = s.stmts[string(name)]
	}
	if info == nil {
		return nil
	}
	return &info.decision
}

func describeDecision(s *session, kind byte, name []byte) *routing.Decision {
	if kind != 'S' {
		return nil
	}
	return s.stmtDecision(name)
}
