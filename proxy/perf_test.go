package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The proxy recycles the record of a replaced unnamed statement. A portal
// bound from an unnamed statement may still be executed after two more
// unnamed Parses; the SET it runs must still be tracked, so that the
// client's setting follows it to its next server connection.
func TestUnnamedStatementReplacedBeforeExecute(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn := startTarget(t, cluster, func(c *TargetConfig) { c.PoolSize = 2 })
	pc, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Conn.Close()
	_ = hc.Conn.SetDeadline(time.Now().Add(30 * time.Second))
	fe := pgproto3.NewFrontend(bufio.NewReader(hc.Conn), hc.Conn)
	// roundTrip sends msgs and returns the type letters of the answers
	// up to ReadyForQuery, and the first column of the last DataRow.
	roundTrip := func(msgs ...pgproto3.FrontendMessage) (string, string) {
		t.Helper()
		for _, m := range msgs {
			fe.Send(m)
		}
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		var types, last string
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("receive: %v", err)
			}
			switch m := msg.(type) {
			case *pgproto3.ParseComplete:
				types += "1"
			case *pgproto3.BindComplete:
				types += "2"
			case *pgproto3.CommandComplete:
				types += "C"
			case *pgproto3.DataRow:
				types += "D"
				last = string(m.Values[0])
			case *pgproto3.RowDescription:
				types += "T"
			case *pgproto3.ErrorResponse:
				t.Fatalf("ErrorResponse %s %s", m.Code, m.Message)
			case *pgproto3.ReadyForQuery:
				return types, last
			}
		}
	}
	for i := range 4 {
		types, _ := roundTrip(
			&pgproto3.Parse{Query: fmt.Sprintf("SET application_name = 'bound_%d'", i)},
			&pgproto3.Bind{},
			&pgproto3.Parse{Query: "SELECT 1"},
			&pgproto3.Parse{Query: "SELECT 2"},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
		)
		if types != "1211C" {
			t.Fatalf("round %d: responses %q, want 1211C", i, types)
		}
	}
	// Another client takes the server connection the SETs ran on (the
	// pool lends the most recently used first) and keeps it.
	other, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var otherPid string
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()::text").Scan(&otherPid); err != nil {
		t.Fatal(err)
	}
	_, pid := roundTrip(&pgproto3.Query{String: "SELECT pg_backend_pid()::text"})
	if pid == otherPid {
		t.Fatalf("both clients on server pid %s: the test needs the first one moved", pid)
	}
	if _, got := roundTrip(&pgproto3.Query{String: "SHOW application_name"}); got != "bound_3" {
		t.Fatalf("application_name on the next server connection = %q, want bound_3", got)
	}
}
