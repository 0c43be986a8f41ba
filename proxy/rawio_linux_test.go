//go:build linux

package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestRawIO checks that raw socket I/O behaves as net.Conn's does for
// everything the proxy relies on: data both ways, writes larger than the
// socket buffer, EOF, deadlines, a closed socket and a reset.
func TestRawIO(t *testing.T) {
	if x := newRawIO(nil); x != nil {
		t.Fatal("newRawIO(nil) should be nil")
	}

	t.Run("round trip and big write", func(t *testing.T) {
		a, b := tcpPair(t)
		x := newRawIO(a)
		if x == nil {
			t.Fatal("newRawIO of a TCP connection is nil")
		}
		// 8 MiB is far beyond the socket buffers: the write must wait
		// for the poller and go on until all of it is written.
		want := bytes.Repeat([]byte("0123456789abcdef"), 1<<19)
		done := make(chan error, 1)
		go func() {
			n, err := x.Write(want)
			if err == nil && n != len(want) {
				err = io.ErrShortWrite
			}
			done <- err
		}()
		got := make([]byte, len(want))
		time.Sleep(50 * time.Millisecond) // let the writer fill the socket
		if _, err := io.ReadFull(b, got); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("write: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("bytes differ after the big write")
		}
		if _, err := b.Write([]byte("pong")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 16)
		n, err := io.ReadAtLeast(x, buf, 4)
		if err != nil || string(buf[:n]) != "pong" {
			t.Fatalf("read %q, %v; want pong", buf[:n], err)
		}
		if n, err := x.Read(nil); n != 0 || err != nil {
			t.Fatalf("empty read: %d, %v", n, err)
		}
	})

	t.Run("EOF", func(t *testing.T) {
		a, b := tcpPair(t)
		x := newRawIO(a)
		b.Write([]byte("x"))
		b.Close()
		buf := make([]byte, 4)
		if n, err := x.Read(buf); n != 1 || err != nil {
			t.Fatalf("first read: %d, %v", n, err)
		}
		if _, err := x.Read(buf); err != io.EOF {
			t.Fatalf("read after close: %v, want io.EOF", err)
		}
	})

	t.Run("deadline", func(t *testing.T) {
		a, _ := tcpPair(t)
		x := newRawIO(a)
		a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		start := time.Now()
		_, err := x.Read(make([]byte, 4))
		if !errors.Is(err, os.ErrDeadlineExceeded) || !isNetErr(err) {
			t.Fatalf("read past deadline: %v", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("deadline not honoured")
		}
		// The same socket reads again once the deadline is cleared.
		a.SetReadDeadline(time.Time{})
	})

	// boundWait: an empty socket times out after the bound; data already
	// there is read with no deadline set; endWait leaves none behind.
	t.Run("bounded wait", func(t *testing.T) {
		a, b := tcpPair(t)
		x := newRawIO(a)
		buf := make([]byte, 4)

		x.boundWait(30 * time.Millisecond)
		start := time.Now()
		// Without the bound the read would wait forever: data after 5 s
		// ends it and fails the test instead.
		rescue := time.AfterFunc(5*time.Second, func() { b.Write([]byte("none")) })
		_, err := x.Read(buf)
		rescue.Stop()
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("bounded read of an empty socket: %v, want a timeout", err)
		}
		if d := time.Since(start); d < 25*time.Millisecond || d > 5*time.Second {
			t.Fatalf("bounded read returned after %v, want about 30ms", d)
		}
		if !x.bounded {
			t.Fatal("a wait that parked set no deadline")
		}
		x.endWait()
		if x.bounded || x.bound != 0 {
			t.Fatal("endWait left the bound set")
		}

		// Data already there: read at once, no deadline touched.
		b.Write([]byte("abcd"))
		time.Sleep(20 * time.Millisecond)
		x.boundWait(time.Nanosecond) // would time out at once if set
		if n, err := x.Read(buf); n != 4 || err != nil {
			t.Fatalf("bounded read with data waiting: %d, %v", n, err)
		}
		if x.bounded {
			t.Fatal("a read that found data set a deadline")
		}
		x.endWait()

		// No deadline is left behind: a later unbounded read waits for
		// data arriving after 100 ms, well past both bounds.
		go func() {
			time.Sleep(100 * time.Millisecond)
			b.Write([]byte("late"))
		}()
		if n, err := x.Read(buf); n != 4 || err != nil || string(buf) != "late" {
			t.Fatalf("unbounded read after endWait: %q, %v", buf[:n], err)
		}
	})

	t.Run("closed while reading", func(t *testing.T) {
		a, _ := tcpPair(t)
		x := newRawIO(a)
		done := make(chan error, 1)
		go func() {
			_, err := x.Read(make([]byte, 4))
			done <- err
		}()
		time.Sleep(20 * time.Millisecond)
		a.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) || !isNetErr(err) {
				t.Fatalf("read on closed socket: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("read did not return after Close")
		}
	})

	t.Run("reset", func(t *testing.T) {
		a, b := tcpPair(t)
		x := newRawIO(a)
		b.(*net.TCPConn).SetLinger(0) // close sends RST
		b.Close()
		time.Sleep(20 * time.Millisecond)
		var err error
		for i := 0; i < 10 && err == nil; i++ {
			_, err = x.Write([]byte("after reset"))
			time.Sleep(10 * time.Millisecond)
		}
		if err == nil || !isNetErr(err) {
			t.Fatalf("write to a reset socket: %v, want a net error", err)
		}
	})

	t.Run("peek", func(t *testing.T) {
		a, b := tcpPair(t)
		rc, _ := a.(*net.TCPConn).SyscallConn()
		peek := func() (ready bool) {
			rc.Control(func(fd uintptr) { ready = peekReadable(fd) })
			return
		}
		if peek() {
			t.Fatal("empty socket reported readable")
		}
		b.Write([]byte("y"))
		time.Sleep(20 * time.Millisecond)
		if !peek() {
			t.Fatal("socket with data reported not readable")
		}
		buf := make([]byte, 1)
		if _, err := a.Read(buf); err != nil || buf[0] != 'y' {
			t.Fatalf("peek consumed the byte: %q, %v", buf, err)
		}
	})
}
