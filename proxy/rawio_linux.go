//go:build linux

package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// Raw socket I/O on the hot path.
//
// net.Conn's Read and Write enter the Go runtime's blocking-syscall
// protocol (entersyscall/exitsyscall) even though the socket is
// non-blocking. On loopback a write runs the receiver's TCP stack inline
// and, on a machine shared with PostgreSQL and the clients, the thread is
// often preempted inside it: the runtime's monitor thread (sysmon) then
// finds the P "in a system call" for more than one of its 20 µs ticks,
// takes the P away and wakes another OS thread to run it, and keeps
// polling every 20 µs because it retook something. perf on connection
// churn put 28 % of pgsluice's CPU in sysmon's nanosleep alone, plus the
// futex wake-ups of the handoffs. PgBouncer's single thread has no such
// monitor.
//
// rawIO does the same non-blocking read(2)/write(2) with RawSyscall,
// which never lets go of the P, inside syscall.RawConn's Read/Write: the
// netpoller still parks the goroutine on EAGAIN and deadlines still apply
// (both live in the poll descriptor), so callers cannot tell the
// difference. The calls never block: the socket is non-blocking, so the
// longest a P is held is one loopback write.
type rawIO struct {
	rc syscall.RawConn
	// Read side (one reader at a time) and write side (one writer at a
	// time: the callers serialize, as for any net.Conn).
	rp      []byte
	rn      int
	rerr    syscall.Errno
	wp      []byte
	wn      int
	werr    syscall.Errno
	readFn  func(uintptr) bool
	writeFn func(uintptr) bool
	// trying: Read is being called from inside a RawConn.Read callback
	// on tryFD (session.tryClient) and must not wait: one read(2), and
	// errWouldBlock on EAGAIN.
	trying bool
	tryFD  uintptr
	// A bounded wait (boundWait): the read deadline is set only if the
	// socket is empty, when the read is about to park.
	conn    net.Conn
	bound   time.Duration
	bounded bool
}

// errWouldBlock is what a trying Read returns when the socket is empty.
var errWouldBlock = errors.New("would block")

// newRawIO returns raw I/O for a plain TCP connection, nil for anything
// else (TLS, unix sockets in tests): callers then use the net.Conn.
func newRawIO(c net.Conn) *rawIO {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	x := allocRawIO()
	x.rc = rc
	x.conn = c
	return x
}

// boundWait makes the next Read wait at most d for data: a read deadline
// d from the moment the socket is found empty. A bounded read that finds
// its data already there (about half of the inline waits under load)
// touches no deadline; setting and clearing one costs two runtime timer
// updates. endWait must follow the Read; it clears the deadline if one
// was set.
func (x *rawIO) boundWait(d time.Duration) { x.bound = d }

func (x *rawIO) endWait() {
	x.bound = 0
	if x.bounded {
		x.bounded = false
		x.conn.SetReadDeadline(time.Time{})
	}
}

// haveRawIO: the client's pooled buffers read and write through rawIO.
const haveRawIO = true

// allocRawIO returns a rawIO bound to no socket yet (set rc before use).
func allocRawIO() *rawIO {
	x := &rawIO{}
	x.readFn = x.readOnce
	x.writeFn = x.writeAll
	return x
}

func (x *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if x.trying {
		return x.tryRead(p)
	}
	x.rp, x.rn, x.rerr = p, 0, 0
	err := x.rc.Read(x.readFn) // closed socket, deadline: a *net.OpError
	n, errno := x.rn, x.rerr
	x.rp = nil
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readOnce is the RawConn.Read callback: false (wait for the poller) only
// on EAGAIN.
func (x *rawIO) readOnce(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&x.rp[0])), uintptr(len(x.rp)))
		switch e {
		case 0:
			x.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if x.bound > 0 && !x.bounded {
				// Inside RawConn.Read, before it parks: the wait that
				// follows sees the deadline.
				x.bounded = true
				x.conn.SetReadDeadline(time.Now().Add(x.bound))
			}
			return false
		default:
			x.rerr = e
			return true
		}
	}
}

// tryRead is Read inside a RawConn.Read callback: the fd is known and the
// poller must not be waited on (its lock is held).
func (x *rawIO) tryRead(p []byte) (int, error) {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, x.tryFD, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			if n == 0 {
				return 0, io.EOF
			}
			return int(n), nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, errWouldBlock
		default:
			return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", e)}
		}
	}
}

func (x *rawIO) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	x.wp, x.wn, x.werr = p, 0, 0
	err := x.rc.Write(x.writeFn)
	n, errno := x.wn, x.werr
	x.wp = nil
	switch {
	case err != nil:
		return n, err
	case errno != 0:
		return n, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", errno)}
	}
	return n, nil
}

// writeAll is the RawConn.Write callback: it writes until everything is
// written (true), the socket is full (false: wait for the poller, then
// go on) or an error.
func (x *rawIO) writeAll(fd uintptr) bool {
	for x.wn < len(x.wp) {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&x.wp[x.wn])), uintptr(len(x.wp)-x.wn))
		switch e {
		case 0:
			x.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			x.werr = e
			return true
		}
	}
	return true
}

// peekReadable reports whether fd has data or EOF (or an error) pending:
// a non-blocking recv of one byte with MSG_PEEK, as a raw system call
// (see rawIO).
func peekReadable(fd uintptr) bool {
	var buf [1]byte
	_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return e != syscall.EAGAIN
}
