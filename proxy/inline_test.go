package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A transaction of one batch is answered on the session goroutine, with no
// pump goroutine (inline.go); an explicit transaction and a statement that
// runs longer than the inline wait get one, and every answer is right.
func TestInlineAnswers(t *testing.T) {
	dsn, srv := startProxy(t, cluster, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	const n = 100
	p0 := srv.PumpsStarted()
	for i := 0; i < n; i++ {
		res, err := conn.Exec(ctx, "SELECT 41 + 1").ReadAll()
		if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "42" {
			t.Fatalf("simple query %d: %v %v", i, res, err)
		}
		r := conn.ExecParams(ctx, "SELECT $1::int + 1", [][]byte{[]byte("41")}, nil, nil, nil).Read()
		if r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][0]) != "42" {
			t.Fatalf("extended query %d: %v %v", i, r.Rows, r.Err)
		}
	}
	// A statement slower than the inline wait (5 ms) gets a pump; most of
	// these get none. Half is the bound: on a loaded machine under -race
	// a trivial round trip sometimes takes longer than 5 ms, and with
	// inline answers broken every one of them gets a pump.
	got := srv.PumpsStarted() - p0
	t.Logf("%d pump goroutines for %d one-batch transactions", got, 2*n)
	if got > n {
		t.Errorf("%d pump goroutines for %d one-batch transactions, want most answered inline", got, 2*n)
	}

	p1 := srv.PumpsStarted()
	res, err := conn.Exec(ctx, "BEGIN; SELECT 1").ReadAll()
	if err != nil || len(res) != 2 {
		t.Fatalf("BEGIN: %v %v", res, err)
	}
	// The session goroutine starts the pump right after it forwarded
	// the answer, which the client may see first.
	for deadline := time.Now().Add(5 * time.Second); srv.PumpsStarted()-p1 < 1 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if got := srv.PumpsStarted() - p1; got != 1 {
		t.Errorf("an open transaction started %d pump goroutines, want 1 (its server must be read while the client is)", got)
	}
	if _, err := conn.Exec(ctx, "SELECT 2; COMMIT").ReadAll(); err != nil {
		t.Fatal(err)
	}

	p2 := srv.PumpsStarted()
	// While a statement slower than the inline wait runs, a pump goroutine
	// reads its server and the session goroutine watches its client. It
	// is a new pump, or, when the client sent the statement an instant
	// after its previous transaction's answer (before that pump released
	// the connection), the same pump going on with it.
	type answer struct {
		rows [][][]byte
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		r := conn.ExecParams(ctx, "SELECT pg_sleep(1), 7", nil, nil, nil, nil).Read()
		done <- answer{r.Rows, r.Err}
	}()
	time.Sleep(100 * time.Millisecond) // past the 5 ms inline wait
	sawPump := false
	for deadline := time.Now().Add(700 * time.Millisecond); !sawPump && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		sawPump = srv.PumpsRunning() > 0
	}
	r := <-done
	if r.err != nil || len(r.rows) != 1 || string(r.rows[0][1]) != "7" {
		t.Fatalf("slow statement: %v %v", r.rows, r.err)
	}
	if !sawPump {
		t.Error("no pump goroutine ran while a 1 s statement did (the session goroutine read the server past the inline wait)")
	}
	if got := srv.PumpsStarted() - p2; got > 1 {
		t.Errorf("a 1 s statement started %d pump goroutines, want at most 1", got)
	}
}
