package logrepl

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
)

// Config says where to stream changes from. It is passed by value; Run
// never modifies the caller's copy.
type Config struct {
	Host     string
	Port     int // 0 means 5432
	User     string
	Password string
	Database string
	// Slot is the temporary replication slot's name. Empty means a fresh
	// "pgsluice_<random>" name for every connection. A fixed name is
	// reused on reconnect, which fails (and is retried) while the previous
	// connection's walsender still holds it.
	Slot string
	// Publication is the publication streamed, created FOR ALL TABLES when
	// missing. Empty means "pgsluice_cache".
	Publication string
	// StatusInterval is the period of standby status updates. 0 means 10s.
	StatusInterval time.Duration
	// Logger receives connection events and errors. Nil discards them.
	Logger *slog.Logger
	// Registerer, when set, receives the pgsluice_logrepl_* metrics,
	// labelled with the database. Optional.
	Registerer prometheus.Registerer
}

// Handler receives what the stream reports. The tables slice passed to
// Changed is new for each call and belongs to the handler. Its methods are
// called from Run's goroutine, one at a time, and should return quickly: while a call
// runs nothing is read from the server, and a connection silent for longer
// than the server's wal_sender_timeout (default 60s) is closed by it.
type Handler interface {
	// Changed is called once per committed transaction with the relations it touched, as "schema.name".
	Changed(database string, tables []string)
	// Reset is called when changes may have been missed (first connect, reconnect): drop everything for the database.
	Reset(database string)
}

// Defaults and limits of Run.
const (
	DefaultPublication    = "pgsluice_cache"
	DefaultStatusInterval = 10 * time.Second
	defaultPort           = 5432
	// slotTimeout bounds CREATE_REPLICATION_SLOT, which waits until every
	// transaction running when it started has ended.
	slotTimeout  = 10 * time.Minute
	closeTimeout = 5 * time.Second
	writeTimeout = 10 * time.Second
	minBackoff   = 100 * time.Millisecond
	maxBackoff   = 5 * time.Second
)

// setupTimeout bounds connecting, the publication check and
// START_REPLICATION (a variable so tests can shorten it).
var setupTimeout = 30 * time.Second

// identRE is what Slot and Publication may look like: PostgreSQL's rule for
// slot names, so neither ever needs quoting.
var identRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// withDefaults validates cfg and fills in defaults. It reports every
// problem at once.
func (cfg Config) withDefaults() (Config, error) {
	var errs []error
	if cfg.Host == "" {
		errs = append(errs, errors.New("logrepl: Host is required"))
	}
	if cfg.Port == 0 {
		cfg.Port = defaultPort
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		errs = append(errs, fmt.Errorf("logrepl: Port %d out of range", cfg.Port))
	}
	if cfg.User == "" {
		errs = append(errs, errors.New("logrepl: User is required"))
	}
	if cfg.Database == "" {
		errs = append(errs, errors.New("logrepl: Database is required"))
	}
	if cfg.Slot != "" && !identRE.MatchString(cfg.Slot) {
		errs = append(errs, fmt.Errorf("logrepl: Slot %q: use 1-63 characters among a-z, 0-9 and _", cfg.Slot))
	}
	if cfg.Publication == "" {
		cfg.Publication = DefaultPublication
	}
	if !identRE.MatchString(cfg.Publication) {
		errs = append(errs, fmt.Errorf("logrepl: Publication %q: use 1-63 characters among a-z, 0-9 and _", cfg.Publication))
	}
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = DefaultStatusInterval
	}
	if cfg.StatusInterval < 0 {
		errs = append(errs, fmt.Errorf("logrepl: StatusInterval %v is negative", cfg.StatusInterval))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, errors.Join(errs...)
}

// Run streams committed changes of cfg.Database until ctx ends, calling h
// for each committed transaction, and h.Reset each time a new slot starts
// (its changes are reported from then on; anything before may have been
// missed). When the connection fails or cannot be set up, the error is
// logged and Run connects again with exponential backoff (100ms up to 5s,
// jittered, back to 100ms after a connection that streamed).
//
// Run returns nil when ctx ends, and an error without connecting only when
// cfg is invalid, h is nil or the metrics cannot be registered. The
// temporary slot is dropped by PostgreSQL when Run's connection ends.
func Run(ctx context.Context, cfg Config, h Handler) error {
	cfg, err := cfg.withDefaults()
	if h == nil {
		err = errors.Join(err, errors.New("logrepl: nil Handler"))
	}
	if err != nil {
		return err
	}
	m, err := newMetrics(cfg.Registerer, cfg.Database)
	if err != nil {
		return err
	}
	log := cfg.Logger.With("database", cfg.Database, "publication", cfg.Publication)
	backoff := minBackoff
	for ctx.Err() == nil {
		slot := cfg.Slot
		if slot == "" {
			slot = randomSlotName()
		}
		s := &session{cfg: cfg, h: h, slot: slot, log: log.With("slot", slot), m: m}
		err := s.run(ctx)
		m.connected.Set(0)
		if ctx.Err() != nil {
			break
		}
		m.failures.Inc()
		if s.streamed {
			backoff = minBackoff
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		log.Warn("logical replication stream failed; reconnecting", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		backoff = min(2*backoff, maxBackoff)
	}
	log.Info("logical replication stream stopped")
	return nil
}

func randomSlotName() string {
	var b [8]byte
	_, _ = cryptorand.Read(b[:])
	return "pgsluice_" + hex.EncodeToString(b[:])
}

// session is one connection: setup, then streaming until an error.
type session struct {
	cfg      Config
	h        Handler
	slot     string
	log      *slog.Logger
	m        *metrics
	conn     *pgconn.PgConn
	streamed bool // START_REPLICATION succeeded
	// catalog is a regular connection for the catalog lookups the
	// replication connection cannot do while it streams; reopened when it
	// was closed.
	catalog *pgconn.PgConn

	tracker  *txnTracker
	written  lsn // highest WAL position received
	flushed  lsn // position up to which every commit was reported
	lastRecv time.Time
	status   []byte
}

func (s *session) run(ctx context.Context) error {
	// Each setup step gets its own deadline: slot creation may legitimately
	// take minutes and must not eat into the next step's time.
	setupCtx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	conn, err := s.connect(setupCtx, true)
	if err != nil {
		return err
	}
	s.conn = conn
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		_ = conn.Close(cctx)
		if s.catalog != nil {
			_ = s.catalog.Close(cctx)
		}
	}()
	if err := s.ensurePublication(setupCtx); err != nil {
		return err
	}
	// Open the catalog connection now, so the first change does not pay
	// for it.
	if s.catalog, err = s.connect(setupCtx, false); err != nil {
		return fmt.Errorf("logrepl: catalog connection: %w", err)
	}
	slotCtx, cancelSlot := context.WithTimeout(ctx, slotTimeout)
	defer cancelSlot()
	if err := s.createSlot(slotCtx); err != nil {
		return err
	}
	// The slot's snapshot point is fixed: every commit after it will be
	// streamed, anything before it the handler must forget.
	s.h.Reset(s.cfg.Database)
	startCtx, cancelStart := context.WithTimeout(ctx, setupTimeout)
	defer cancelStart()
	if err := s.startReplication(startCtx); err != nil {
		return err
	}
	s.streamed = true
	s.m.streams.Inc()
	s.m.connected.Set(1)
	s.log.Info("logical replication streaming")
	return s.stream(ctx)
}

// connect opens a connection to cfg.Database: a logical replication one
// (replication=database) when replication is set, a regular one otherwise.
func (s *session) connect(ctx context.Context, replication bool) (*pgconn.PgConn, error) {
	dsn := fmt.Sprintf("host=%s port=%d dbname=%s user=%s sslmode=prefer connect_timeout=10",
		dsnQuote(s.cfg.Host), s.cfg.Port, dsnQuote(s.cfg.Database), dsnQuote(s.cfg.User))
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("logrepl: connection settings: %w", err)
	}
	pc.Password = s.cfg.Password
	if replication {
		pc.RuntimeParams["replication"] = "database"
	}
	pc.RuntimeParams["application_name"] = "pgsluice_logrepl"
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		var pgErr *pgconn.PgError
		if replication && errors.As(err, &pgErr) && pgErr.Code == "42501" {
			return nil, fmt.Errorf("logrepl: connect to %s:%d as %q: the role needs the REPLICATION attribute (ALTER ROLE %s REPLICATION) or superuser: %w",
				s.cfg.Host, s.cfg.Port, s.cfg.User, s.cfg.User, err)
		}
		if replication && errors.As(err, &pgErr) && pgErr.Code == "28000" {
			return nil, fmt.Errorf("logrepl: connect to %s:%d as %q: pg_hba.conf must allow a logical replication connection, which matches lines for database %q (not \"replication\", which is for physical replication only): %w",
				s.cfg.Host, s.cfg.Port, s.cfg.User, s.cfg.Database, err)
		}
		return nil, fmt.Errorf("logrepl: connect to %s:%d: %w", s.cfg.Host, s.cfg.Port, err)
	}
	return conn, nil
}

// dsnQuote quotes a keyword/value connection string value.
func dsnQuote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// exec runs one simple-protocol command and returns its rows as text.
func (s *session) exec(ctx context.Context, sql string) ([][][]byte, error) {
	results, err := s.conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	var rows [][][]byte
	for _, r := range results {
		rows = append(rows, r.Rows...)
	}
	return rows, nil
}

// ensurePublication checks that the publication exists and covers every
// change of every table, creating it FOR ALL TABLES when missing.
func (s *session) ensurePublication(ctx context.Context) error {
	pub := s.cfg.Publication
	rows, err := s.exec(ctx, "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_catalog.pg_publication WHERE pubname = '"+pub+"'")
	if err != nil {
		return fmt.Errorf("logrepl: look up publication %q: %w", pub, err)
	}
	if len(rows) == 1 {
		var missing []string
		for i, what := range []string{"all tables", "insert", "update", "delete", "truncate"} {
			if string(rows[0][i]) != "t" {
				missing = append(missing, what)
			}
		}
		if len(missing) > 0 {
			s.log.Warn("publication does not publish everything: writes that bypass the proxy may leave stale cache entries until their TTL",
				"missing", strings.Join(missing, ", "))
		}
		return nil
	}
	s.warnNoReplicaIdentity(ctx)
	_, err = s.exec(ctx, "CREATE PUBLICATION "+pub+" FOR ALL TABLES")
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		s.log.Info("created publication FOR ALL TABLES")
		return nil
	case errors.As(err, &pgErr) && pgErr.Code == "42710": // created concurrently by another instance
		return nil
	case errors.As(err, &pgErr) && pgErr.Code == "42501":
		return fmt.Errorf("logrepl: publication %q does not exist and role %q may not create it (FOR ALL TABLES needs a superuser); have a superuser run CREATE PUBLICATION %s FOR ALL TABLES in database %q: %w",
			pub, s.cfg.User, pub, s.cfg.Database, err)
	default:
		return fmt.Errorf("logrepl: create publication %q: %w", pub, err)
	}
}

// warnNoReplicaIdentity logs the tables on which UPDATE and DELETE will
// fail once a publication publishing updates and deletes covers them:
// PostgreSQL refuses those commands (SQLSTATE 55000) on a published table
// without a replica identity.
func (s *session) warnNoReplicaIdentity(ctx context.Context) {
	rows, err := s.exec(ctx, `SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
  AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
ORDER BY 1 LIMIT 21`)
	if err != nil || len(rows) == 0 {
		return
	}
	names := make([]string, 0, len(rows))
	for _, r := range rows {
		names = append(names, string(r[0]))
	}
	if len(names) > 20 {
		names = append(names[:20], "...")
	}
	s.log.Warn("creating the publication FOR ALL TABLES: UPDATE and DELETE on these tables will fail (SQLSTATE 55000) until they get a primary key or REPLICA IDENTITY FULL",
		"tables", strings.Join(names, ", "))
}

func (s *session) createSlot(ctx context.Context) error {
	// PostgreSQL 15 has the parenthesized option syntax; older servers only
	// the legacy keyword, which newer ones still accept.
	opt := "NOEXPORT_SNAPSHOT"
	if serverMajor(s.conn.ParameterStatus("server_version")) >= 15 {
		opt = "(SNAPSHOT 'nothing')"
	}
	slow := time.AfterFunc(5*time.Second, func() {
		s.log.Warn("creating the replication slot waits for the transactions running on the primary to end")
	})
	rows, err := s.exec(ctx, "CREATE_REPLICATION_SLOT "+s.slot+" TEMPORARY LOGICAL pgoutput "+opt)
	slow.Stop()
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55000" {
			return fmt.Errorf("logrepl: create slot %q: the server needs wal_level = logical: %w", s.slot, err)
		}
		return fmt.Errorf("logrepl: create slot %q: %w", s.slot, err)
	}
	if len(rows) == 1 && len(rows[0]) >= 2 {
		if lsn, err := parseLSN(string(rows[0][1])); err == nil {
			s.flushed, s.written = lsn, lsn
		}
	}
	s.log.Debug("created temporary slot", "consistent_point", s.flushed)
	return nil
}

// serverMajor returns the major version in a server_version string
// ("15.18 (Debian ...)" -> 15), 0 if unknown.
func serverMajor(v string) int {
	end := 0
	for end < len(v) && v[end] >= '0' && v[end] <= '9' {
		end++
	}
	n, _ := strconv.Atoi(v[:end])
	return n
}

func (s *session) startReplication(ctx context.Context) error {
	sql := "START_REPLICATION SLOT " + s.slot + " LOGICAL 0/0 (proto_version '1', publication_names '" + s.cfg.Publication + "')"
	s.conn.Frontend().Send(&pgproto3.Query{String: sql})
	if err := s.flush(); err != nil {
		return fmt.Errorf("logrepl: send START_REPLICATION: %w", err)
	}
	for {
		msg, err := s.conn.ReceiveMessage(ctx)
		if err != nil {
			return fmt.Errorf("logrepl: START_REPLICATION: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return nil
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("logrepl: START_REPLICATION: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return fmt.Errorf("logrepl: START_REPLICATION: unexpected %T", msg)
		}
	}
}

// flush writes the frontend's buffered messages with a write deadline.
func (s *session) flush() error {
	nc := s.conn.Conn()
	_ = nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	err := s.conn.Frontend().Flush()
	_ = nc.SetWriteDeadline(time.Time{})
	return err
}

// stream reads the CopyBoth stream until an error or the end of ctx,
// reporting commits and answering the server.
func (s *session) stream(ctx context.Context) error {
	s.tracker = newTxnTracker()
	s.lastRecv = time.Now()
	nextStatus := time.Now()
	// The server sends nothing while idle if we keep sending status
	// updates; a status update asks it for a keepalive when it has been
	// silent, and silence despite that means the link is dead.
	silence := 3*s.cfg.StatusInterval + 5*time.Second
	for {
		if now := time.Now(); !now.Before(nextStatus) {
			if quiet := now.Sub(s.lastRecv); quiet > silence {
				return fmt.Errorf("logrepl: no message from the server for %v", quiet.Round(time.Second))
			}
			if err := s.sendStatus(now.Sub(s.lastRecv) >= s.cfg.StatusInterval); err != nil {
				return err
			}
			nextStatus = now.Add(s.cfg.StatusInterval)
		}
		rctx, cancel := context.WithDeadline(ctx, nextStatus)
		msg, err := s.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("logrepl: receive: %w", err)
		}
		s.lastRecv = time.Now()
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			reply, err := s.handleCopyData(ctx, m.Data)
			if err != nil {
				return err
			}
			if reply {
				if err := s.sendStatus(false); err != nil {
					return err
				}
				nextStatus = time.Now().Add(s.cfg.StatusInterval)
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("logrepl: server: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyDone:
			return errors.New("logrepl: server ended the replication stream")
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return fmt.Errorf("logrepl: unexpected %T during replication", msg)
		}
	}
}

// handleCopyData processes one CopyData payload and reports whether the
// server asked for an immediate status update.
func (s *session) handleCopyData(ctx context.Context, b []byte) (reply bool, err error) {
	wm, err := decodeWALMessage(b)
	if err != nil {
		return false, err
	}
	defer func() {
		if wm.WALEnd == 0 { // XLogData of a Relation message carries no positions
			return
		}
		if wm.WALEnd > s.flushed {
			s.m.lagBytes.Set(float64(wm.WALEnd - s.flushed))
		} else {
			s.m.lagBytes.Set(0)
		}
	}()
	if wm.Keepalive {
		s.written = max(s.written, wm.WALEnd)
		if !s.tracker.inTxn {
			// Everything before the server's position has been sent and
			// reported; confirming it lets the server recycle WAL.
			s.flushed = max(s.flushed, wm.WALEnd)
		}
		return wm.ReplyRequested, nil
	}
	s.written = max(s.written, wm.WALStart+lsn(len(wm.Data)))
	pm, err := decodePgoutput(wm.Data)
	if err != nil {
		return false, err
	}
	res, err := s.tracker.apply(pm)
	if err != nil {
		return false, err
	}
	if pm.Relation != nil {
		ancestors, err := s.ancestors(ctx, pm.Relation.ID)
		if err != nil {
			return false, err
		}
		s.tracker.addAncestors(pm.Relation.ID, ancestors)
	}
	if res != nil {
		if len(res.Tables) > 0 {
			s.h.Changed(s.cfg.Database, res.Tables)
			s.m.transactions.Inc()
		}
		s.flushed = max(s.flushed, res.EndLSN)
		s.written = max(s.written, res.EndLSN)
	}
	return false, nil
}

// ancestors returns the "schema.name" of every table relation id inherits
// from, partitioned parents included, in no particular order. pgoutput names the
// partition a row lives in, while queries name the table they read, usually
// the partitioned parent: both must be invalidated.
func (s *session) ancestors(ctx context.Context, id uint32) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	if s.catalog != nil && s.catalog.IsClosed() {
		s.catalog = nil // e.g. ended by idle_session_timeout: open another
	}
	if s.catalog == nil {
		conn, err := s.connect(ctx, false)
		if err != nil {
			return nil, fmt.Errorf("logrepl: catalog connection: %w", err)
		}
		s.catalog = conn
	}
	results, err := s.catalog.Exec(ctx, `WITH RECURSIVE up(oid, depth) AS (
    SELECT inhparent, 1 FROM pg_catalog.pg_inherits WHERE inhrelid = `+strconv.FormatUint(uint64(id), 10)+`
    UNION ALL
    SELECT i.inhparent, up.depth + 1 FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.oid WHERE up.depth < 100)
SELECT DISTINCT ON (c.oid) n.nspname, c.relname, up.depth FROM up
JOIN pg_catalog.pg_class c ON c.oid = up.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
ORDER BY c.oid, up.depth`).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("logrepl: look up parents of relation %d: %w", id, err)
	}
	var names []string
	for _, r := range results {
		for _, row := range r.Rows {
			names = append(names, qualifiedName(string(row[0]), string(row[1])))
		}
	}
	return names, nil
}

func (s *session) sendStatus(replyRequested bool) error {
	s.status = appendStandbyStatus(s.status[:0], s.written, s.flushed, time.Now(), replyRequested)
	s.conn.Frontend().Send(&pgproto3.CopyData{Data: s.status})
	if err := s.flush(); err != nil {
		return fmt.Errorf("logrepl: send status update: %w", err)
	}
	return nil
}
