package floor

import "net"

// servePool: one goroutine per client; a batch borrows a server connection
// from a channel and gives it back at ReadyForQuery 'I'.
func servePool(ln net.Listener, conns []net.Conn, params []byte) error {
	pool := make(chan net.Conn, len(conns))
	for _, c := range conns {
		pool <- c
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go poolClient(c, pool, params)
	}
}

func poolClient(c net.Conn, pool chan net.Conn, params []byte) {
	defer c.Close()
	if login(c, params) != nil {
		return
	}
	buf := make([]byte, 16384)
	sbuf := make([]byte, 16384)
	var s net.Conn // attached while a transaction is open
	for {
		n, err := c.Read(buf)
		if err != nil || isTerminate(buf[:n]) {
			if s != nil {
				s.Close() // an open transaction must not go back
			}
			return
		}
		if s == nil {
			s = <-pool
		}
		if _, err := s.Write(buf[:n]); err != nil {
			return // the server connection is lost with it
		}
		var scan rfqScanner
		status := byte(0)
		for status == 0 {
			m, err := s.Read(sbuf)
			if err != nil {
				return
			}
			c.Write(sbuf[:m]) // a vanished client still lets the server finish
			status = scan.feed(sbuf[:m])
		}
		if status == 'I' {
			pool <- s
			s = nil
		}
	}
}
