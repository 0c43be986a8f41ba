//go:build linux

package floor

import (
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// ModelPark keeps ModelPool's code shape (a goroutine per client that
// reads, borrows a server connection from a channel, writes and reads the
// answer) but takes the sockets away from the Go runtime's netpoller: a
// goroutine that finds a socket empty parks on the socket's channel, and
// one poller goroutine, woken through the runtime when its own epoll
// instance has events, wakes every parked goroutine whose socket is ready
// in one pass. It measures whether batching the wake-ups, without an
// event loop's callback-style code, is what makes the loop cheap.

// parkFD is a detached socket; state is parkNone, parkReady (an edge came
// while nobody waited) or parkWaiting (a goroutine sleeps on wake).
type parkFD struct {
	fd    int
	state atomic.Int32
	wake  chan struct{}
}

const (
	parkNone int32 = iota
	parkReady
	parkWaiting
)

// wait returns when the socket may have data: at once if an edge came
// since the last wait, else when the poller sees one.
func (p *parkFD) wait() {
	for {
		switch p.state.Load() {
		case parkReady:
			if p.state.CompareAndSwap(parkReady, parkNone) {
				return
			}
		case parkNone:
			if p.state.CompareAndSwap(parkNone, parkWaiting) {
				<-p.wake
				return
			}
		}
	}
}

// notify is the poller's half of wait.
func (p *parkFD) notify() {
	for {
		s := p.state.Load()
		if s == parkWaiting {
			if p.state.CompareAndSwap(parkWaiting, parkNone) {
				p.wake <- struct{}{}
				return
			}
			continue
		}
		if p.state.CompareAndSwap(s, parkReady) {
			return
		}
	}
}

// read reads at least one byte (or fails), parking while the socket is
// empty.
func (p *parkFD) read(buf []byte) (int, error) {
	for {
		n, err := rawRead(p.fd, buf)
		if err != syscall.EAGAIN {
			return n, err
		}
		p.wait()
	}
}

type parkPoller struct {
	epfd int
	ep   *os.File // epfd, watched by the runtime's netpoller
	mu   sync.Mutex
	fds  map[int]*parkFD
}

func newParkPoller() (*parkPoller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	// Non-blocking, so that os.NewFile hands it to the runtime's poller:
	// an epoll instance is readable while it has events.
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return nil, err
	}
	return &parkPoller{epfd: epfd, ep: os.NewFile(uintptr(epfd), "epoll"), fds: map[int]*parkFD{}}, nil
}

// add registers fd; on error fd is closed.
func (pl *parkPoller) add(fd int) (*parkFD, error) {
	p := &parkFD{fd: fd, wake: make(chan struct{}, 1)}
	pl.mu.Lock()
	pl.fds[fd] = p
	pl.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | -syscall.EPOLLET, Fd: int32(fd)}
	if err := syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		pl.remove(p)
		return nil, err
	}
	return p, nil
}

func (pl *parkPoller) remove(p *parkFD) { forget(&pl.mu, pl.fds, pl.epfd, p.fd) }

// run: the poller goroutine. The runtime wakes it when the epoll instance
// becomes readable; it takes every ready event in one epoll_wait and wakes
// their goroutines.
func (pl *parkPoller) run() {
	rc, err := pl.ep.SyscallConn()
	if err != nil {
		return
	}
	evs := make([]syscall.EpollEvent, 256)
	n := 0
	poll := func(fd uintptr) bool {
		r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_WAIT, fd, uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), 0, 0, 0)
		if e != 0 {
			n = 0
			return e != syscall.EINTR && e != syscall.EAGAIN
		}
		n = int(r)
		return n > 0
	}
	for {
		if err := rc.Read(poll); err != nil {
			return
		}
		pl.mu.Lock()
		for _, ev := range evs[:n] {
			if p := pl.fds[int(ev.Fd)]; p != nil {
				p.notify()
			}
		}
		pl.mu.Unlock()
	}
}

// servePark: ModelPool's goroutines on the poller above.
func servePark(ln net.Listener, conns []net.Conn, params []byte) error {
	pl, err := newParkPoller()
	if err != nil {
		return err
	}
	pool := make(chan *parkFD, len(conns))
	for _, c := range conns {
		fd, err := detach(c)
		if err != nil {
			return err
		}
		p, err := pl.add(fd)
		if err != nil {
			return err
		}
		pool <- p
	}
	go pl.run()
	return acceptDetached(ln, params, func(fd int) {
		if p, err := pl.add(fd); err == nil { // add closes fd when it fails
			parkClient(pl, p, pool)
		}
	})
}

func parkClient(pl *parkPoller, c *parkFD, pool chan *parkFD) {
	defer pl.remove(c)
	buf := make([]byte, 16384)
	sbuf := make([]byte, 16384)
	var s *parkFD // attached while a transaction is open
	for {
		n, err := c.read(buf)
		if err != nil || n == 0 || isTerminate(buf[:n]) {
			if s != nil {
				pl.remove(s) // an open transaction must not go back
			}
			return
		}
		if s == nil {
			s = <-pool
		}
		rawWriteAll(s.fd, buf[:n])
		var scan rfqScanner
		status := byte(0)
		for status == 0 {
			m, err := s.read(sbuf)
			if err != nil || m == 0 {
				pl.remove(s)
				return // the server connection is lost with it
			}
			rawWriteAll(c.fd, sbuf[:m]) // a vanished client still lets the server finish
			status = scan.feed(sbuf[:m])
		}
		if status == 'I' {
			pool <- s
			s = nil
		}
	}
}
