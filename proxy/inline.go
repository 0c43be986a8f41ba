package proxy

import (
	"time"

	"github.com/pgsluice/pgsluice/config"
)

// inlineWait bounds how long the session goroutine waits for its server
// without watching its client (see below). With raw I/O the deadline is
// set only when the answer is not in the socket yet (rawIO.boundWait):
// setting and clearing it costs two runtime timer updates, about 2 % of
// the proxy's CPU when done on every wait.
const inlineWait = 5 * time.Millisecond

// Reading answers on the session goroutine.
//
// Most transactions in transaction pooling are one batch: the client
// sends a Query, or Parse/Bind/Describe/Execute/Sync, and waits for the
// answer; the server connection is released at its ReadyForQuery. For
// such a batch a second goroutine reading the server (the pump) buys
// nothing and costs a goroutine start, a failed read before it parks and
// the scheduler's work-stealing on every transaction. So the session
// goroutine, once it has sent a batch that ends in a flush point
// (tailFlush) and holds no more client bytes, reads the answers itself
// with the pump's own code (pumpRound), until the connection is released,
// every answer is in, or COPY starts.
//
// A pump goroutine is started (ensurePumpLocked) whenever the session
// goroutine is about to do anything else while attached, because the
// server's answers must keep flowing while it does:
//   - wait for the client with a server attached (open transaction, pinned
//     or session-mode connection, COPY, a batch without a flush point):
//     asynchronous messages (NOTIFY, notices) must be forwarded, and
//     nothing else would release the connection;
//   - wait for a replica's release before a write (lockAttached);
//   - write to the server socket before the end of a batch (a Flush with
//     more bytes behind it, a message that does not fit the writer's
//     buffer): a server blocked on unread answers stops reading, which
//     would block the write.
// So at most one buffer of requests is ever written with no reader of the
// answers, and it is read at once.
//
// The session goroutine reads nothing from its client meanwhile, so it
// waits for the server for inlineWait at most: a statement that runs
// longer gets a pump goroutine, and the session goroutine watches its
// client again (a client that vanishes mid-statement is noticed, its
// server connection closed and a cache fill it leads released, as
// before). A pipelining client's next batch waits in the socket until the
// answers of the one before are in, or inlineWait has passed.

// pumpInline reads the attached server's answers on the session goroutine
// when it may (see above), then makes sure a pump goroutine runs if the
// session is still attached. Called by the session goroutine at the top of
// its loop, with no client bytes buffered and nothing unflushed.
func (s *session) pumpInline() {
	s.mu.Lock()
	b := s.b
	if b == nil {
		s.mu.Unlock()
		return
	}
	// Answers are due (ops); each later round ends with the same test.
	ok := s.pumpB != b && s.tailFlush && s.ops.len() > 0 && s.inflight == 0 && s.fatal == nil &&
		s.state != stateClosed && s.cfg.Pool.Mode == config.ModeTransaction
	s.mu.Unlock()
	for stop := !ok; !stop; {
		b, stop = s.pumpRound(b, true)
	}
	s.mu.Lock()
	s.ensurePumpLocked()
	s.mu.Unlock()
}

// ensurePumpLocked starts a pump goroutine for the attached server
// connection unless one runs (mu held).
func (s *session) ensurePumpLocked() {
	b := s.b
	if b == nil || s.pumpB == b || s.fatal != nil || s.state == stateClosed {
		return
	}
	done := make(chan struct{})
	s.pumpDone = done
	s.pumpB = b
	s.srv.pumps.Add(1)
	s.srv.pumpsRunning.Add(1)
	go s.pump(b, done)
}

// endsInFlushPoint reports whether the last message of msg (whole frames)
// makes the server answer everything before it.
func endsInFlushPoint(msg []byte) bool {
	var last byte
	for len(msg) >= 5 {
		last = msg[0]
		n := int(uint32(msg[1])<<24|uint32(msg[2])<<16|uint32(msg[3])<<8|uint32(msg[4])) + 1
		if n < 5 || n > len(msg) {
			return false
		}
		msg = msg[n:]
	}
	switch last {
	case 'S', 'Q', 'H', 'F', 'c', 'f':
		return true
	}
	return false
}
