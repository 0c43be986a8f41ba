package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/pgsluice/pgsluice/proxy/wire"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// A session waiting for its client holds no reader; the message that
// wakes it is read whole, and the reader goes back when it waits again.
// Both ways of waiting are checked: the peek (outside Linux) and the
// read(2) into a pooled reader (raw I/O on Linux).
func TestWaitClientHoldsNoReader(t *testing.T) {
	modes := []bool{false}
	if runtime.GOOS == "linux" {
		modes = append(modes, true) // rawio_linux.go
	}
	for _, raw := range modes {
		name := "peek"
		if raw {
			name = "raw read"
		}
		t.Run(name, func(t *testing.T) { testWaitClient(t, raw) })
	}
}

func testWaitClient(t *testing.T, raw bool) {
	srv, cli := tcpPair(t)
	s := &session{conn: srv}
	s.initClientBuffers()
	// The first wait after login peeks, later ones read (peekClient):
	// pin the way under test.
	wait := func() error {
		s.waited = raw
		return s.waitClient()
	}
	if s.rawc == nil {
		t.Fatal("plain TCP client: no raw socket for the buffer-free wait")
	}
	for i, msg := range []string{"SELECT 1", "SELECT 2; SELECT 3"} {
		woke := make(chan error, 1)
		go func() { woke <- wait() }()
		select {
		case err := <-woke:
			t.Fatalf("round %d: waitClient returned before the client wrote: %v", i, err)
		case <-time.After(50 * time.Millisecond):
		}
		if _, err := cli.Write(wire.AppendHeader(nil, 'Q', len(msg)+1)); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Write(append([]byte(msg), 0)); err != nil {
			t.Fatal(err)
		}
		if err := <-woke; err != nil {
			t.Fatalf("round %d: waitClient: %v", i, err)
		}
		if s.r == nil {
			t.Fatalf("round %d: no reader after the wait", i)
		}
		if raw && (s.rb == nil || s.rb.raw == nil || s.rb.raw.rc == nil) {
			t.Fatalf("round %d: the pooled reader does not read through raw I/O", i)
		}
		typ, n, err := wire.PeekHeader(s.r, 1<<20)
		if err != nil || typ != 'Q' || n != len(msg)+1 {
			t.Fatalf("round %d: header %q %d %v", i, typ, n, err)
		}
		body, err := wire.ReadBody(s.r, n, &s.scratch)
		if err != nil || string(body[:len(body)-1]) != msg {
			t.Fatalf("round %d: body %q %v", i, body, err)
		}
	}
	// A message already waiting is read at once.
	if _, err := cli.Write(wire.AppendHeader(nil, 'S', 0)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if typ, _, err := wire.PeekHeader(s.r, 1<<20); err != nil || typ != 'S' {
		t.Fatalf("waiting message: %q %v", typ, err)
	}
	// The next wait gives the reader back before blocking.
	s.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	err := wait()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("wait past the read deadline (Shutdown uses it): %v, want deadline exceeded", err)
	}
	s.conn.SetReadDeadline(time.Time{})

	// A client that leaves wakes the wait; the read then sees EOF.
	cli.Close()
	if err := wait(); err != nil {
		t.Fatalf("waitClient after the client closed: %v", err)
	}
	if _, _, err := wire.PeekHeader(s.r, 1<<20); err != io.EOF {
		t.Fatalf("read after the client closed: %v, want EOF", err)
	}
}

// The full-size client writer is held only while bytes are buffered.
func TestClientWriterPooledWhileBusy(t *testing.T) {
	srv, cli := tcpPair(t)
	s := &session{conn: srv, w: bufio.NewWriterSize(srv, idleWriterSize)} // as newSession makes it
	small := s.w
	if small.Size() != idleWriterSize {
		t.Fatalf("new session writer has %d bytes, want the small %d", small.Size(), idleWriterSize)
	}
	s.mu.Lock()
	small.Write([]byte("ab")) // written by someone not using clientWriterLocked
	w := s.clientWriterLocked()
	if w == small || !s.wPooled || w.Size() != wire.BufferSize {
		t.Fatalf("clientWriterLocked: pooled=%v size=%d", s.wPooled, w.Size())
	}
	w.Write([]byte("cd"))
	if err := s.flushClientLocked(); err != nil {
		t.Fatal(err)
	}
	if s.wPooled || s.w != small {
		t.Fatal("the pooled writer was kept after a flush left it empty")
	}
	s.mu.Unlock()
	got := make([]byte, 4)
	if _, err := io.ReadFull(cli, got); err != nil || string(got) != "abcd" {
		t.Fatalf("client read %q %v, want the bytes in order", got, err)
	}
}
