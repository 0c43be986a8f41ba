package proxy

import (
	"context"

	"github.com/pgsluice/pgsluice/proxy/logrepl"
)

// Invalidation of writes that bypass the proxy: with
// cache.invalidation.logical_replication on, the first client login to a
// database starts a logrepl stream of that database from the configured
// primary, logged in as the routing monitor's role (it needs the
// REPLICATION attribute). Each committed transaction invalidates the
// tables it touched; a (re)connect of the stream flushes the database,
// since changes may have been missed. The streams stop at Shutdown.

// logreplHandler turns stream reports into cache invalidations.
type logreplHandler struct{ s *Server }

func (h logreplHandler) Changed(database string, tables []string) {
	h.s.invalidateTables(database, tables)
}
func (h logreplHandler) Reset(database string) { h.s.flushCache(database) }

// startLogreplLocked starts the stream of database once (s.mu held).
func (s *Server) startLogreplLocked(database string) {
	cfg := s.cfgNow()
	if s.cache == nil || !cfg.Cache.Invalidation.LogicalReplication || s.logrepl[database] {
		return
	}
	if s.logrepl == nil {
		s.logrepl = map[string]bool{}
		s.logreplCtx, s.logreplStop = context.WithCancel(context.Background())
	}
	s.logrepl[database] = true
	user, password := monitorLogin(s.topo.conf())
	lc := logrepl.Config{
		Host: cfg.Primary.Host, Port: cfg.Primary.Port, User: user, Password: password, Database: database,
		Slot: cfg.Cache.Invalidation.Slot, Publication: cfg.Cache.Invalidation.Publication,
		Logger: s.log, Registerer: s.reg,
	}
	s.logreplWG.Add(1)
	go func() {
		defer s.logreplWG.Done()
		if err := logrepl.Run(s.logreplCtx, lc, logreplHandler{s}); err != nil {
			s.log.Error("logical replication invalidation not started", "database", database, "err", err)
		}
	}()
}

// stopLogrepl stops every stream and waits for them.
func (s *Server) stopLogrepl() {
	s.mu.Lock()
	stop := s.logreplStop
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	s.logreplWG.Wait()
}
