package floor

import "net"

// serveCopy: two goroutines per client and a server connection of its own.
func serveCopy(ln net.Listener, server string) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			s, err := net.Dial("tcp", server)
			if err != nil {
				c.Close()
				return
			}
			go pipe(s, c)
			pipe(c, s)
		}()
	}
}

func pipe(dst, src net.Conn) {
	buf := make([]byte, 16384)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}
