//go:build !linux

package proxy

import (
	"errors"
	"net"
	"syscall"
	"time"
)

// Outside Linux the hot path uses net.Conn's own Read and Write (see
// rawio_linux.go for why Linux does not).

type rawIO struct {
	net.Conn
	rc     syscall.RawConn
	trying bool
	tryFD  uintptr
}

var errWouldBlock = errors.New("would block")

func newRawIO(c net.Conn) *rawIO { return nil }

func (x *rawIO) boundWait(d time.Duration) {}
func (x *rawIO) endWait()                  {}

const haveRawIO = false

func allocRawIO() *rawIO { return nil }

// peekReadable reports whether fd has data or EOF (or an error) pending.
func peekReadable(fd uintptr) bool {
	var buf [1]byte
	_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return !(err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
}
