package routing

import (
	"regexp"
	"sort"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// This file turns a pg_query parse tree into a Decision. It runs only when a
// shape is seen for the first time (or for full-text keys), so clarity wins
// over speed here.

// maxNormalized bounds Decision.Normalized.
const maxNormalized = 1024

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

// stmtResult is the classification of one statement.
type stmtResult struct {
	target    Target
	reason    string
	writes    bool // modifies data or schema, or locks: never allowed on a replica
	neutral   bool // does not decide the target of a multi-statement string
	cacheable bool
	pin       PinReason
	txn       TxnEffect
	sets      []SessionSet
	command   string
	reads     []string
	written   []string
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
	unstable     bool // stable functions, SQLValueFunction, TABLESAMPLE: not cacheable
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
	case *pg.SQLValueFunction, *pg.RangeTableSample:
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

func ddl(command string, written ...*pg.RangeVar) stmtResult {
	r := stmtResult{target: TargetPrimary, reason: ReasonDDL, writes: true, command: command}
	for _, rv := range written {
		if rv != nil {
			r.written = append(r.written, rangeVarName(rv))
		}
	}
	return r
}

func primary(reason, command string) stmtResult {
	return stmtResult{target: TargetPrimary, reason: reason, command: command}
}

// stmtText returns the statement's own text: trimmed, without trailing ';'.
func stmtText(sql string, raw *pg.RawStmt) string {
	start := int(raw.StmtLocation)
	end := len(sql)
	if raw.StmtLen > 0 {
		end = start + int(raw.StmtLen)
	}
	if start < 0 || start > len(sql) || end > len(sql) || end < start {
		return strings.TrimSpace(sql)
	}
	s := skipLeadingComments(sql[start:end])
	s = s[:codeEnd(s)]
	for strings.HasSuffix(s, ";") {
		s = s[:codeEnd(strings.TrimSuffix(s, ";"))]
	}
	return s
}

// skipLeadingComments trims whitespace and leading comments (which may hold
// hints meant for the original statement only).
func skipLeadingComments(s string) string {
	for {
		s = strings.TrimSpace(s)
		switch {
		case strings.HasPrefix(s, "--"):
			i := strings.IndexAny(s, "\r\n")
			if i < 0 {
				return ""
			}
			s = s[i:]
		case strings.HasPrefix(s, "/*"):
			depth, i := 1, 2
			for i < len(s) && depth > 0 {
				switch {
				case strings.HasPrefix(s[i:], "/*"):
					depth, i = depth+1, i+2
				case strings.HasPrefix(s[i:], "*/"):
					depth, i = depth-1, i+2
				default:
					i++
				}
			}
			s = s[i:]
		default:
			return s
		}
	}
}

// codeEnd returns the end of the last character of s that is neither
// whitespace nor inside a comment, so that trailing comments can be cut (a
// trailing -- comment would swallow whatever the proxy appends).
func codeEnd(s string) int {
	end := 0
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case isSpace(c):
			i++
			continue
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			for i < len(s) && s[i] != '\n' && s[i] != '\r' {
				i++
			}
			continue
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			depth := 1
			i += 2
			for i < len(s) && depth > 0 {
				switch {
				case strings.HasPrefix(s[i:], "/*"):
					depth, i = depth+1, i+2
				case strings.HasPrefix(s[i:], "*/"):
					depth, i = depth-1, i+2
				default:
					i++
				}
			}
			continue
		case c == '\'':
			i, _, _ = scanQuoted(s, i+1, modePlain)
		case (c == 'e' || c == 'E') && i+1 < len(s) && s[i+1] == '\'' && (i == 0 || !isIdentCont(s[i-1])):
			i, _, _ = scanQuoted(s, i+2, modeEscape)
		case c == '"':
			i++
			for i < len(s) {
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						i += 2
						continue
					}
					i++
					break
				}
				i++
			}
		case c == '$' && (i == 0 || !isIdentCont(s[i-1])):
			if e, ok := dollarDelim(s, i); ok {
				if k := strings.Index(s[e:], s[i:e]); k >= 0 {
					i = e + k + (e - i)
				} else {
					i = len(s)
				}
			} else {
				i++
			}
		default:
			i++
		}
		end = i
	}
	return end
}

func rangeVarsOf(nodes []*pg.Node) []*pg.RangeVar {
	var out []*pg.RangeVar
	for _, n := range nodes {
		if rv := n.GetRangeVar(); rv != nil {
			out = append(out, rv)
		}
	}
	return out
}

// optionTrue reports whether a DefElem option list sets name to true.
func optionTrue(opts []*pg.Node, name string) bool {
	for _, o := range opts {
		d := o.GetDefElem()
		if d == nil || d.Defname != name {
			continue
		}
		if d.Arg == nil {
			return true
		}
		if s := d.Arg.GetString_(); s != nil {
			b, _ := parseBoolString(s.Sval)
			return b
		}
		b, _ := constBool(d.Arg)
		if bb := d.Arg.GetBoolean(); bb != nil {
			b = bb.Boolval
		}
		if i := d.Arg.GetInteger(); i != nil {
			b = i.Ival != 0
		}
		return b
	}
	return false
}

// classifyStmt classifies one raw statement.
func classifyStmt(cat Catalog, sql string, raw *pg.RawStmt) stmtResult {
	n := raw.Stmt
	if n == nil {
		return primary(ReasonEmpty, "empty")
	}
	w := newWalker(cat)
	switch s := n.Node.(type) {
	case *pg.Node_SelectStmt:
		return w.query("select", n)
	case *pg.Node_InsertStmt:
		return w.query("insert", n)
	case *pg.Node_UpdateStmt:
		return w.query("update", n)
	case *pg.Node_DeleteStmt:
		return w.query("delete", n)
	case *pg.Node_MergeStmt:
		return w.query("merge", n)
	case *pg.Node_CopyStmt:
		c := s.CopyStmt
		if c.IsFrom {
			w.markWrite(c.Relation)
			r := w.query("copy", n)
			r.target, r.reason, r.writes, r.cacheable = TargetPrimary, ReasonWrite, true, false
			return r
		}
		r := w.query("copy", n)
		r.cacheable = false
		if (c.Filename != "" || c.IsProgram) && r.target == TargetReplica {
			// COPY TO a server file or program acts on the server it runs on.
			r.target, r.reason = TargetPrimary, ReasonUtility
		}
		return r
	case *pg.Node_ExplainStmt:
		e := s.ExplainStmt
		inner := classifyStmt(cat, sql, &pg.RawStmt{Stmt: e.Query, StmtLocation: raw.StmtLocation, StmtLen: raw.StmtLen})
		inner.command = "explain"
		inner.cacheable = false
		if optionTrue(e.Options, "analyze") {
			if inner.target == TargetReplica {
				inner.reason = ReasonExplain
			}
			return inner
		}
		if inner.command == "explain" && e.Query.GetExecuteStmt() != nil {
			// the prepared statement exists only on the session's backend
			return primary(ReasonPrepared, "explain")
		}
		reads := append(append([]string(nil), inner.reads...), inner.written...)
		return stmtResult{target: TargetReplica, reason: ReasonExplain, command: "explain", reads: reads}
	case *pg.Node_TransactionStmt:
		return transaction(s.TransactionStmt)
	case *pg.Node_VariableSetStmt:
		return variableSet(s.VariableSetStmt, stmtText(sql, raw))
	case *pg.Node_ConstraintsSetStmt:
		return stmtResult{target: TargetPrimary, reason: ReasonSet, command: "set", neutral: true}
	case *pg.Node_VariableShowStmt:
		return stmtResult{target: TargetReplica, reason: ReasonShow, command: "show", neutral: true}
	case *pg.Node_CreateStmt:
		r := ddl("create", s.CreateStmt.Relation)
		if rv := s.CreateStmt.Relation; rv != nil && rv.Relpersistence == "t" && s.CreateStmt.Oncommit != pg.OnCommitAction_ONCOMMIT_DROP {
			r.pin = PinTempTable
		}
		return r
	case *pg.Node_CreateTableAsStmt:
		c := s.CreateTableAsStmt
		w.walkNode(c.Query)
		r := ddl("create")
		r.reads, _ = w.tables()
		if c.Into != nil && c.Into.Rel != nil {
			r.written = []string{rangeVarName(c.Into.Rel)}
			if c.Into.Rel.Relpersistence == "t" && c.Into.OnCommit != pg.OnCommitAction_ONCOMMIT_DROP {
				r.pin = PinTempTable
			}
		}
		if r.pin == PinNone {
			r.pin = w.pin
		}
		return r
	case *pg.Node_ViewStmt:
		r := ddl("create", s.ViewStmt.View)
		if s.ViewStmt.View != nil && s.ViewStmt.View.Relpersistence == "t" {
			r.pin = PinTempTable
		}
		return r
	case *pg.Node_CreateSeqStmt:
		r := ddl("create", s.CreateSeqStmt.Sequence)
		if s.CreateSeqStmt.Sequence != nil && s.CreateSeqStmt.Sequence.Relpersistence == "t" {
			r.pin = PinTempTable
		}
		return r
	case *pg.Node_AlterTableStmt:
		return ddl("alter", s.AlterTableStmt.Relation)
	case *pg.Node_RenameStmt:
		return ddl("alter", s.RenameStmt.Relation)
	case *pg.Node_IndexStmt:
		return ddl("create", s.IndexStmt.Relation)
	case *pg.Node_DropStmt:
		r := ddl("drop")
		switch s.DropStmt.RemoveType {
		case pg.ObjectType_OBJECT_TABLE, pg.ObjectType_OBJECT_VIEW, pg.ObjectType_OBJECT_MATVIEW,
			pg.ObjectType_OBJECT_FOREIGN_TABLE, pg.ObjectType_OBJECT_SEQUENCE:
			for _, o := range s.DropStmt.Objects {
				var parts []string
				for _, it := range o.GetList().GetItems() {
					if str := it.GetString_(); str != nil {
						parts = append(parts, str.Sval)
					}
				}
				if len(parts) > 0 {
					r.written = append(r.written, strings.Join(parts, "."))
				}
			}
		}
		return r
	case *pg.Node_TruncateStmt:
		r := ddl("truncate", rangeVarsOf(s.TruncateStmt.Relations)...)
		r.reason = ReasonWrite
		return r
	case *pg.Node_GrantStmt:
		if s.GrantStmt.IsGrant {
			return ddl("grant")
		}
		return ddl("revoke")
	case *pg.Node_GrantRoleStmt:
		if s.GrantRoleStmt.IsGrant {
			return ddl("grant")
		}
		return ddl("revoke")
	case *pg.Node_CommentStmt:
		return ddl("comment")
	case *pg.Node_RefreshMatViewStmt:
		r := ddl("refresh", s.RefreshMatViewStmt.Relation)
		r.reason = ReasonMaintenance
		return r
	case *pg.Node_VacuumStmt:
		cmd := "analyze"
		if s.VacuumStmt.IsVacuumcmd {
			cmd = "vacuum"
		}
		r := primary(ReasonMaintenance, cmd)
		r.writes = true
		return r
	case *pg.Node_ClusterStmt:
		r := primary(ReasonMaintenance, "cluster")
		r.writes = true
		return r
	case *pg.Node_ReindexStmt:
		r := primary(ReasonMaintenance, "reindex")
		r.writes = true
		return r
	case *pg.Node_CheckPointStmt:
		r := primary(ReasonMaintenance, "checkpoint")
		r.writes = true
		return r
	case *pg.Node_LockStmt:
		r := primary(ReasonLock, "lock")
		r.writes = true
		for _, rv := range rangeVarsOf(s.LockStmt.Relations) {
			r.reads = append(r.reads, rangeVarName(rv))
		}
		return r
	case *pg.Node_CallStmt:
		w.walkNode(n)
		r := primary(ReasonProcedure, "call")
		r.writes, r.pin, r.sets = true, w.pin, w.sets
		return r
	case *pg.Node_DoStmt:
		r := primary(ReasonProcedure, "do")
		r.writes = true
		return r
	case *pg.Node_NotifyStmt:
		r := primary(ReasonNotify, "notify")
		r.writes = true
		return r
	case *pg.Node_ListenStmt:
		r := primary(ReasonSession, "listen")
		r.pin = PinListen
		return r
	case *pg.Node_UnlistenStmt:
		return primary(ReasonSession, "unlisten")
	case *pg.Node_PrepareStmt:
		r := primary(ReasonPrepared, "prepare")
		r.pin = PinPrepare
		return r
	case *pg.Node_ExecuteStmt:
		return primary(ReasonPrepared, "execute")
	case *pg.Node_DeallocateStmt:
		return primary(ReasonPrepared, "deallocate")
	case *pg.Node_DeclareCursorStmt:
		d := s.DeclareCursorStmt
		r := w.query("declare", d.Query)
		r.target, r.cacheable, r.sets = TargetPrimary, false, nil
		if !r.writes {
			r.reason = ReasonCursor
		}
		const cursorOptHold = 0x0020
		if d.Options&cursorOptHold != 0 {
			r.pin = PinHoldCursor
		}
		return r
	case *pg.Node_FetchStmt:
		if s.FetchStmt.Ismove {
			return primary(ReasonCursor, "move")
		}
		return primary(ReasonCursor, "fetch")
	case *pg.Node_ClosePortalStmt:
		return primary(ReasonCursor, "close")
	case *pg.Node_DiscardStmt:
		r := primary(ReasonSession, "discard")
		if s.DiscardStmt.Target == pg.DiscardMode_DISCARD_ALL {
			r.sets = []SessionSet{{Kind: SetResetAll, SQL: "RESET ALL"}}
		}
		return r
	case *pg.Node_LoadStmt:
		r := primary(ReasonSession, "load")
		r.pin = PinOther
		return r
	}
	// Everything else: DDL by name, else a utility statement.
	name := string(n.ProtoReflect().WhichOneof(n.ProtoReflect().Descriptor().Oneofs().Get(0)).Message().Name())
	for _, p := range []struct{ prefix, cmd string }{
		{"Create", "create"}, {"Alter", "alter"}, {"Drop", "drop"}, {"Define", "create"}, {"Composite", "create"},
		{"Rule", "create"}, {"Rename", "alter"}, {"Reassign", "alter"}, {"SecLabel", "comment"}, {"ImportForeign", "create"},
	} {
		if strings.HasPrefix(name, p.prefix) {
			return ddl(p.cmd)
		}
	}
	r := primary(ReasonUtility, "other")
	r.writes = true
	return r
}

func transaction(t *pg.TransactionStmt) stmtResult {
	r := stmtResult{target: TargetPrimary, reason: ReasonTransaction}
	switch t.Kind {
	case pg.TransactionStmtKind_TRANS_STMT_BEGIN, pg.TransactionStmtKind_TRANS_STMT_START:
		r.command = "begin"
		r.txn = TxnBegin
		if txnReadOnly(t.Options) {
			r.target, r.txn = TargetReplica, TxnBeginReadOnly
			if txnSerializable(t.Options) {
				// a hot standby refuses SERIALIZABLE transactions
				r.target = TargetPrimary
			}
		}
	case pg.TransactionStmtKind_TRANS_STMT_COMMIT, pg.TransactionStmtKind_TRANS_STMT_ROLLBACK:
		r.command = "commit"
		if t.Kind == pg.TransactionStmtKind_TRANS_STMT_ROLLBACK {
			r.command = "rollback"
		}
		r.txn, r.neutral = TxnEnd, true
		if t.Chain {
			r.txn = TxnBegin // AND CHAIN: a new transaction starts at once
		}
	case pg.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
		r.command, r.neutral = "savepoint", true
	case pg.TransactionStmtKind_TRANS_STMT_RELEASE:
		r.command, r.neutral = "release", true
	case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
		r.command, r.neutral = "rollback", true
	case pg.TransactionStmtKind_TRANS_STMT_PREPARE:
		r.command, r.txn, r.writes = "prepare_transaction", TxnEnd, true
	case pg.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:
		r.command, r.txn, r.writes = "commit_prepared", TxnEnd, true
	case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
		r.command, r.txn, r.writes = "rollback_prepared", TxnEnd, true
	default:
		r.command = "other"
	}
	return r
}

// txnReadOnly reports whether transaction options say READ ONLY.
func txnReadOnly(opts []*pg.Node) bool {
	ro := false
	for _, o := range opts {
		d := o.GetDefElem()
		if d == nil || d.Defname != "transaction_read_only" {
			continue
		}
		b, ok := constBool(d.Arg)
		ro = ok && b
	}
	return ro
}

// txnSerializable reports whether transaction options ask for SERIALIZABLE.
func txnSerializable(opts []*pg.Node) bool {
	ser := false
	for _, o := range opts {
		d := o.GetDefElem()
		if d == nil || d.Defname != "transaction_isolation" {
			continue
		}
		s, _ := constString(d.Arg)
		ser = strings.EqualFold(s, "serializable")
	}
	return ser
}

// sessionCharacteristics maps SET SESSION CHARACTERISTICS options to GUCs.
var sessionCharacteristics = map[string]string{
	"transaction_isolation":  "default_transaction_isolation",
	"transaction_read_only":  "default_transaction_read_only",
	"transaction_deferrable": "default_transaction_deferrable",
}

func variableSet(v *pg.VariableSetStmt, text string) stmtResult {
	r := stmtResult{target: TargetPrimary, reason: ReasonSet, command: "set"}
	name := strings.ToLower(v.Name)
	switch v.Kind {
	case pg.VariableSetKind_VAR_RESET, pg.VariableSetKind_VAR_RESET_ALL:
		r.command = "reset"
	}
	if v.IsLocal {
		r.neutral = true
		return r
	}
	switch v.Kind {
	case pg.VariableSetKind_VAR_SET_MULTI:
		switch name {
		case "transaction":
			r.neutral = true
			if txnReadOnly(v.Args) {
				r.txn = TxnSetReadOnly
			}
		case "session characteristics":
			for _, a := range v.Args {
				d := a.GetDefElem()
				guc, ok := sessionCharacteristics[d.GetDefname()]
				if !ok {
					continue
				}
				var val string
				if d.Defname == "transaction_isolation" {
					s, _ := constString(d.Arg)
					val = quoteLiteral(s)
				} else if b, _ := constBool(d.Arg); b {
					val = "on"
				} else {
					val = "off"
				}
				r.sets = append(r.sets, SessionSet{Kind: SetValue, Name: guc, SQL: "SET " + guc + " TO " + val})
			}
		default: // TRANSACTION SNAPSHOT and anything new: transaction-scoped
			r.neutral = true
		}
		return r
	case pg.VariableSetKind_VAR_RESET_ALL:
		r.sets = []SessionSet{{Kind: SetResetAll, SQL: text}}
		return r
	case pg.VariableSetKind_VAR_RESET, pg.VariableSetKind_VAR_SET_DEFAULT:
		r.sets = []SessionSet{{Kind: SetReset, Name: name, SQL: text}}
		return r
	}
	r.sets = []SessionSet{{Kind: SetValue, Name: name, SQL: text}}
	if name == "role" || name == "session_authorization" {
		r.pin = PinSessionAuth
	}
	return r
}

// analyze parses sql with pg_query and builds its Decision (without hints
// applied).
func analyze(cat Catalog, sql string) Decision {
	if strings.IndexByte(sql, 0) >= 0 {
		return unparseable(sql)
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		if d, ok := pgsluiceSet(sql); ok {
			return d
		}
		return unparseable(sql)
	}
	d := Decision{Statements: len(tree.Stmts)}
	if fp, err := pg.FingerprintToUInt64(sql); err == nil {
		d.Fingerprint = fp
	}
	if norm, err := pg.Normalize(sql); err == nil {
		d.Normalized = truncateUTF8(norm, maxNormalized)
	}
	if len(tree.Stmts) == 0 {
		d.Target, d.Reason, d.Command, d.Normalized = TargetPrimary, ReasonEmpty, "empty", ""
		return d
	}
	reads := map[string]bool{}
	written := map[string]bool{}
	var decided, anyPrimary, neutralPrimary bool
	var firstReason string
	for i, raw := range tree.Stmts {
		r := classifyStmt(cat, sql, raw)
		if i == 0 {
			d.Command, d.Cacheable, firstReason = r.command, r.cacheable, r.reason
		}
		if !r.neutral {
			decided = true
			if r.target == TargetPrimary {
				anyPrimary = true
			}
		} else if r.target == TargetPrimary {
			neutralPrimary = true
		}
		if d.Pin == PinNone {
			d.Pin = r.pin
		}
		if r.txn != TxnNone {
			d.Txn = r.txn
		}
		d.Sets = append(d.Sets, r.sets...)
		for _, t := range r.reads {
			reads[t] = true
		}
		for _, t := range r.written {
			written[t] = true
		}
		if r.writes {
			d.writes = true
		}
	}
	d.ReadTables = sortedKeys(reads)
	d.WriteTables = sortedKeys(written)
	d.Reason = firstReason
	d.Target = TargetReplica
	if anyPrimary || !decided && neutralPrimary {
		d.Target = TargetPrimary
	}
	if len(tree.Stmts) > 1 {
		d.Cacheable = false
		if d.Target == TargetPrimary {
			d.Reason = ReasonMultiStatement
		} else {
			d.Reason = ReasonRead
		}
	}
	return d
}

// pgsluiceSetRE matches the proxy's own settings with an unquoted value that
// PostgreSQL's grammar rejects because it is a reserved word
// (SET pgsluice.route = primary).
var pgsluiceSetRE = regexp.MustCompile(`(?is)^\s*SET\s+(?:SESSION\s+)?(pgsluice\.[a-z_][a-z0-9_]*)\s*(?:=|\s+TO\s+)\s*([a-z_][a-z0-9_]*)\s*;?\s*$`)

func pgsluiceSet(sql string) (Decision, bool) {
	m := pgsluiceSetRE.FindStringSubmatch(skipLeadingComments(sql))
	if m == nil {
		return Decision{}, false
	}
	name := strings.ToLower(m[1])
	fp, _ := pg.FingerprintToUInt64("SET " + name + " = 'v'")
	text := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(skipLeadingComments(sql)), ";"))
	return Decision{
		Target: TargetPrimary, Reason: ReasonSet, Command: "set", Statements: 1, Fingerprint: fp,
		Normalized: truncateUTF8(text, maxNormalized),
		Sets:       []SessionSet{{Kind: SetValue, Name: name, SQL: text}},
	}, true
}

func unparseable(sql string) Decision {
	n := 1
	if parts, err := pg.SplitWithScanner(sql, true); err == nil && len(parts) > 0 && strings.IndexByte(sql, 0) < 0 {
		n = len(parts)
	}
	return Decision{Target: TargetPrimary, Reason: ReasonUnparseable, ParseError: true, Command: "other", Statements: n}
}

func sortedKeys(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// truncateUTF8 cuts s to at most max bytes without splitting a rune.
func truncateUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	i := max
	for i > 0 && s[i]&0xC0 == 0x80 {
		i--
	}
	return s[:i]
}

// applyHints applies route and cache hints to a decision.
func applyHints(d *Decision, h Hints) {
	d.Hints = h
	if h.NoCache || h.Route == "primary" {
		d.Cacheable = false
	}
	switch h.Route {
	case "primary":
		if d.Target == TargetReplica {
			d.Target, d.Reason = TargetPrimary, ReasonHint
		}
	case "replica":
		switch {
		case d.writes:
			d.Target, d.Reason = TargetPrimary, ReasonHintRejected
		case d.Target == TargetPrimary && d.Reason == ReasonVolatile:
			d.Target, d.Reason = TargetReplica, ReasonHint
		}
	}
}
