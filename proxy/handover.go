package proxy

import (
	"context"
	"errors"
	"net"
	"time"
)

// Zero-downtime restart ("handover"):
//
//  1. The running process (old) listens with SO_REUSEPORT (Listen).
//  2. A new process starts on the same addresses. Its Listen binds next to
//     the old socket and attaches a classic BPF program to the port's
//     reuseport group that sends every new connection to the group's
//     second socket, the newest one. From then on the kernel queues no new
//     connection on the old socket.
//  3. The operator (or systemd, or a script) sends the old process SIGUSR2:
//     Handover accepts what is still queued on its sockets until the queue
//     is empty and no connection arrived for handoverQuiet, then closes
//     them (closing a SO_REUSEPORT listener resets connections still in
//     its queue; with the steering there are none). It keeps serving its
//     connected clients until they disconnect, bounded by ctx
//     (shutdown_timeout), and then shuts down as on SIGTERM.
//
// Once the old socket is closed the new one is alone in the group at index
// 0; the program's answer (1) is then out of range and the kernel falls
// back to its hash, i.e. to the only socket. The next handover works the
// same way.

// handoverQuiet is how long an old listener must see no new connection,
// with an empty accept queue, before it is closed.
const handoverQuiet = 100 * time.Millisecond

// Listen opens a TCP listener on addr with SO_REUSEPORT and steers the
// address's new connections to it (see the handover notes above). Use it
// for the client and the admin listeners. On systems other than Linux it is
// a plain listener and a handover cannot share the port.
func Listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: reuseportControl, KeepAlive: listenKeepAlive}
	// Plain TCP: Go listens with MPTCP by default where the kernel has it,
	// and MPTCP sockets refuse the reuseport program (EOPNOTSUPP).
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	if err := steerToNewest(ln); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

type deadliner interface{ SetDeadline(time.Time) error }

// handoverAccepted runs in Serve after each accepted connection while a
// handover is under way: the quiet window starts again.
func (s *Server) handoverAccepted(ln net.Listener) {
	if d, ok := ln.(deadliner); ok {
		d.SetDeadline(time.Now().Add(handoverQuiet))
	}
}

// handoverAcceptFailed runs in Serve when Accept fails during a handover.
// It reports whether the listener is now closed (Serve returns). A timeout
// means no connection came for handoverQuiet: if the accept queue is empty
// the listener is closed; otherwise accepting goes on.
func (s *Server) handoverAcceptFailed(ln net.Listener, err error) bool {
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		s.handoverClosed(ln)
		return true
	}
	if q := acceptQueueLen(ln); q > 0 {
		s.handoverAccepted(ln)
		return false
	}
	ln.Close()
	s.handoverClosed(ln)
	return true
}

// handoverClosed counts a listener closed by the handover.
func (s *Server) handoverClosed(ln net.Listener) {
	if s.handoverLeft.Add(-1) == 0 {
		close(s.handoverLns)
	}
}

// Handover hands the listening addresses over to a newer process (see the
// notes at the top of this file): it stops accepting once its accept queues
// are drained, stops the admin endpoint, keeps serving connected clients
// until they disconnect or ctx ends, then shuts down (Shutdown, giving
// transactions still running 5 s). Call it once the new process is up.
func (s *Server) Handover(ctx context.Context) error {
	s.mu.Lock()
	if s.draining.Load() || s.handingOver.Swap(true) {
		s.mu.Unlock()
		return errors.New("pgsluice: already shutting down or handing over")
	}
	lns := append([]net.Listener(nil), s.lns...)
	admin := s.admin
	s.handoverLns = make(chan struct{})
	s.handoverLeft.Store(int32(len(lns)))
	s.mu.Unlock()
	if len(lns) == 0 {
		close(s.handoverLns)
	}
	s.log.Info("handover: draining the accept queues, then serving connected clients until they leave", "clients", s.clients.Load())
	for _, ln := range lns {
		s.handoverAccepted(ln) // Accept returns after a quiet window
	}
	select {
	case <-s.handoverLns:
	case <-ctx.Done():
	}
	if admin != nil {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		admin.Shutdown(actx)
		cancel()
	}
	s.log.Info("handover: listeners closed", "clients", s.clients.Load())
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		n := len(s.sessions)
		s.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-tick.C:
			continue
		case <-ctx.Done():
		}
		s.log.Warn("handover: ended with clients still connected (shutdown_timeout, or SIGTERM or SHUTDOWN during the handover); closing them as on SIGTERM", "clients", n)
		break
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.Shutdown(sctx)
}
