package proxy

import (
	"sort"
	"strings"

	"github.com/pgsluice/pgsluice/proxy/wire"
	"github.com/pgsluice/pgsluice/routing"
)

// settings is a client's session state that must follow it from one server
// connection to the next in transaction mode: the run-time parameters of its
// startup packet and the SETs it has committed. sig identifies the whole
// state; a server connection whose settingsSig equals it needs nothing
// replayed. Modified only by the pump under the session mutex.
type settings struct {
	startup []setting // from the startup packet, applied with set_config
	user    []setting // committed session-level SETs, in order
	sig     string
}

type setting struct {
	name string // lower-case parameter name
	sql  string // statement that reproduces it
}

// startupOnlyParams are startup packet keys that are not run-time
// parameters.
var startupOnlyParams = map[string]bool{"user": true, "database": true, "options": true, "replication": true}

// newSettings derives the session settings from the startup parameters
// (options -c name=value included).
func newSettings(params map[string]string) (*settings, error) {
	st := &settings{}
	add := func(name, value string) {
		st.startup = append(st.startup, setting{
			name: strings.ToLower(name),
			sql:  "SELECT pg_catalog.set_config(" + quoteLiteral(name) + ", " + quoteLiteral(value) + ", false)",
		})
	}
	if opt := params["options"]; opt != "" {
		m, err := wire.ParseOptions(opt)
		if err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			add(k, m[k])
		}
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		if !startupOnlyParams[k] && !strings.HasPrefix(k, "_pq_.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		add(k, params[k])
	}
	st.recompute()
	return st, nil
}

// apply records committed SETs.
func (st *settings) apply(sets []routing.SessionSet) {
	for _, set := range sets {
		if set.Name == "pgsluice.route" {
			continue
		}
		switch set.Kind {
		case routing.SetValue:
			st.remove(set.Name)
			st.user = append(st.user, setting{name: set.Name, sql: set.SQL})
		case routing.SetReset:
			st.remove(set.Name)
		case routing.SetResetAll:
			st.user = nil
		}
	}
	st.recompute()
}

func (st *settings) remove(name string) {
	out := st.user[:0]
	for _, s := range st.user {
		if s.name != name {
			out = append(out, s)
		}
	}
	st.user = out
}

func (st *settings) recompute() {
	if len(st.startup) == 0 && len(st.user) == 0 {
		st.sig = ""
		return
	}
	var b strings.Builder
	for _, s := range st.startup {
		b.WriteString(s.sql)
		b.WriteString(";")
	}
	for _, s := range st.user {
		b.WriteString(s.sql)
		b.WriteString(";")
	}
	st.sig = b.String()
}

// replaySQL returns one simple-query string that brings a server connection
// to this state; reset first when the connection carries someone else's.
func (st *settings) replaySQL(reset bool) string {
	if reset {
		return "RESET ALL;" + st.sig
	}
	return st.sig
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	if !strings.ContainsAny(s, `'\`) {
		return "'" + s + "'"
	}
	return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
}

// txnTracker decides when SETs become part of the session: a SET counts
// once the transaction that ran it commits (an implicit one at the end of
// its query, an explicit one at COMMIT); a rollback or an error discards it.
// Guarded by the session mutex.
type txnTracker struct {
	pending   []routing.SessionSet
	resetStmt bool
	cycleErr  bool
	lastTag   string
}

// noteTag records the tag of a CommandComplete.
func (t *txnTracker) noteTag(body []byte) {
	tag := body
	if n := len(tag); n > 0 && tag[n-1] == 0 {
		tag = tag[:n-1]
	}
	if len(tag) == 8 && string(tag) == "ROLLBACK" {
		t.lastTag = "ROLLBACK"
	} else {
		t.lastTag = ""
	}
}

// add records the effects of a statement that completed without error.
func (t *txnTracker) add(eff *pendingSets) {
	if eff != nil {
		t.pending = append(t.pending, eff.sets...)
		if eff.resetPrepared {
			t.resetStmt = true
		}
	}
}

func (t *txnTracker) noteError() { t.cycleErr = true }

// ready is called at each ReadyForQuery the client sees.
func (t *txnTracker) ready(status byte, st *settings, b *backend) {
	if t.resetStmt {
		// DISCARD ALL / DEALLOCATE ALL ran on this server connection,
		// whatever happened to the transaction: forget what it held.
		b.prepared.reset()
		b.unnamedBy = nil
		b.settingsSig = "?"
		t.resetStmt = false
	}
	if status == 'I' {
		if len(t.pending) > 0 && !t.cycleErr && t.lastTag != "ROLLBACK" {
			st.apply(t.pending)
			b.settingsSig = st.sig
			for _, p := range t.pending {
				if p.Kind != routing.SetValue {
					// RESET returns the server to its own default, which
					// may differ from the client's startup value:
					// resynchronise on the next attach.
					b.settingsSig = "?"
				}
			}
		}
		t.pending = t.pending[:0]
	}
	t.cycleErr = false
}
