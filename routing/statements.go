package routing

// This file classifies one parsed statement by its node type.

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
)

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
