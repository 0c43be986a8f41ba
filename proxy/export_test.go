package proxy

// PumpsStarted is how many pump goroutines s has started (inline.go), for
// the tests of package proxy_test.
func (s *Server) PumpsStarted() int64 { return s.pumps.Load() }

// PumpsRunning is how many of them have not ended yet.
func (s *Server) PumpsRunning() int64 { return s.pumpsRunning.Load() }

// StartDrainingOnly sets the draining flag as Shutdown does first, without
// closing listeners or waking idle sessions: the window a client's message
// can fall into before Shutdown's wake-up reaches its session.
func (s *Server) StartDrainingOnly() { s.draining.Store(true) }

// PeekAfter is how long a server connection must sit idle before acquire
// checks that the server has not closed it (pool.go).
const PeekAfter = peekAfter
