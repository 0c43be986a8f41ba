package floor

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsluice/pgsluice/deploy/local"
)

// frames builds a server answer: each element is one frame (type, body).
func frames(fs ...string) []byte {
	var b []byte
	for _, f := range fs {
		b = append(b, frame(f[0], []byte(f[1:]))...)
	}
	return b
}

// TestRFQScanner feeds answers cut at every byte position (and byte by
// byte) and checks which ReadyForQuery statuses come out.
func TestRFQScanner(t *testing.T) {
	cases := []struct {
		name   string
		stream []byte
		want   []byte // statuses, in order
	}{
		{"select in autocommit", frames("1", "2", "T\x00\x01x", "D\x00\x01\x00\x00\x00\x011", "CSELECT 1\x00", "ZI"), []byte("I")},
		{"begin, then commit", frames("CBEGIN\x00", "ZT", "CCOMMIT\x00", "ZI"), []byte("TI")},
		{"failed transaction", frames("EERROR\x00", "ZE"), []byte("E")},
		{"a row that spells Z I", frames("DZ\x00\x00\x00\x05I", "ZI"), []byte("I")},
		{"no ReadyForQuery", frames("CSELECT 1\x00"), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			run := func(chunks [][]byte) []byte {
				var s rfqScanner
				var got []byte
				for _, ch := range chunks {
					if st := s.feed(ch); st != 0 {
						got = append(got, st)
					}
				}
				return got
			}
			var bytewise [][]byte
			for i := range c.stream {
				bytewise = append(bytewise, c.stream[i:i+1])
			}
			if got := run(bytewise); !bytes.Equal(got, c.want) {
				t.Errorf("byte by byte: statuses %q, want %q", got, c.want)
			}
			// One cut: a read holds at most the last status of the
			// ReadyForQuery frames that end in it.
			for cut := 0; cut <= len(c.stream); cut++ {
				got := run([][]byte{c.stream[:cut], c.stream[cut:]})
				if len(c.want) > 0 && (len(got) == 0 || got[len(got)-1] != c.want[len(c.want)-1]) {
					t.Errorf("cut at %d: statuses %q, want the last to be %q", cut, got, c.want[len(c.want)-1:])
				}
				if len(c.want) == 0 && len(got) > 0 {
					t.Errorf("cut at %d: statuses %q, want none", cut, got)
				}
			}
		})
	}
}

// TestModels runs every model in front of a real PostgreSQL: concurrent
// clients on a smaller pool, both protocols, an answer larger than one
// read, a transaction kept on one server connection, and a client that
// leaves inside a transaction without leaving it open.
func TestModels(t *testing.T) {
	sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
	defer scancel()
	cl, err := local.Start(sctx, local.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("local cluster: %v", err)
	}
	defer cl.Stop()
	serverDSN := cl.Primary.DSN(local.AppUser, local.AppPassword, local.AppDatabase)

	for _, m := range Models {
		t.Run(string(m), func(t *testing.T) {
			// A model of its own time: one that hangs fails alone.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			served := make(chan error, 1)
			go func() { served <- Serve(ctx, ln, m, serverDSN, 3) }()
			dsn := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", local.AppUser, local.AppPassword, ln.Addr(), local.AppDatabase)
			connect := func() *pgconn.PgConn {
				t.Helper()
				var c *pgconn.PgConn
				var err error
				for i := 0; i < 50; i++ { // the pool logs in after Listen
					select {
					case serr := <-served:
						served <- serr
						t.Fatalf("%s stopped serving: %v", m, serr)
					default:
					}
					cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
					c, err = pgconn.Connect(cctx, dsn)
					ccancel()
					if err == nil {
						return c
					}
					time.Sleep(100 * time.Millisecond)
				}
				t.Fatalf("connect through %s: %v", m, err)
				return nil
			}
			one := func(c *pgconn.PgConn, sql string) string {
				t.Helper()
				res, err := c.Exec(ctx, sql).ReadAll()
				if err != nil || len(res) == 0 || res[len(res)-1].Err != nil || len(res[len(res)-1].Rows) != 1 {
					t.Fatalf("%s: %v %+v", sql, err, res)
				}
				return string(res[len(res)-1].Rows[0][0])
			}

			var wg sync.WaitGroup
			errs := make(chan error, 12)
			for i := 0; i < 12; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := connect()
					defer c.Close(ctx)
					for j := 0; j < 15; j++ {
						n := i*100 + j
						res, err := c.Exec(ctx, "SELECT "+strconv.Itoa(n)).ReadAll()
						if err != nil || len(res) != 1 || string(res[0].Rows[0][0]) != strconv.Itoa(n) {
							errs <- fmt.Errorf("client %d simple %d: %v %+v", i, n, err, res)
							return
						}
						r := c.ExecParams(ctx, "SELECT $1::int + 1", [][]byte{[]byte(strconv.Itoa(n))}, nil, nil, nil).Read()
						if r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][0]) != strconv.Itoa(n+1) {
							errs <- fmt.Errorf("client %d extended %d: %v %+v", i, n, r.Err, r.Rows)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}

			c := connect()
			defer c.Close(ctx)
			if got := one(c, "SELECT length(repeat('x', 100000) || 'y')"); got != "100001" {
				t.Errorf("length = %s", got)
			}
			if got := one(c, "SELECT repeat('ab', 50000)"); got != string(bytes.Repeat([]byte("ab"), 50000)) {
				t.Errorf("a 100 kB answer came back as %d bytes", len(got))
			}
			one(c, "BEGIN; SELECT 1")
			x1 := one(c, "SELECT txid_current()")
			x2 := one(c, "SELECT txid_current()")
			one(c, "COMMIT; SELECT 1")
			if x1 != x2 {
				t.Errorf("a transaction moved between server connections: txid %s then %s", x1, x2)
			}

			if m == ModelLoop {
				// A server connection that dies while idle leaves the
				// pool: three clients on the pool of three keep working.
				// The newest idle sessions of app are this loop's (the
				// earlier models' connections are older).
				if got := one(c, `SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity
					WHERE usename = 'app' AND pid <> pg_backend_pid() AND state = 'idle'
					ORDER BY backend_start DESC LIMIT 1`); got != "true" {
					t.Fatalf("pg_terminate_backend = %s", got)
				}
				time.Sleep(500 * time.Millisecond) // the loop reads the EOF at once
				var wg sync.WaitGroup
				for i := 0; i < 3; i++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						qc := connect()
						defer qc.Close(ctx)
						for j := 0; j < 10; j++ {
							qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
							res, err := qc.Exec(qctx, "SELECT 1").ReadAll()
							qcancel()
							if err != nil || len(res) != 1 || res[0].Err != nil {
								t.Errorf("after a server connection died: client %d query %d: %v", i, j, err)
								return
							}
						}
					}()
				}
				wg.Wait()
			}

			// A client that leaves holding a transaction-level lock.
			leaver := connect()
			one(leaver, "BEGIN; SELECT pg_advisory_xact_lock(4242)::text")
			leaver.Close(ctx)
			deadline := time.Now().Add(10 * time.Second)
			for one(c, "SELECT pg_try_advisory_xact_lock(4242)") != "t" {
				if time.Now().After(deadline) {
					t.Fatal("the lock of a client that left inside a transaction is still held: its transaction stayed open")
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// FuzzRFQScanner: any bytes, cut anywhere, never panic, and the last
// status seen does not depend on where the stream was cut.
func FuzzRFQScanner(f *testing.F) {
	f.Add(frames("CBEGIN\x00", "ZT", "CCOMMIT\x00", "ZI"), uint16(3), uint16(9))
	f.Add(frames("DZ\x00\x00\x00\x05I", "ZI"), uint16(1), uint16(7))
	f.Add([]byte("Z\x00\x00\x00\x02Z\x00\x00\x00\x05E"), uint16(0), uint16(5))
	f.Fuzz(func(t *testing.T, stream []byte, a, b uint16) {
		last := func(chunks ...[]byte) byte {
			var s rfqScanner
			var st byte
			for _, ch := range chunks {
				if v := s.feed(ch); v != 0 {
					st = v
				}
			}
			return st
		}
		i, j := int(a)%(len(stream)+1), int(b)%(len(stream)+1)
		if i > j {
			i, j = j, i
		}
		whole := last(stream)
		if got := last(stream[:i], stream[i:j], stream[j:]); got != whole {
			t.Fatalf("cut at %d and %d: last status %q, whole stream %q", i, j, got, whole)
		}
	})
}
