//go:build !linux

package floor

import (
	"errors"
	"net"
)

func serveLoop(ln net.Listener, conns []net.Conn, params []byte) error {
	return errors.New("floor: the loop model needs Linux (epoll)")
}

func servePark(ln net.Listener, conns []net.Conn, params []byte) error {
	return errors.New("floor: the park model needs Linux (epoll)")
}
