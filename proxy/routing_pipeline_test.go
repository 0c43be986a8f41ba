package proxy_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A pipeline (one Sync) that reads and then writes, outside a transaction,
// with routing on: the reads went to a replica, which is released only at
// the client's Sync, so the write cannot move to the primary in the middle.
// It must be refused with a clear 0A000 (never a hang, never sent to the
// replica, never half-done), the session stays usable, and a pipeline that
// starts with the write runs whole on the primary.
func TestPipelineReadThenWrite(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	asApp(t, "DROP TABLE IF EXISTS pipe_rw; CREATE TABLE pipe_rw(id int primary key)")
	if err := cluster.WaitReplicaCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	dsn := startTarget(t, cluster, withReplica)
	c := connect(t, ctx, dsn)
	waitReplicaReads(t, ctx, c)
	// run sends the statements in one pipeline and returns each one's error.
	run := func(sqls ...string) []error {
		t.Helper()
		p := c.PgConn().StartPipeline(ctx)
		for _, q := range sqls {
			p.SendQueryParams(q, nil, nil, nil, nil)
		}
		if err := p.Sync(); err != nil {
			t.Fatal(err)
		}
		// One entry per answered statement (a statement skipped after an
		// error has none), then the Sync.
		var errs []error
		for {
			res, err := p.GetResults()
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if _, ok := res.(*pgconn.PipelineSync); ok {
				break
			}
			rr, ok := res.(*pgconn.ResultReader)
			if !ok {
				t.Fatalf("pipeline %q: got %T", sqls, res)
			}
			_, err = rr.Close()
			errs = append(errs, err)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("pipeline %q close: %v", sqls, err)
		}
		return errs
	}
	for i := 0; i < 5; i++ {
		errs := run("SELECT pg_is_in_recovery()", "INSERT INTO pipe_rw VALUES ("+strconv.Itoa(i)+")")
		var pe *pgconn.PgError
		if len(errs) != 2 || errs[0] != nil {
			t.Fatalf("round %d: want the read's result and the write's error, got %v", i, errs)
		}
		if !errors.As(errs[1], &pe) || pe.Code != "0A000" {
			t.Fatalf("round %d: write after replica reads in one pipeline: got %v, want a 0A000 error", i, errs[1])
		}
	}
	for i := 0; i < 5; i++ {
		errs := run("INSERT INTO pipe_rw VALUES ("+strconv.Itoa(100+i)+")", "SELECT count(*) FROM pipe_rw")
		if len(errs) != 2 || errs[0] != nil || errs[1] != nil {
			t.Fatalf("write-first pipeline %d: %v", i, errs)
		}
	}
	var n int
	if err := c.QueryRow(ctx, "/* pgsluice: route=primary */ SELECT count(*) FROM pipe_rw").Scan(&n); err != nil || n != 5 {
		t.Fatalf("rows on the primary: %d, err %v; want 5 (the refused writes wrote nothing)", n, err)
	}
}
