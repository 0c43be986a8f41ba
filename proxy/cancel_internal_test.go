package proxy

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/pgsluice/pgsluice/proxy/wire"
)

// Cancels for vanished clients are bounded: with maxVanishCancels on their
// way none is sent; with a slot free the CancelRequest carries the server
// connection's own key.
func TestCancelVanishedBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 16)
			_, err = io.ReadFull(c, buf)
			c.Close() // as PostgreSQL does once it has handled the request
			if err == nil {
				got <- buf
			}
		}
	}()
	s := &Server{log: slog.New(slog.DiscardHandler), vanishCancels: make(chan struct{}, maxVanishCancels)}
	b := &backend{pool: &pool{key: poolKey{addr: ln.Addr().String()}}, pid: 4242, secret: 99}

	for i := 0; i < maxVanishCancels; i++ {
		s.vanishCancels <- struct{}{}
	}
	if s.cancelVanished(b) {
		t.Fatal("a cancel was sent with every slot taken")
	}
	select {
	case <-got:
		t.Fatal("the listener received a cancel with every slot taken")
	case <-time.After(200 * time.Millisecond):
	}

	<-s.vanishCancels
	if !s.cancelVanished(b) {
		t.Fatal("no cancel sent with a slot free")
	}
	select {
	case req := <-got:
		if n, code := binary.BigEndian.Uint32(req[0:]), binary.BigEndian.Uint32(req[4:]); n != 16 || code != wire.CancelRequestCode {
			t.Fatalf("length %d code %d, want 16 and %d", n, code, wire.CancelRequestCode)
		}
		if pid, secret := binary.BigEndian.Uint32(req[8:]), binary.BigEndian.Uint32(req[12:]); pid != 4242 || secret != 99 {
			t.Fatalf("key %d/%d, want 4242/99", pid, secret)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cancel never arrived")
	}
	if n := len(s.vanishCancels); n != maxVanishCancels-1 {
		t.Fatalf("%d slots taken after the cancel, want %d (its slot given back)", n, maxVanishCancels-1)
	}
}
