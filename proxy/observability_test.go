package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgsluice/pgsluice/config"
	"github.com/pgsluice/pgsluice/deploy/local"
	"github.com/pgsluice/pgsluice/proxy"
	"github.com/pgsluice/pgsluice/routing"
)

// scrapeFamilies fetches /metrics in the text format and parses it with
// the Prometheus text parser.
func scrapeFamilies(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(scrape(t, base)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// histCounts returns the sample count of every series of a histogram,
// keyed by the values of the given labels joined with "/".
func histCounts(mfs map[string]*dto.MetricFamily, name string, labels ...string) map[string]uint64 {
	out := map[string]uint64{}
	mf := mfs[name]
	if mf == nil {
		return out
	}
	for _, m := range mf.GetMetric() {
		l := labelsOf(m)
		var key []string
		for _, n := range labels {
			key = append(key, l[n])
		}
		out[strings.Join(key, "/")] += m.GetHistogram().GetSampleCount()
	}
	return out
}

var fpClassifier = routing.New(routing.Options{CacheSize: 100})

// fp returns the fingerprint label of a statement.
func fp(sql string) string {
	return fmt.Sprintf("%016x", fpClassifier.Classify(sql).Fingerprint)
}

func withObs(replica bool, tweak func(*config.Config)) func(*TargetConfig) {
	return func(c *TargetConfig) {
		if replica {
			withReplica(c)
		}
		prev := c.Tweak
		c.Tweak = func(cfg *config.Config) {
			if prev != nil {
				prev(cfg)
			}
			if tweak != nil {
				tweak(cfg)
			}
		}
	}
}

// A known workload through the proxy, with a replica: the per-fingerprint
// histogram counts each statement once under the node it ran on, the
// backend-time histogram agrees per target, and nothing is reported for
// the cache (no rule asks for caching; TestQueryMetricsCacheTarget covers it).
func TestQueryMetricsPerFingerprint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS obs_t; CREATE TABLE obs_t(id int primary key, v int)")
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	dsn, srv := startProxy(t, cluster, withObs(true, nil))
	base := serveAdmin(t, srv)
	reader := connect(t, ctx, dsn)
	writer := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, reader)

	const (
		insertSQL = "INSERT INTO obs_t VALUES ($1, $2)"
		selectSQL = "SELECT v FROM obs_t WHERE id = $1"
	)
	for i := 0; i < 4; i++ {
		if _, err := writer.Exec(ctx, insertSQL, i, i*10); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 7; i++ {
		var v int
		err := reader.QueryRow(ctx, selectSQL, 99).Scan(&v)
		if !errors.Is(err, pgx.ErrNoRows) {
			t.Fatalf("select: %v", err)
		}
	}
	// Simple protocol, literals inline: one shape for three texts.
	for i := 1; i <= 3; i++ {
		if _, err := reader.Exec(ctx, fmt.Sprintf("SELECT count(*) FROM obs_t WHERE v > %d", i), pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
	// A failing statement counts too (and as an error).
	if _, err := writer.Exec(ctx, insertSQL, 0, 0); err == nil {
		t.Fatal("duplicate key accepted")
	}

	mfs := scrapeFamilies(t, base)
	got := histCounts(mfs, "pgsluice_query_duration_seconds", "fingerprint", "target", "command")
	want := map[string]uint64{
		fp(insertSQL) + "/primary/insert":                                5,
		fp(selectSQL) + "/replica/select":                                7,
		fp("SELECT count(*) FROM obs_t WHERE v > 1") + "/replica/select": 3,
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("pgsluice_query_duration_seconds{%s} count = %d, want %d (all: %v)", k, got[k], n, got)
		}
	}
	var replica, primary uint64
	for k, n := range got {
		parts := strings.Split(k, "/")
		switch parts[1] {
		case "replica":
			replica += n
		case "primary":
			primary += n
		default:
			t.Errorf("unexpected target in %q", k)
		}
		if parts[0] != "other" && len(parts[0]) != 16 {
			t.Errorf("fingerprint label %q: want 16 hex digits", parts[0])
		}
	}
	backend := histCounts(mfs, "pgsluice_query_backend_seconds", "target")
	if backend["replica"] != replica || backend["primary"] != primary {
		t.Errorf("backend histogram %v, want replica=%d primary=%d as in the duration histogram", backend, replica, primary)
	}
	if mfs["pgsluice_pool_wait_seconds"].GetMetric()[0].GetHistogram().GetSampleCount() == 0 {
		t.Error("pool wait histogram is empty")
	}
	if n := mfs["pgsluice_errors_total"]; n == nil {
		t.Error("no pgsluice_errors_total after a duplicate key error")
	} else {
		found := false
		for _, m := range n.GetMetric() {
			if labelsOf(m)["class"] == "23" && m.GetCounter().GetValue() >= 1 {
				found = true
			}
		}
		if !found {
			t.Error("pgsluice_errors_total{class=\"23\"} missing after a unique violation")
		}
	}

	// The protobuf exposition carries native histograms too.
	req, _ := http.NewRequest("GET", base+"/metrics", nil)
	req.Header.Set("Accept", `application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited`)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	native := false
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err != nil {
			if err != io.EOF {
				t.Fatalf("decode protobuf exposition: %v", err)
			}
			break
		}
		if mf.GetName() != "pgsluice_query_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			h := m.GetHistogram()
			if h.Schema != nil && len(h.GetPositiveSpan()) > 0 && len(h.GetBucket()) > 0 {
				native = true
			}
		}
	}
	if !native {
		t.Error("pgsluice_query_duration_seconds has no native histogram data in the protobuf exposition")
	}
}

// With metrics.max_fingerprints = 2 the first two shapes keep their own
// series and the rest go to "other"; once another shape is called more, a
// rebalance gives it its series and folds the least called one.
func TestQueryMetricsFingerprintCap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS obs_cap; CREATE TABLE obs_cap(id int primary key, v int)")
	dsn, srv := startProxy(t, cluster, withObs(false, func(cfg *config.Config) { cfg.Metrics.MaxFingerprints = 2 }))
	base := serveAdmin(t, srv)
	c := connect(t, ctx, dsn)
	shapes := []string{
		"SELECT v FROM obs_cap WHERE id = $1",
		"SELECT id FROM obs_cap WHERE v = $1",
		"SELECT id, v FROM obs_cap WHERE id = $1",
		"SELECT count(*) FROM obs_cap WHERE id > $1",
		"SELECT max(v) FROM obs_cap WHERE id < $1",
	}
	run := func(sql string, n int) {
		for i := 0; i < n; i++ {
			rows, err := c.Query(ctx, sql, i)
			if err != nil {
				t.Fatal(err)
			}
			rows.Close()
			if rows.Err() != nil {
				t.Fatal(rows.Err())
			}
		}
	}
	run(shapes[0], 5)
	run(shapes[1], 4)
	run(shapes[2], 1)
	run(shapes[3], 1)
	run(shapes[4], 1)
	ownSeries := func() ([]string, uint64) {
		got := histCounts(scrapeFamilies(t, base), "pgsluice_query_duration_seconds", "fingerprint")
		var own []string
		for k := range got {
			if k != "other" {
				own = append(own, k)
			}
		}
		sort.Strings(own)
		return own, got["other"]
	}
	own, other := ownSeries()
	want := []string{fp(shapes[0]), fp(shapes[1])}
	sort.Strings(want)
	if strings.Join(own, ",") != strings.Join(want, ",") || other != 3 {
		t.Fatalf("own series %v other=%d, want %v and other=3", own, other, want)
	}
	run(shapes[2], 10)
	time.Sleep(1100 * time.Millisecond) // the rebalance interval
	ownSeries()                         // this scrape rebalances
	run(shapes[2], 1)                   // a promoted shape's series starts with its next call
	own, _ = ownSeries()
	want = []string{fp(shapes[2]), fp(shapes[0])}
	sort.Strings(want)
	if strings.Join(own, ",") != strings.Join(want, ",") {
		t.Fatalf("after rebalance own series %v, want %v (the two most called)", own, want)
	}
}

// psqlAdmin runs one command through psql against the admin console and
// returns the unaligned output lines (header first).
func psqlAdmin(t *testing.T, ctx context.Context, dsn, user, password, sql string) ([]string, error) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, password)
	u.Path = "/pgsluice"
	cmd := exec.CommandContext(ctx, cluster.Bin("psql"), "-X", "-A", "-F", "|", "-P", "footer=off", "-v", "ON_ERROR_STOP=1", "-d", u.String(), "-c", sql)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%v: %s", err, stderr.String())
	}
	return strings.Split(strings.TrimRight(out.String(), "\n"), "\n"), nil
}

func adminDSN(t *testing.T, dsn, user, password string) string {
	return dsnFor(t, dsn, user, password, "pgsluice")
}

// The admin console answers every SHOW through psql with PgBouncer-like
// columns, only to users in admin.users.
func TestAdminConsoleShow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	reloads := 0
	var mu sync.Mutex
	dsn, _ := startProxy(t, cluster, func(c *TargetConfig) {
		withObs(true, func(cfg *config.Config) { cfg.Admin.Users = []string{local.AppUser} })(c)
		c.Reload = func() error { mu.Lock(); reloads++; mu.Unlock(); return nil }
	})
	app := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, app)
	if _, err := app.Exec(ctx, "SELECT 1 WHERE $1::int > 0", 5); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		sql     string
		cols    string
		minRows int
	}{
		{"SHOW POOLS", "database|user|node|cl_active|cl_waiting|sv_active|sv_idle|sv_login|maxwait|maxwait_us|pool_mode|pool_size", 2},
		{"SHOW CLIENTS;", "type|user|database|state|addr|port|local_addr|local_port|connect_time|request_time|node|link|pinned|tls|application_name", 2},
		{"show servers", "type|user|database|state|addr|port|local_addr|local_port|connect_time|request_time|node|id|link|remote_pid|prepared", 1},
		{"SHOW STATS", "database|total_query_count|total_query_time|total_wait_time|total_server_time|total_rows|total_errors|replica_query_count|cache_query_count|avg_query_time|avg_wait_time", 1},
		{"SHOW QUERIES", "fingerprint|query|command|calls|rows|total_time|mean_time|p50_time|p95_time|p99_time|primary_calls|replica_calls|cache_calls|cache_hit_ratio|errors", 2},
		{"SHOW REPLICAS", "node|addr|role|healthy|reachable|in_recovery|lag_bytes|lag_seconds|last_check|sv_active|sv_idle", 2},
		{"SHOW CACHE", "backend|entries|bytes|hits|misses|bypasses|evictions|invalidations|skipped|stored", 1},
		{"SHOW CONFIG", "key|value|default", 35},
		{"SHOW HELP", "command|description", 12},
	}
	for _, c := range cases {
		lines, err := psqlAdmin(t, ctx, dsn, local.AppUser, local.AppPassword, c.sql)
		if err != nil {
			t.Errorf("%s: %v", c.sql, err)
			continue
		}
		if lines[0] != c.cols {
			t.Errorf("%s columns:\n got %s\nwant %s", c.sql, lines[0], c.cols)
		}
		if rows := len(lines) - 1; rows < c.minRows {
			t.Errorf("%s: %d rows, want at least %d:\n%s", c.sql, rows, c.minRows, strings.Join(lines, "\n"))
		}
		switch c.sql {
		case "SHOW QUERIES":
			if !strings.Contains(strings.Join(lines, "\n"), "::int > $") {
				t.Errorf("SHOW QUERIES lacks the normalized statement:\n%s", strings.Join(lines, "\n"))
			}
		case "SHOW STATS":
			// database|total_query_count|...: the app client's statements.
			f := strings.Split(lines[1], "|")
			if f[0] != local.AppDatabase || f[1] == "0" {
				t.Errorf("SHOW STATS: want a row for %s with queries:\n%s", local.AppDatabase, strings.Join(lines, "\n"))
			}
		case "SHOW CONFIG":
			all := strings.Join(lines, "\n")
			if !strings.Contains(all, "metrics.max_fingerprints|200|200") || strings.Contains(all, local.AppPassword) {
				t.Errorf("SHOW CONFIG: want metrics.max_fingerprints and no password:\n%s", all)
			}
		case "SHOW REPLICAS":
			if !strings.Contains(lines[1], "primary") || !strings.Contains(strings.Join(lines[2:], "\n"), "|replica|yes|yes|yes|") {
				t.Errorf("SHOW REPLICAS: want a healthy streaming replica:\n%s", strings.Join(lines, "\n"))
			}
		}
	}
	// Command tags and errors, through pgconn (simple protocol).
	admin, err := pgconn.Connect(ctx, adminDSN(t, dsn, local.AppUser, local.AppPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	res, err := admin.Exec(ctx, "RELOAD").ReadAll()
	if err != nil || res[0].CommandTag.String() != "RELOAD" {
		t.Fatalf("RELOAD: %v %v", res, err)
	}
	mu.Lock()
	if reloads != 1 {
		t.Errorf("Reload called %d times, want 1", reloads)
	}
	mu.Unlock()
	for sql, code := range map[string]string{"SHOW NONSENSE": "42704", "SELECT 1": "42601", "SHOW": "42601", "RELOAD now": "42601", "PAUSE a b": "42601"} {
		_, err := admin.Exec(ctx, sql).ReadAll()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != code {
			t.Errorf("%q: %v, want SQLSTATE %s", sql, err, code)
		}
	}
	// The extended protocol is refused cleanly, and the session goes on.
	rr := admin.ExecParams(ctx, "SHOW POOLS", nil, nil, nil, nil).Read()
	var pe *pgconn.PgError
	if !errors.As(rr.Err, &pe) || pe.Code != "0A000" {
		t.Errorf("extended protocol: %v, want 0A000", rr.Err)
	}
	if _, err := admin.Exec(ctx, "SHOW HELP").ReadAll(); err != nil {
		t.Errorf("console unusable after an extended-protocol attempt: %v", err)
	}
}

// Users outside admin.users are refused (28000), wrong passwords get 28P01,
// and RELOAD without a reload hook says it is not available.
func TestAdminConsoleRefusesNonAdmins(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, _ := startProxy(t, cluster, withObs(false, func(cfg *config.Config) { cfg.Admin.Users = []string{local.AppUser} }))
	for _, c := range []struct{ user, password, code string }{
		{"md5u", "md5pass", "28000"},
		{local.AppUser, "wrong", "28P01"},
	} {
		_, err := pgconn.Connect(ctx, adminDSN(t, dsn, c.user, c.password))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != c.code {
			t.Errorf("admin login as %s/%s: %v, want %s", c.user, c.password, err, c.code)
		}
	}
	if _, err := psqlAdmin(t, ctx, dsn, "md5u", "md5pass", "SHOW POOLS"); err == nil || !strings.Contains(err.Error(), "admin.users") {
		t.Errorf("psql as a non-admin: %v, want a refusal naming admin.users", err)
	}
	admin, err := pgconn.Connect(ctx, adminDSN(t, dsn, local.AppUser, local.AppPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, "RELOAD").ReadAll()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "0A000" {
		t.Errorf("RELOAD without a hook: %v, want 0A000", err)
	}
}

// PAUSE waits for lent server connections to come back and holds new
// queries until RESUME.
func TestAdminPauseResume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, _ := startProxy(t, cluster, withObs(false, func(cfg *config.Config) { cfg.Admin.Users = []string{local.AppUser} }))
	busy := connect(t, ctx, dsn)
	later := connect(t, ctx, dsn)
	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	admin, err := pgconn.Connect(ctx, adminDSN(t, dsn, local.AppUser, local.AppPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	paused := make(chan error, 1)
	go func() { _, err := admin.Exec(ctx, "PAUSE").ReadAll(); paused <- err }()
	select {
	case err := <-paused:
		t.Fatalf("PAUSE returned (%v) while a transaction holds a server connection", err)
	case <-time.After(500 * time.Millisecond):
	}
	// The transaction may go on and finish; then PAUSE returns.
	if _, err := tx.Exec(ctx, "SELECT 2"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-paused:
		if err != nil {
			t.Fatalf("PAUSE: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("PAUSE did not return after the last server connection came back")
	}
	done := make(chan error, 1)
	go func() { _, err := later.Exec(ctx, "SELECT 3"); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("a query ran while paused (err %v)", err)
	case <-time.After(500 * time.Millisecond):
	}
	admin2, err := pgconn.Connect(ctx, adminDSN(t, dsn, local.AppUser, local.AppPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer admin2.Close(ctx)
	if _, err := admin2.Exec(ctx, "RESUME").ReadAll(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("query after RESUME: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("query still waiting after RESUME")
	}
}

// RECONNECT (PgBouncer's, for a switchover or new server credentials)
// closes idle server connections at once and lent ones when they come
// back: a transaction in flight finishes on its connection, and every
// later query runs on a connection opened after the command.
func TestAdminReconnect(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn, _ := startProxy(t, cluster, withObs(false, func(cfg *config.Config) { cfg.Admin.Users = []string{local.AppUser} }))
	inTx, idle := connect(t, ctx, dsn), connect(t, ctx, dsn)
	pid := func(q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}) int {
		t.Helper()
		var p int
		if err := q.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tx, err := inTx.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	txPid := pid(tx)
	idlePid := pid(idle) // another connection: the first is lent to tx
	admin, err := pgconn.Connect(ctx, adminDSN(t, dsn, local.AppUser, local.AppPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	res, err := admin.Exec(ctx, "RECONNECT").ReadAll()
	if err != nil || res[0].CommandTag.String() != "RECONNECT" {
		t.Fatalf("RECONNECT: %v %v", res, err)
	}
	if got := pid(tx); got != txPid {
		t.Fatalf("the transaction moved from server %d to %d", txPid, got)
	}
	old := map[int]bool{txPid: true, idlePid: true}
	if got := pid(idle); old[got] {
		t.Errorf("after RECONNECT an idle client ran on server %d, opened before it", got)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if got := pid(inTx); old[got] {
			t.Errorf("after its transaction the client ran on server %d, opened before RECONNECT (the transaction's was %d, the idle client's %d)", got, txPid, idlePid)
		}
	}
	// Both old server sessions end.
	waitBackendsGone(t, ctx, []int32{int32(txPid), int32(idlePid)})
	// The next transaction never starts on the old connection, even when
	// the client is quicker than the release after COMMIT (the session
	// still holds the connection then: lockAttached waits for it).
	for i := 0; i < 30; i++ {
		tx, err := inTx.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		before := pid(tx)
		if _, err := admin.Exec(ctx, "RECONNECT").ReadAll(); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if got := pid(inTx); got == before {
			t.Fatalf("round %d: the statement after COMMIT ran on server %d, opened before RECONNECT", i, got)
		}
	}
	// A database name limits it; an unknown one and extra words are errors.
	if _, err := admin.Exec(ctx, "RECONNECT "+local.AppDatabase).ReadAll(); err != nil {
		t.Errorf("RECONNECT %s: %v", local.AppDatabase, err)
	}
	for sql, code := range map[string]string{"RECONNECT nosuchdb": "3D000", "RECONNECT a b": "42601"} {
		_, err := admin.Exec(ctx, sql).ReadAll()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != code {
			t.Errorf("%q: %v, want SQLSTATE %s", sql, err, code)
		}
	}
}

// GET /queries serves the statistics sorted as asked; the slow-query log
// names statements by their normalized text only.
func TestQueriesEndpointAndSlowLog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var logBuf lockedBuffer
	dsn, srv := startProxy(t, cluster, func(c *TargetConfig) {
		withObs(false, func(cfg *config.Config) { cfg.Metrics.SlowQueryThreshold = 250 * time.Millisecond })(c)
		c.Log = &logBuf
	})
	base := serveAdmin(t, srv)
	c := connect(t, ctx, dsn)
	for i := 0; i < 6; i++ {
		if _, err := c.Exec(ctx, fmt.Sprintf("SELECT %d AS fast_one", i), pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
	// A comment (a tracing tag naming a customer) is no more shown than a
	// literal: the normalized text is shown for every text of its shape.
	if _, err := c.Exec(ctx, "SELECT pg_sleep(0.4), 'secret-literal-42' AS s /* customer:secret-comment-7 */", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_sleep($1::float8), $2::text AS s2", 0.4, "secret-param-43"); err != nil {
		t.Fatal(err)
	}
	get := func(q string) []proxy.QueryStat {
		resp, err := http.Get(base + "/queries" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out []proxy.QueryStat
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("/queries%s: %v", q, err)
		}
		return out
	}
	byTime := get("")
	// Both pg_sleep texts have one fingerprint (aliases and casts aside).
	if len(byTime) != 2 || byTime[0].Calls != 2 {
		t.Fatalf("/queries: %+v, want the pg_sleep shape (2 calls) then the fast one", byTime)
	}
	for i := 1; i < len(byTime); i++ {
		if byTime[i].TotalTimeMs > byTime[i-1].TotalTimeMs {
			t.Errorf("/queries not sorted by total time: %+v", byTime)
		}
	}
	// The upper bound only guards against gross errors (a unit mix-up, a
	// wrong bucket): a loaded CI machine can stretch a 400ms sleep a lot.
	if !strings.Contains(byTime[0].Query, "pg_sleep") || byTime[0].P95Ms < 350 || byTime[0].P95Ms > 3000 {
		t.Errorf("slowest entry %+v: want a pg_sleep statement with p95 of 400ms (at most 3s)", byTime[0])
	}
	byCalls := get("?sort=calls&limit=1")
	if len(byCalls) != 1 || byCalls[0].Calls != 6 || byCalls[0].Fingerprint != fp("SELECT 1 AS fast_one") {
		t.Errorf("/queries?sort=calls&limit=1 = %+v, want the fast statement with 6 calls", byCalls)
	}
	if resp, err := http.Get(base + "/queries?sort=bogus"); err != nil || resp.StatusCode != 400 {
		t.Errorf("/queries?sort=bogus: %v %v, want 400", resp, err)
	}
	for _, q := range byTime {
		if strings.Contains(q.Query, "secret") {
			t.Errorf("/queries shows a literal: %q", q.Query)
		}
	}
	// The slow-query log (slog text lines; the harness logs at debug level,
	// whose message trace does show literals): only slow statements, by
	// their normalized text. Both pg_sleep statements must be there. A fast
	// statement stalled past the 250ms threshold on a loaded machine is
	// really slow and may be logged too; it must then show a duration at
	// or above the threshold and its normalized text (a fast statement
	// logged below the threshold, or with its literal, still fails).
	durRE := regexp.MustCompile(`duration_ms=([0-9.]+)`)
	queryRE := regexp.MustCompile(`query="((?:[^"\\]|\\.)*)"`)
	var slow []string
	for _, line := range strings.Split(logBuf.String(), "\n") {
		if strings.Contains(line, `msg="slow query"`) {
			slow = append(slow, line)
		}
	}
	sleeps := 0
	for _, line := range slow {
		d, q := durRE.FindStringSubmatch(line), queryRE.FindStringSubmatch(line)
		if d == nil || q == nil {
			t.Fatalf("slow-query record without duration_ms or query: %s", line)
		}
		ms, _ := strconv.ParseFloat(d[1], 64)
		if strings.Contains(line, "secret-") {
			t.Errorf("slow-query record leaks a literal: %s", line)
		}
		switch {
		case strings.Contains(q[1], "pg_sleep"):
			sleeps++
			if !strings.Contains(q[1], "pg_sleep($1") || ms < 350 {
				t.Errorf("slow-query record %s: want normalized pg_sleep text and duration >= 350ms", line)
			}
		case strings.Contains(q[1], "fast_one"):
			if !strings.Contains(q[1], "$1") || ms < 250 {
				t.Errorf("slow-query record names a fast statement below the threshold or with its literal: %s", line)
			} else {
				t.Logf("a fast statement was stalled past the threshold (loaded machine): %s", line)
			}
		default:
			t.Errorf("unexpected slow-query record: %s", line)
		}
	}
	if sleeps != 2 {
		t.Fatalf("%d pg_sleep slow-query records, want 2:\n%s", sleeps, strings.Join(slow, "\n"))
	}
}

// Results answered from the cache are counted under target="cache" with
// their fingerprint, and not under the backend-time histogram.
func TestQueryMetricsCacheTarget(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS obs_c; CREATE TABLE obs_c(id int primary key, v int); INSERT INTO obs_c VALUES (1, 10), (2, 20)")
	dsn, srv := startProxy(t, cluster, withObs(false, func(cfg *config.Config) {
		cfg.Cache.Backend = config.CacheMemory
		cfg.Cache.Rules = []config.CacheRule{{Tables: []string{"obs_c"}, TTL: time.Hour}}
	}))
	base := serveAdmin(t, srv)
	c := connect(t, ctx, dsn)
	const q = "SELECT v FROM obs_c ORDER BY id"
	for i := 0; i < 5; i++ {
		rows, err := c.Query(ctx, q, pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		if rows.Err() != nil || n != 2 {
			t.Fatalf("read %d: %d rows, err %v", i, n, rows.Err())
		}
	}
	if h := srv.CacheStats().Hits; h != 4 {
		t.Fatalf("cache hits = %d, want 4 (one fill, four hits)", h)
	}
	mfs := scrapeFamilies(t, base)
	got := histCounts(mfs, "pgsluice_query_duration_seconds", "fingerprint", "target", "command")
	if n := got[fp(q)+"/cache/select"]; n != 4 {
		t.Errorf("cache series count = %d, want 4; all: %v", n, got)
	}
	if n := got[fp(q)+"/primary/select"]; n != 1 {
		t.Errorf("primary series count = %d, want 1 (the fill); all: %v", n, got)
	}
	if n := histCounts(mfs, "pgsluice_query_backend_seconds", "target")["cache"]; n != 0 {
		t.Errorf("backend time recorded for %d cache hits, want none", n)
	}
}
