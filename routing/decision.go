package routing

import "time"

// Target says where a statement may run.
type Target uint8

const (
	// TargetReplica is a pure read: any healthy replica (or the primary as a fallback).
	TargetReplica Target = iota
	// TargetPrimary covers writes, locks, side effects and anything unknown.
	TargetPrimary
)

// String returns "replica" or "primary".
func (t Target) String() string {
	if t == TargetReplica {
		return "replica"
	}
	return "primary"
}

// PinReason says why a statement binds the client to its backend for the
// rest of the session: transaction pooling cannot move such a client.
type PinReason uint8

const (
	PinNone         PinReason = iota
	PinListen                 // LISTEN
	PinAdvisoryLock           // session-level pg_advisory_lock / pg_try_advisory_lock (not the _xact_ variants)
	PinTempTable              // CREATE TEMP TABLE/VIEW/SEQUENCE, CREATE TEMP TABLE AS, SELECT INTO TEMP (not ON COMMIT DROP)
	PinHoldCursor             // DECLARE ... WITH HOLD
	PinPrepare                // SQL-level PREPARE
	PinSessionAuth            // SET ROLE / SET SESSION AUTHORIZATION (session level)
	PinOther                  // LOAD, set_config(...) with non-constant arguments
)

var pinNames = [...]string{"", "listen", "advisory_lock", "temp_table", "hold_cursor", "prepare", "session_auth", "other"}

// String returns the metric label of the pin reason ("" for PinNone).
func (p PinReason) String() string {
	if int(p) < len(pinNames) {
		return pinNames[p]
	}
	return "unknown"
}

// TxnEffect is the effect of a statement on the transaction state.
type TxnEffect uint8

const (
	TxnNone          TxnEffect = iota
	TxnBegin                   // BEGIN / START TRANSACTION (read write or unspecified)
	TxnBeginReadOnly           // BEGIN READ ONLY / START TRANSACTION READ ONLY
	TxnEnd                     // COMMIT / ROLLBACK / END / ABORT / PREPARE TRANSACTION / COMMIT PREPARED ...
	TxnSetReadOnly             // SET TRANSACTION READ ONLY (inside a transaction)
)

var txnNames = [...]string{"", "begin", "begin_read_only", "end", "set_read_only"}

// String returns a short name of the effect ("" for TxnNone).
func (t TxnEffect) String() string {
	if int(t) < len(txnNames) {
		return txnNames[t]
	}
	return "unknown"
}

// SetKind distinguishes SET from RESET.
type SetKind uint8

const (
	SetValue    SetKind = iota // SET name ...
	SetReset                   // RESET name, SET name TO DEFAULT
	SetResetAll                // RESET ALL, DISCARD ALL
)

var setKindNames = [...]string{"set", "reset", "reset_all"}

// String returns "set", "reset" or "reset_all".
func (k SetKind) String() string {
	if int(k) < len(setKindNames) {
		return setKindNames[k]
	}
	return "unknown"
}

// SessionSet is a session-level (not LOCAL) SET/RESET that the proxy must
// replay on other backends.
type SessionSet struct {
	Kind SetKind
	// Name is the lower-cased GUC name ("search_path", "datestyle",
	// "pgsluice.route"); empty for SetResetAll.
	Name string
	// SQL is a complete standalone statement that reproduces the setting:
	// the statement's own text (trimmed, without the trailing ';') when it
	// was a SET/RESET, or a statement built from constant arguments
	// (set_config, SET SESSION CHARACTERISTICS, DISCARD ALL).
	SQL string
}

// Hints are the directives found in the text's comments, e.g.
// /* pgsluice: route=replica cache ttl=30s */ or -- pgsluice: nocache.
type Hints struct {
	Route    string        // "", "primary" or "replica"
	CacheTTL time.Duration // from "cache ttl=30s" (or "ttl=30s")
	NoCache  bool          // from "nocache"
}

// Reasons: the bounded vocabulary of Decision.Reason (safe as a metric label).
const (
	ReasonRead           = "read"              // SELECT/VALUES/TABLE/COPY TO without writes, locks or volatile functions
	ReasonWrite          = "write"             // INSERT/UPDATE/DELETE/MERGE/TRUNCATE/COPY FROM/SELECT INTO, DML in CTEs
	ReasonDDL            = "ddl"               // CREATE/ALTER/DROP/GRANT/REVOKE/COMMENT ...
	ReasonLock           = "lock"              // LOCK, SELECT ... FOR UPDATE/SHARE
	ReasonVolatile       = "volatile_function" // a volatile or unknown function is called
	ReasonTransaction    = "transaction"       // BEGIN/COMMIT/ROLLBACK/SAVEPOINT ...
	ReasonSet            = "set"               // SET/RESET
	ReasonShow           = "show"              // SHOW
	ReasonExplain        = "explain"           // EXPLAIN without ANALYZE, or EXPLAIN ANALYZE of a read
	ReasonMaintenance    = "maintenance"       // VACUUM/ANALYZE/CLUSTER/REINDEX/REFRESH/CHECKPOINT
	ReasonProcedure      = "procedure"         // CALL, DO
	ReasonSession        = "session"           // LISTEN/UNLISTEN, DISCARD, LOAD
	ReasonNotify         = "notify"            // NOTIFY
	ReasonPrepared       = "prepared"          // PREPARE/EXECUTE/DEALLOCATE
	ReasonCursor         = "cursor"            // DECLARE/FETCH/MOVE/CLOSE
	ReasonUtility        = "utility"           // anything else
	ReasonMultiStatement = "multi_statement"   // several statements, at least one of which needs the primary
	ReasonHint           = "hint"              // a route hint changed the target
	ReasonHintRejected   = "hint_rejected"     // route=replica on a write: the proxy must refuse it
	ReasonUnparseable    = "unparseable"       // pg_query could not parse the text
	ReasonEmpty          = "empty"             // no statement at all
)

// Decision is the classification of one query string. Decisions handed out
// by a Classifier are shared through its shape cache: callers must treat the
// slices as read-only.
type Decision struct {
	Target      Target
	Reason      string       // one of the Reason* constants
	ReadTables  []string     // tables read (as the parser names them: unquoted names lower-case; schema only if written), deduplicated, sorted
	WriteTables []string     // tables written (DML target, TRUNCATE, COPY FROM, DDL target, SELECT INTO), deduplicated, sorted
	Cacheable   bool         // a single read-only SELECT/VALUES/TABLE with only immutable functions and no system catalogs, locks or INTO
	Pin         PinReason    // first pin reason found
	Txn         TxnEffect    // effect of the last transaction-control statement
	Sets        []SessionSet // session-level SET/RESET statements, in order
	Command     string       // lower-case command of the first statement ("select", "insert", ..., "other")
	Fingerprint uint64       // pg_query fingerprint; identical for all texts of the same shape
	Normalized  string       // text with literals replaced by $n (pg_query Normalize) of the first text of this shape, at most 1024 bytes
	Hints       Hints
	Statements  int  // number of statements in the string
	ParseError  bool // pg_query could not parse the text: Target is TargetPrimary

	writes bool // modifies data or schema, or takes locks: a route=replica hint is rejected
}
