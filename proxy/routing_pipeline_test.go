package proxy_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsluice/pgsluice/deploy/local"
)

// A pipeline (one Sync) that reads and then writes, outside a transaction,
// with routing on: the reads go to a replica; at the write the proxy ends
// the replica's part with a Sync of its own, releases the replica and runs
// the rest on the primary. The client sees one pipeline: every result in
// order, one ReadyForQuery. A read that fails before the write makes the
// write skipped, as PostgreSQL does (never run anywhere), and the session
// stays usable.
func TestPipelineReadThenWrite(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS pipe_rw; CREATE TABLE pipe_rw(id int primary key)")
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	dsn := startTarget(t, cluster, withReplica)
	c := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, c)
	type result struct {
		val string // first column of the last row
		err error
	}
	// run sends the statements in one pipeline and returns each one's
	// result (a statement skipped after an error has none).
	run := func(sqls ...string) []result {
		t.Helper()
		p := c.PgConn().StartPipeline(ctx)
		for _, q := range sqls {
			p.SendQueryParams(q, nil, nil, nil, nil)
		}
		if err := p.Sync(); err != nil {
			t.Fatal(err)
		}
		var out []result
		for {
			res, err := p.GetResults()
			if err != nil {
				out = append(out, result{err: err})
				continue
			}
			if _, ok := res.(*pgconn.PipelineSync); ok {
				break
			}
			rr, ok := res.(*pgconn.ResultReader)
			if !ok {
				t.Fatalf("pipeline %q: got %T", sqls, res)
			}
			var r result
			for rr.NextRow() {
				if v := rr.Values(); len(v) > 0 {
					r.val = string(v[0])
				}
			}
			_, r.err = rr.Close()
			out = append(out, r)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("pipeline %q close: %v", sqls, err)
		}
		return out
	}
	want := 0
	for i := 0; i < 5; i++ {
		id := strconv.Itoa(i)
		waitReplicaReads(t, ctx, c) // read-your-writes: until the last round's write is replayed
		rs := run("SELECT pg_is_in_recovery()", "INSERT INTO pipe_rw VALUES ("+id+")",
			"SELECT count(*) FROM pipe_rw WHERE id = "+id)
		want++
		if len(rs) != 3 || rs[0].err != nil || rs[1].err != nil || rs[2].err != nil {
			t.Fatalf("round %d: read, write, read in one pipeline: %+v", i, rs)
		}
		if rs[0].val != "t" {
			t.Errorf("round %d: the read before the write ran on the primary (pg_is_in_recovery=%q); want a replica", i, rs[0].val)
		}
		if rs[2].val != "1" {
			t.Errorf("round %d: the read after the write did not see it (count=%q)", i, rs[2].val)
		}
	}
	for i := 0; i < 5; i++ {
		// The failing read may be answered before or after the proxy
		// splits the pipeline; either way the write must not run.
		waitReplicaReads(t, ctx, c)
		rs := run("SELECT 1/0", "INSERT INTO pipe_rw VALUES ("+strconv.Itoa(50+i)+")")
		var pe *pgconn.PgError
		if len(rs) != 1 || !errors.As(rs[0].err, &pe) || pe.Code != "22012" {
			t.Fatalf("round %d: failing read then write: got %+v, want one 22012 error and the write skipped", i, rs)
		}
	}
	for i := 0; i < 5; i++ {
		rs := run("INSERT INTO pipe_rw VALUES ("+strconv.Itoa(100+i)+")", "SELECT count(*) FROM pipe_rw")
		want++
		if len(rs) != 2 || rs[0].err != nil || rs[1].err != nil {
			t.Fatalf("write-first pipeline %d: %+v", i, rs)
		}
	}
	var n int
	if err := c.QueryRow(ctx, "/* pgsluice: route=primary */ SELECT count(*) FROM pipe_rw").Scan(&n); err != nil || n != want {
		t.Fatalf("rows on the primary: %d, err %v; want %d (the skipped writes wrote nothing)", n, err, want)
	}
}

// An Execute followed by Flush instead of Sync leaves the server inside an
// implicit transaction (the INSERT commits only at Sync) even though all
// its responses arrived. The proxy must keep that server connection for the
// client until its Sync: handing it to another client would let that
// client's statements commit or roll back the first client's write. With a
// pool of one, a second client waits (here: times out with 53300) while the
// first is mid-pipeline, and a failing statement before the first client's
// Sync rolls its INSERT back, exactly as PostgreSQL does.
func TestExecuteFlushKeepsServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS pipe_flush; CREATE TABLE pipe_flush(id int primary key)")
	dsn := startTarget(t, cluster, func(tc *TargetConfig) {
		tc.PoolSize = 1
		tc.AcquireTimeout = 500 * time.Millisecond
	})
	a := rawConnect(t, ctx, dsn)
	for round, commit := range []bool{false, true} {
		a.fe.Send(&pgproto3.Parse{Query: "INSERT INTO pipe_flush VALUES (" + strconv.Itoa(round) + ")"})
		a.fe.Send(&pgproto3.Bind{})
		a.fe.Send(&pgproto3.Execute{})
		a.fe.Send(&pgproto3.Flush{})
		if err := a.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		a.c.SetReadDeadline(time.Now().Add(20 * time.Second))
		for done := false; !done; {
			m, err := a.fe.Receive()
			if err != nil {
				t.Fatalf("round %d: receive: %v", round, err)
			}
			switch m := m.(type) {
			case *pgproto3.CommandComplete:
				done = true
			case *pgproto3.ErrorResponse:
				t.Fatalf("round %d: INSERT failed: %s", round, m.Message)
			}
		}
		// Every response is in; the server is waiting for Sync.
		b, err := pgconn.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.Exec(ctx, "SELECT 1").ReadAll()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "53300" {
			t.Fatalf("round %d: another client got the server connection in the middle of an unsynced pipeline (err %v); want it to wait and time out with 53300", round, err)
		}
		b.Close(ctx)
		var rest []pgproto3.FrontendMessage
		if !commit {
			rest = append(rest, &pgproto3.Parse{Query: "SELECT 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{})
		}
		rest = append(rest, &pgproto3.Sync{})
		msgs := a.roundTrip(rest...)
		if got := describe(msgs); commit != !strings.Contains(got, "E(") {
			t.Fatalf("round %d: after Sync got %s", round, got)
		}
	}
	direct, err := pgx.Connect(ctx, cluster.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	var n int
	if err := direct.QueryRow(ctx, "SELECT count(*) FROM pipe_flush").Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows: %d (err %v); want 1: the INSERT rolled back by the failing statement before Sync must be gone, the synced one kept", n, err)
	}
}

// Client messages and server replies larger than the read buffers, in
// flight at the same time: a pipeline of 100 KiB statements that each fail
// with an error quoting their own 100 KiB literal. The session goroutine
// reads the next big Parse while the pump reads the previous big error;
// each must come back intact (under -race this also proves they never share
// a buffer).
func TestLargeMessagesBothWays(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := connect(t, ctx, startTarget(t, cluster, nil))
	const n = 20
	p := c.PgConn().StartPipeline(ctx)
	lits := make([]string, n)
	for i := range lits {
		lits[i] = strconv.Itoa(i) + strings.Repeat("x", 100<<10)
		// Each is its own Sync cycle so that the server keeps answering.
		p.SendQueryParams("SELECT '"+lits[i]+"'::int", nil, nil, nil, nil)
		if err := p.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; {
		res, err := p.GetResults()
		if err != nil {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "22P02" || !strings.Contains(pe.Message, `"`+lits[i]+`"`) {
				msg := err.Error()
				if len(msg) > 80 {
					msg = msg[:80]
				}
				t.Fatalf("statement %d: got %s..., want 22P02 quoting its own literal", i, msg)
			}
			i++
			continue
		}
		switch r := res.(type) {
		case *pgconn.PipelineSync:
		case *pgconn.ResultReader:
			if _, err := r.Close(); err != nil {
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || !strings.Contains(pe.Message, `"`+lits[i]+`"`) {
					t.Fatalf("statement %d: %.80v", i, err)
				}
				i++
			}
		case nil:
			t.Fatalf("pipeline ended after %d of %d statements", i, n)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}
