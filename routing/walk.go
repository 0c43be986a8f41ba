package routing

// This file walks a pg_query tree and records what a query touches.

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// replicaSafeVolatile are volatile functions that only report the state of
// the server they run on and are meant to be asked of a replica.
var replicaSafeVolatile = map[string]bool{
	"pg_is_in_recovery":             true,
	"pg_last_wal_receive_lsn":       true,
	"pg_last_wal_replay_lsn":        true,
	"pg_last_xact_replay_timestamp": true,
	"pg_is_wal_replay_paused":       true,
	"pg_get_wal_replay_pause_state": true,
}

// sessionConstant reports whether a SQL value function has one value for
// everything a cached result's key holds: the database (CURRENT_CATALOG),
// the login user and role (CURRENT_USER, USER, CURRENT_ROLE, SESSION_USER:
// SET ROLE and SET SESSION AUTHORIZATION are session settings, which the
// key hashes, and pin the session in transaction pooling, which bypasses
// the cache) and search_path (CURRENT_SCHEMA). The date and time ones
// (CURRENT_DATE, CURRENT_TIMESTAMP, LOCALTIME...) change with the clock.
func sessionConstant(op pg.SQLValueFunctionOp) bool {
	switch op {
	case pg.SQLValueFunctionOp_SVFOP_CURRENT_ROLE, pg.SQLValueFunctionOp_SVFOP_CURRENT_USER, pg.SQLValueFunctionOp_SVFOP_USER,
		pg.SQLValueFunctionOp_SVFOP_SESSION_USER, pg.SQLValueFunctionOp_SVFOP_CURRENT_CATALOG, pg.SQLValueFunctionOp_SVFOP_CURRENT_SCHEMA:
		return true
	}
	return false
}

// primaryOnly are functions pg_proc does not mark volatile that still cannot
// run on a replica: they assign a transaction id or read the WAL insert
// position.
var primaryOnly = map[string]bool{
	"txid_current":              true,
	"pg_current_xact_id":        true,
	"pg_current_wal_lsn":        true,
	"pg_current_wal_insert_lsn": true,
	"pg_current_wal_flush_lsn":  true,
}

// sessionAdvisoryLocks are the advisory lock functions whose lock outlives
// the transaction.
var sessionAdvisoryLocks = map[string]bool{
	"pg_advisory_lock":            true,
	"pg_advisory_lock_shared":     true,
	"pg_try_advisory_lock":        true,
	"pg_try_advisory_lock_shared": true,
}

// walker collects what a query tree touches.
type walker struct {
	cat          Catalog
	reads        []*pg.RangeVar
	writeTargets map[*pg.RangeVar]bool
	ctes         map[string]bool
	dml          bool // INSERT/UPDATE/DELETE/MERGE somewhere (CTE)
	into         bool // SELECT INTO
	locking      bool // FOR UPDATE/SHARE ...
	volatile     bool // volatile or unknown function
	unstable     bool // stable functions, clock SQL value functions, TABLESAMPLE: not cacheable
	sysCatalog   bool
	pin          PinReason
	sets         []SessionSet
}

func newWalker(cat Catalog) *walker {
	return &walker{cat: cat, writeTargets: map[*pg.RangeVar]bool{}, ctes: map[string]bool{}}
}

func (w *walker) setPin(p PinReason) {
	if w.pin == PinNone {
		w.pin = p
	}
}

func (w *walker) markWrite(rv *pg.RangeVar) {
	if rv != nil {
		w.writeTargets[rv] = true
	}
}

// walkNode visits every message below n (pre-order).
func (w *walker) walkNode(n *pg.Node) {
	if n != nil {
		w.walk(n.ProtoReflect())
	}
}

func (w *walker) walk(m protoreflect.Message) {
	switch x := m.Interface().(type) {
	case *pg.RangeVar:
		w.reads = append(w.reads, x)
		if x.Schemaname == "pg_catalog" || x.Schemaname == "information_schema" || strings.HasPrefix(x.Relname, "pg_") {
			w.sysCatalog = true
		}
	case *pg.FuncCall:
		w.funcCall(x)
	case *pg.LockingClause:
		w.locking = true
		return // its RangeVars name aliases (FOR UPDATE OF o), not tables
	case *pg.InsertStmt:
		w.dml = true
		w.markWrite(x.Relation)
	case *pg.UpdateStmt:
		w.dml = true
		w.markWrite(x.Relation)
	case *pg.DeleteStmt:
		w.dml = true
		w.markWrite(x.Relation)
	case *pg.MergeStmt:
		w.dml = true
		w.markWrite(x.Relation)
	case *pg.IntoClause:
		w.into = true
		w.markWrite(x.Rel)
		if x.Rel != nil && x.Rel.Relpersistence == "t" && x.OnCommit != pg.OnCommitAction_ONCOMMIT_DROP {
			w.setPin(PinTempTable)
		}
	case *pg.CommonTableExpr:
		w.ctes[x.Ctename] = true
	case *pg.SQLValueFunction:
		if !sessionConstant(x.Op) {
			w.unstable = true
		}
	case *pg.RangeTableSample:
		w.unstable = true
	case *pg.A_Const:
		if sv := x.GetSval(); sv != nil && timeWord(sv.Sval) {
			w.unstable = true // 'now'::timestamptz is evaluated at parse time
		}
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				w.walk(l.Get(i).Message())
			}
		} else if !fd.IsMap() {
			w.walk(v.Message())
		}
		return true
	})
}

// funcName returns the qualified and unqualified name of a function call.
func funcName(names []*pg.Node) (qualified, last string) {
	parts := make([]string, 0, len(names))
	for _, n := range names {
		if s := n.GetString_(); s != nil {
			parts = append(parts, s.Sval)
		}
	}
	if len(parts) == 0 {
		return "", ""
	}
	return strings.Join(parts, "."), parts[len(parts)-1]
}

func (w *walker) volatility(qualified, last string) (byte, bool) {
	if qualified != last {
		if v, ok := w.cat.Volatility(qualified); ok {
			return v, true
		}
	}
	return w.cat.Volatility(last)
}

func (w *walker) funcCall(f *pg.FuncCall) {
	qualified, last := funcName(f.Funcname)
	if sessionAdvisoryLocks[last] {
		w.setPin(PinAdvisoryLock)
	}
	if last == "set_config" {
		w.setConfig(f)
	}
	if replicaSafeVolatile[last] {
		w.unstable = true
		return
	}
	v, ok := w.volatility(qualified, last)
	if primaryOnly[last] {
		v = 'v'
	}
	switch {
	case !ok || v == 'v':
		w.volatile = true
	case v == 's':
		w.unstable = true
	}
}

// setConfig turns set_config(name, value, false) with constant arguments
// into a SessionSet; other session-level forms pin the client.
func (w *walker) setConfig(f *pg.FuncCall) {
	if len(f.Args) != 3 {
		w.setPin(PinOther)
		return
	}
	name, ok1 := constString(f.Args[0])
	value, ok2 := constString(f.Args[1])
	local, ok3 := constBool(f.Args[2])
	if ok3 && local {
		return // transaction-scoped
	}
	if !ok1 || !ok2 || !ok3 || !validGUCName(name) {
		w.setPin(PinOther)
		return
	}
	name = strings.ToLower(name)
	w.sets = append(w.sets, SessionSet{Kind: SetValue, Name: name, SQL: "SET " + name + " TO " + quoteLiteral(value)})
}

func validGUCName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '.' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return s[len(s)-1] != '.' && !strings.Contains(s, "..")
}

// quoteLiteral renders s as an SQL string constant (standard conforming).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

func constString(n *pg.Node) (string, bool) {
	if tc := n.GetTypeCast(); tc != nil {
		n = tc.Arg
	}
	c := n.GetAConst()
	if c == nil || c.Isnull {
		return "", false
	}
	if s := c.GetSval(); s != nil {
		return s.Sval, true
	}
	return "", false
}

func constBool(n *pg.Node) (bool, bool) {
	if tc := n.GetTypeCast(); tc != nil {
		n = tc.Arg
	}
	c := n.GetAConst()
	if c == nil || c.Isnull {
		return false, false
	}
	if b := c.GetBoolval(); b != nil {
		return b.Boolval, true
	}
	if s := c.GetSval(); s != nil {
		return parseBoolString(s.Sval)
	}
	if i := c.GetIval(); i != nil {
		return i.Ival != 0, true
	}
	return false, false
}

// parseBoolString follows PostgreSQL's parse_bool.
func parseBoolString(s string) (bool, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	switch {
	case s == "":
		return false, false
	case strings.HasPrefix("true", s), strings.HasPrefix("yes", s), s == "on", s == "1":
		return true, true
	case strings.HasPrefix("false", s), strings.HasPrefix("no", s), s == "off", s == "of" || s == "0":
		return false, true
	}
	return false, false
}

func rangeVarName(rv *pg.RangeVar) string {
	name := rv.Relname
	if rv.Schemaname != "" {
		name = rv.Schemaname + "." + name
	}
	if rv.Catalogname != "" {
		name = rv.Catalogname + "." + name
	}
	return name
}

// tables splits the collected range variables into read and written tables,
// leaving out references to CTEs.
func (w *walker) tables() (reads, written []string) {
	for _, rv := range w.reads {
		name := rangeVarName(rv)
		if w.writeTargets[rv] {
			written = append(written, name)
			continue
		}
		if rv.Schemaname == "" && rv.Catalogname == "" && w.ctes[rv.Relname] {
			continue
		}
		reads = append(reads, name)
	}
	return reads, written
}

// query classifies a statement whose tree is walked as a whole (SELECT,
// DML, COPY's query, ...).
func (w *walker) query(command string, n *pg.Node) stmtResult {
	w.walkNode(n)
	r := stmtResult{command: command, pin: w.pin, sets: w.sets, target: TargetPrimary}
	r.reads, r.written = w.tables()
	switch {
	case w.dml || len(r.written) > 0:
		r.reason, r.writes = ReasonWrite, true
	case w.into:
		r.reason, r.writes = ReasonWrite, true
	case w.locking:
		r.reason, r.writes = ReasonLock, true
	case w.volatile:
		r.reason = ReasonVolatile
	default:
		r.target, r.reason = TargetReplica, ReasonRead
		r.cacheable = !w.unstable && !w.sysCatalog && len(r.sets) == 0 && r.pin == PinNone
	}
	return r
}
