package proxy

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgsluice/pgsluice/config"
)

type adminShow struct {
	help string
	fn   func(*Server) *resultSet
}

// adminShows are the SHOW items of the admin console. Column names follow
// PgBouncer's where the notion exists there.
var adminShows map[string]adminShow

func init() {
	adminShows = map[string]adminShow{
		"POOLS":     {"pools per (database, user, node): clients, server connections, longest wait", showPools},
		"CLIENTS":   {"client connections", showClients},
		"SERVERS":   {"server connections", showServers},
		"STATS":     {"per-database totals since start: queries, time, wait", showStats},
		"QUERIES":   {"per-fingerprint statistics, by total time", showQueries},
		"REPLICAS":  {"nodes: health, recovery, lag", showReplicas},
		"CACHE":     {"result cache counters per backend", showCache},
		"CONFIG":    {"the configuration in force (secrets masked)", showConfig},
		"DATABASES": {"databases with pools, paused or disabled: primary, pool size and mode, connections, state", showDatabases},
		"VERSION":   {"the pgsluice version", showVersion},
		"HELP":      {"this list", showHelp},
	}
}

func showHelp(*Server) *resultSet {
	r := &resultSet{cols: []string{"command", "description"}, tag: "SHOW"}
	names := make([]string, 0, len(adminShows))
	for k := range adminShows {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		r.rows = append(r.rows, []string{"SHOW " + k, adminShows[k].help})
	}
	r.rows = append(r.rows,
		[]string{"RELOAD", "re-read and apply the configuration"},
		[]string{"PAUSE [db]", "stop lending server connections (of db); returns once every lent one is back"},
		[]string{"RESUME [db]", "let paused clients go on (RESUME alone lifts every pause)"},
		[]string{"RECONNECT [db]", "open new server connections: idle ones close now, lent ones when released"},
		[]string{"WAIT_CLOSE [db]", "return once no server connection from before the last RECONNECT is left"},
		[]string{"DISABLE db", "refuse new clients of db (55000); connected ones go on"},
		[]string{"ENABLE db", "accept new clients of db again"},
		[]string{"KILL db", "close every client of db (57P01) and its server connections; db stays paused until RESUME db"},
		[]string{"SHUTDOWN", "shut pgsluice down as on SIGTERM: idle clients closed (57P01), transactions finish within shutdown_timeout"})
	return r
}

func itoa(n int64) string   { return strconv.FormatInt(n, 10) }
func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', 3, 64) }

func timeText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 MST")
}

func splitAddr(a net.Addr) (string, string) {
	if a == nil {
		return "", ""
	}
	h, p, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String(), ""
	}
	return h, p
}

// sessionList snapshots the logged-in sessions.
func (s *Server) sessionList() []*session {
	s.mu.Lock()
	out := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		out = append(out, sess)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].since.Before(out[j].since) })
	return out
}

// nodeName returns the node name of a server address.
func (s *Server) nodeName(addr string) string {
	for _, n := range s.topo.list() {
		if n.addr == addr {
			return n.name
		}
	}
	return addr
}

func showPools(s *Server) *resultSet {
	r := &resultSet{cols: []string{"database", "user", "node", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_login",
		"maxwait", "maxwait_us", "pool_mode", "pool_size"}, tag: "SHOW"}
	// A client counts in the pool of the server it holds, otherwise in its
	// home pool (the writer's).
	clients := map[*pool]int64{}
	for _, sess := range s.sessionList() {
		sess.mu.Lock()
		switch {
		case sess.b != nil:
			clients[sess.b.pool]++
		case sess.pool != nil && sess.state >= stateIdle && sess.state != stateClosed:
			clients[sess.pool]++
		}
		sess.mu.Unlock()
	}
	cfg := s.cfgNow()
	now := time.Now()
	for _, p := range s.poolList() {
		p.mu.Lock()
		active, idle, waiting, total := p.active, len(p.idle), len(p.waiters), p.total
		var maxWait time.Duration
		if waiting > 0 {
			maxWait = now.Sub(p.waiters[0].since)
		}
		p.mu.Unlock()
		cl := clients[p] - int64(waiting)
		if cl < 0 {
			cl = 0
		}
		login := total - active - idle
		if login < 0 {
			login = 0
		}
		r.rows = append(r.rows, []string{p.key.database, p.key.user, s.nodeName(p.key.addr),
			itoa(cl), itoa(int64(waiting)), itoa(int64(active)), itoa(int64(idle)), itoa(int64(login)),
			itoa(int64(maxWait / time.Second)), itoa(int64(maxWait%time.Second) / 1000),
			cfg.Pool.Mode, itoa(int64(cfg.Pool.Size))})
	}
	return r
}

func showClients(s *Server) *resultSet {
	r := &resultSet{cols: []string{"type", "user", "database", "state", "addr", "port", "local_addr", "local_port",
		"connect_time", "request_time", "node", "link", "pinned", "tls", "application_name"}, tag: "SHOW"}
	for _, sess := range s.sessionList() {
		sess.mu.Lock()
		if sess.state < stateIdle || sess.state == stateClosed {
			sess.mu.Unlock()
			continue
		}
		typ, state, node, link := "C", "idle", "", ""
		if sess.admin {
			typ = "A"
		}
		if sess.b != nil {
			state = "active"
			node = s.nodeName(sess.b.pool.key.addr)
			link = strconv.FormatUint(sess.b.id, 10)
		}
		var req time.Time
		if sess.lastReq != 0 {
			req = epoch.Add(time.Duration(sess.lastReq))
		}
		pinned := sess.pinned.String()
		sess.mu.Unlock()
		addr, port := splitAddr(sess.conn.RemoteAddr())
		laddr, lport := splitAddr(sess.conn.LocalAddr())
		tlsOn := "no"
		if _, ok := sess.conn.(*tls.Conn); ok {
			tlsOn = "yes"
		}
		r.rows = append(r.rows, []string{typ, sess.user, sess.database, state, addr, port, laddr, lport,
			timeText(sess.since), timeText(req), node, link, pinned, tlsOn, sess.appName})
	}
	return r
}

func showServers(s *Server) *resultSet {
	r := &resultSet{cols: []string{"type", "user", "database", "state", "addr", "port", "local_addr", "local_port",
		"connect_time", "request_time", "node", "id", "link", "remote_pid", "prepared"}, tag: "SHOW"}
	row := func(b *backend, state, link string, lastUsed time.Time) []string {
		addr, port, _ := net.SplitHostPort(b.pool.key.addr)
		laddr, lport := splitAddr(b.conn.LocalAddr())
		return []string{"S", b.pool.key.user, b.pool.key.database, state, addr, port, laddr, lport,
			timeText(b.created), timeText(lastUsed), s.nodeName(b.pool.key.addr), strconv.FormatUint(b.id, 10), link,
			strconv.FormatUint(uint64(b.pid), 10), strconv.Itoa(b.prepared.len())}
	}
	for _, sess := range s.sessionList() {
		sess.mu.Lock()
		if b := sess.b; b != nil {
			a, p := splitAddr(sess.conn.RemoteAddr())
			r.rows = append(r.rows, row(b, "active", net.JoinHostPort(a, p), b.lastUsed))
		}
		sess.mu.Unlock()
	}
	for _, p := range s.poolList() {
		p.mu.Lock()
		for _, b := range p.idle {
			r.rows = append(r.rows, row(b, "idle", "", b.lastUsed))
		}
		p.mu.Unlock()
	}
	return r
}

func showStats(s *Server) *resultSet {
	r := &resultSet{cols: []string{"database", "total_query_count", "total_query_time", "total_wait_time", "total_server_time",
		"total_rows", "total_errors", "replica_query_count", "cache_query_count", "avg_query_time", "avg_wait_time"}, tag: "SHOW"}
	totals := s.dbTotals()
	names := make([]string, 0, len(totals))
	for name := range totals {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		d := totals[name]
		n := d.queries
		q, w := d.queryNs/1000, d.waitNs/1000
		avgQ, avgW := int64(0), int64(0)
		if n > 0 {
			avgQ, avgW = q/n, w/n
		}
		r.rows = append(r.rows, []string{name, itoa(n), itoa(q), itoa(w), itoa(d.serverNs / 1000),
			itoa(d.rows), itoa(d.errors), itoa(d.replicaQueries), itoa(d.cacheQueries),
			itoa(avgQ), itoa(avgW)})
	}
	return r
}

// QueryStat is one fingerprint's statistics as GET /queries serves them.
// Times are in milliseconds.
type QueryStat struct {
	Fingerprint   string           `json:"fingerprint"`
	Query         string           `json:"query"`
	Command       string           `json:"command"`
	Calls         int64            `json:"calls"`
	Rows          int64            `json:"rows"`
	Errors        int64            `json:"errors"`
	TotalTimeMs   float64          `json:"total_time_ms"`
	MeanTimeMs    float64          `json:"mean_time_ms"`
	P50Ms         float64          `json:"p50_ms"`
	P95Ms         float64          `json:"p95_ms"`
	P99Ms         float64          `json:"p99_ms"`
	BackendTimeMs float64          `json:"backend_time_ms"`
	CallsByTarget map[string]int64 `json:"calls_by_target"`
	ReplicaShare  float64          `json:"replica_share"`
	CacheHitRatio float64          `json:"cache_hit_ratio"`
}

// queryStatsSorted returns up to limit entries sorted by key (total_time,
// calls or mean), largest first.
func (s *Server) queryStatsSorted(key string, limit int) []QueryStat {
	var out []QueryStat
	for _, q := range s.qs.all() {
		calls := q.callCount()
		if calls == 0 {
			continue
		}
		st := QueryStat{Fingerprint: q.label, Query: q.normalized, Command: q.command, Calls: calls,
			Rows: q.rows.Load(), Errors: q.errors.Load(),
			TotalTimeMs:   float64(q.totalNs.Load()) / 1e6,
			BackendTimeMs: float64(q.backendNs.Load()) / 1e6,
			P50Ms:         q.quantile(.50) * 1e3, P95Ms: q.quantile(.95) * 1e3, P99Ms: q.quantile(.99) * 1e3,
			CallsByTarget: map[string]int64{}}
		st.MeanTimeMs = st.TotalTimeMs / float64(calls)
		for i, tn := range targetNames {
			st.CallsByTarget[tn] = q.byTarget[i].Load()
		}
		st.ReplicaShare = float64(st.CallsByTarget["replica"]) / float64(calls)
		st.CacheHitRatio = float64(st.CallsByTarget["cache"]) / float64(calls)
		out = append(out, st)
	}
	less := func(a, b QueryStat) bool { return a.TotalTimeMs > b.TotalTimeMs }
	switch key {
	case "calls":
		less = func(a, b QueryStat) bool { return a.Calls > b.Calls }
	case "mean", "mean_time":
		less = func(a, b QueryStat) bool { return a.MeanTimeMs > b.MeanTimeMs }
	}
	sort.SliceStable(out, func(i, j int) bool {
		if less(out[i], out[j]) != less(out[j], out[i]) {
			return less(out[i], out[j])
		}
		return out[i].Fingerprint < out[j].Fingerprint
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// serveQueries serves GET /queries?sort=total_time|calls|mean&limit=N.
func (s *Server) serveQueries(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	key := r.URL.Query().Get("sort")
	switch key {
	case "", "total_time", "calls", "mean", "mean_time":
	default:
		http.Error(w, "sort: want total_time, calls or mean", http.StatusBadRequest)
		return
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			http.Error(w, "limit: want a positive integer", http.StatusBadRequest)
			return
		}
		limit = n
	}
	out := s.queryStatsSorted(key, limit)
	if out == nil {
		out = []QueryStat{}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(out)
}

func showQueries(s *Server) *resultSet {
	r := &resultSet{cols: []string{"fingerprint", "query", "command", "calls", "rows", "total_time", "mean_time",
		"p50_time", "p95_time", "p99_time", "primary_calls", "replica_calls", "cache_calls", "cache_hit_ratio", "errors"}, tag: "SHOW"}
	for _, q := range s.queryStatsSorted("total_time", 200) {
		r.rows = append(r.rows, []string{q.Fingerprint, q.Query, q.Command, itoa(q.Calls), itoa(q.Rows),
			ftoa(q.TotalTimeMs), ftoa(q.MeanTimeMs), ftoa(q.P50Ms), ftoa(q.P95Ms), ftoa(q.P99Ms),
			itoa(q.CallsByTarget["primary"]), itoa(q.CallsByTarget["replica"]), itoa(q.CallsByTarget["cache"]),
			ftoa(q.CacheHitRatio), itoa(q.Errors)})
	}
	return r
}

func showReplicas(s *Server) *resultSet {
	r := &resultSet{cols: []string{"node", "addr", "role", "healthy", "reachable", "in_recovery", "lag_bytes", "lag_seconds",
		"last_check", "sv_active", "sv_idle"}, tag: "SHOW"}
	w := s.topo.writer()
	servers := map[string][2]int{}
	for _, p := range s.poolList() {
		active, idle, _, _ := p.stats()
		c := servers[p.key.addr]
		servers[p.key.addr] = [2]int{c[0] + active, c[1] + idle}
	}
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	for _, n := range s.topo.list() {
		st := n.state.Load()
		role := "replica"
		if n == w {
			role = "primary"
		}
		c := servers[n.addr]
		r.rows = append(r.rows, []string{n.name, n.addr, role, yes(st.healthy), yes(st.reachable), yes(st.inRecovery),
			itoa(st.lagBytes), ftoa(st.lagSeconds), timeText(st.sampled), strconv.Itoa(c[0]), strconv.Itoa(c[1])})
	}
	return r
}

func showCache(s *Server) *resultSet {
	r := &resultSet{cols: []string{"backend", "entries", "bytes", "hits", "misses", "bypasses", "evictions", "invalidations",
		"skipped", "stored"}, tag: "SHOW"}
	c := s.CacheStats()
	if !c.Enabled {
		return r // cache.backend: off
	}
	u := func(n uint64) string { return strconv.FormatUint(n, 10) }
	r.rows = append(r.rows, []string{c.Backend, itoa(c.Entries), itoa(c.Bytes), u(c.Hits), u(c.Misses),
		u(c.Bypasses), u(c.Evictions), u(c.Invalidations), u(c.Skipped), u(c.Stored)})
	return r
}

func showConfig(s *Server) *resultSet {
	r := &resultSet{cols: []string{"key", "value", "default"}, tag: "SHOW"}
	cur, def := map[string]string{}, map[string]string{}
	var keys []string
	flattenConfig("", reflect.ValueOf(*s.cfgNow()), func(k, v string) { cur[k] = v; keys = append(keys, k) })
	flattenConfig("", reflect.ValueOf(config.Default()), func(k, v string) { def[k] = v })
	for _, k := range keys {
		r.rows = append(r.rows, []string{k, cur[k], def[k]})
	}
	return r
}

// flattenConfig renders every leaf key of a Config, secrets masked.
func flattenConfig(prefix string, v reflect.Value, emit func(key, value string)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := f.Tag.Get("mapstructure")
		if prefix != "" {
			key = prefix + "." + key
		}
		fv := v.Field(i)
		switch x := fv.Interface().(type) {
		case config.Secret:
			emit(key, x.String())
			continue
		case []config.Node:
			parts := make([]string, len(x))
			for j, n := range x {
				parts[j] = n.Addr() + " weight=" + strconv.Itoa(n.Weight)
			}
			emit(key, strings.Join(parts, ", "))
			continue
		case []config.User:
			parts := make([]string, len(x))
			for j, u := range x {
				parts[j] = u.Name
			}
			emit(key, strings.Join(parts, ", "))
			continue
		case []string:
			emit(key, strings.Join(x, ", "))
			continue
		case fmt.Stringer:
			emit(key, x.String())
			continue
		}
		if fv.Kind() == reflect.Struct {
			flattenConfig(key, fv, emit)
			continue
		}
		emit(key, fmt.Sprint(fv.Interface()))
	}
}
