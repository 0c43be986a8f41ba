//go:build linux

package floor

import (
	"net"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"unsafe"
)

// loopRawWait is how long, in milliseconds, the loop waits in epoll_wait
// while holding its P (a raw system call the scheduler does not see)
// before it falls back to the runtime-aware wait. It bounds how long a
// stop-the-world of the garbage collector can be held up by an idle loop.
const loopRawWait = 10

type loopClient struct {
	fd    int
	batch []byte      // a batch waiting for a server connection
	srv   *loopServer // attached while a batch runs or a transaction is open
}

type loopServer struct {
	fd   int
	cl   *loopClient // nil once its client has gone
	busy bool        // a batch was sent and its ReadyForQuery is due
	scan rfqScanner
}

// loop is one event loop: everything but the map of descriptors (which the
// login goroutines add to) is owned by the loop's thread.
type loop struct {
	epfd    int
	stop    [2]int // a pipe: Serve writes to stop[1] when the listener closes
	mu      sync.Mutex
	clients map[int]*loopClient
	servers map[int]*loopServer
	idle    []*loopServer
	waiting []*loopClient
}

// serveLoop: logins run on goroutines; once logged in, a client's socket is
// handed to the loop, which does everything else on one locked thread.
func serveLoop(ln net.Listener, conns []net.Conn, params []byte) error {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	l := &loop{epfd: epfd, clients: map[int]*loopClient{}, servers: map[int]*loopServer{}}
	for _, c := range conns {
		fd, err := detach(c)
		if err != nil {
			return err
		}
		s := &loopServer{fd: fd}
		l.servers[fd] = s
		l.idle = append(l.idle, s)
		if err := l.watch(fd); err != nil {
			return err
		}
	}
	if err := syscall.Pipe2(l.stop[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return err
	}
	if err := l.watch(l.stop[0]); err != nil {
		return err
	}
	go l.run()
	err = acceptDetached(ln, params, func(fd int) {
		l.mu.Lock()
		l.clients[fd] = &loopClient{fd: fd}
		l.mu.Unlock()
		if l.watch(fd) != nil {
			l.mu.Lock()
			delete(l.clients, fd)
			l.mu.Unlock()
			syscall.Close(fd)
		}
	})
	syscall.Write(l.stop[1], []byte{0})
	return err
}

// acceptDetached accepts clients until ln fails; each logs in on a
// goroutine of its own, which then calls serve with the client's socket
// detached from the Go runtime.
func acceptDetached(ln net.Listener, params []byte, serve func(fd int)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			if login(c, params) != nil {
				c.Close()
				return
			}
			if fd, err := detach(c); err == nil {
				serve(fd)
			}
		}()
	}
}

// detach takes a connection's socket out of the Go runtime: a duplicate
// descriptor in non-blocking mode, the net.Conn closed.
func detach(c net.Conn) (int, error) {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	rc.Control(func(f uintptr) { fd, derr = syscall.Dup(int(f)) })
	c.Close()
	if derr != nil {
		return -1, derr
	}
	syscall.CloseOnExec(fd)
	return fd, syscall.SetNonblock(fd, true)
}

func (l *loop) watch(fd int) error {
	return syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, fd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fd)})
}

func (l *loop) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	evs := make([]syscall.EpollEvent, 256)
	buf := make([]byte, 16384)
	for {
		n := l.wait(evs)
		for i := 0; i < n; i++ {
			fd := int(evs[i].Fd)
			if fd == l.stop[0] {
				l.shutdown()
				return
			}
			l.mu.Lock()
			c, s := l.clients[fd], l.servers[fd]
			l.mu.Unlock()
			switch {
			case c != nil:
				l.fromClient(c, buf)
			case s != nil:
				l.fromServer(s, buf)
			}
		}
	}
}

// wait returns ready events: a raw epoll_wait holding the P for up to
// loopRawWait ms (the common case under load costs no scheduler work),
// then the runtime-aware blocking wait.
func (l *loop) wait(evs []syscall.EpollEvent) int {
	r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_WAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), loopRawWait, 0, 0)
	if e == 0 && r > 0 {
		return int(r)
	}
	n, err := syscall.EpollWait(l.epfd, evs, -1)
	if err != nil {
		return 0
	}
	return n
}

func (l *loop) fromClient(c *loopClient, buf []byte) {
	n, err := rawRead(c.fd, buf)
	if err == syscall.EAGAIN {
		return
	}
	if err != nil || n == 0 || isTerminate(buf[:n]) {
		l.closeClient(c)
		return
	}
	if s := c.srv; s != nil {
		s.busy = true
		rawWriteAll(s.fd, buf[:n])
		return
	}
	c.batch = append(c.batch, buf[:n]...)
	if len(c.batch) > n {
		return // already waiting for a server connection
	}
	if k := len(l.idle); k > 0 {
		s := l.idle[k-1]
		l.idle = l.idle[:k-1]
		l.assign(s, c)
		return
	}
	l.waiting = append(l.waiting, c)
}

func (l *loop) fromServer(s *loopServer, buf []byte) {
	n, err := rawRead(s.fd, buf)
	if err == syscall.EAGAIN {
		return
	}
	if err != nil || n == 0 {
		// Lost (the server stopped): the pool shrinks by one, and its
		// client, if any, is closed.
		forget(&l.mu, l.servers, l.epfd, s.fd)
		l.idle = slices.DeleteFunc(l.idle, func(x *loopServer) bool { return x == s })
		if c := s.cl; c != nil && c.fd >= 0 {
			c.srv = nil
			l.closeClient(c)
		}
		return
	}
	if c := s.cl; c != nil && c.fd >= 0 {
		rawWriteAll(c.fd, buf[:n])
	}
	switch st := s.scan.feed(buf[:n]); {
	case st == 'I':
		l.release(s)
	case st != 0 && s.cl == nil:
		// Its client left inside a transaction.
		rollback(s)
	case st != 0:
		s.busy = false
	}
}

func (l *loop) assign(s *loopServer, c *loopClient) {
	s.cl, c.srv, s.busy = c, s, true
	rawWriteAll(s.fd, c.batch)
	c.batch = c.batch[:0]
}

func (l *loop) release(s *loopServer) {
	if c := s.cl; c != nil {
		c.srv = nil
	}
	s.cl = nil
	for len(l.waiting) > 0 {
		c := l.waiting[0]
		l.waiting = l.waiting[1:]
		if c.fd >= 0 {
			l.assign(s, c)
			return
		}
	}
	l.idle = append(l.idle, s)
}

// forget closes fd after taking it out of m (under mu) and out of the
// epoll instance: out of the map before the number is free for a new
// login.
func forget[V any](mu *sync.Mutex, m map[int]V, epfd, fd int) {
	mu.Lock()
	delete(m, fd)
	mu.Unlock()
	syscall.EpollCtl(epfd, syscall.EPOLL_CTL_DEL, fd, nil)
	syscall.Close(fd)
}

func (l *loop) closeClient(c *loopClient) {
	forget(&l.mu, l.clients, l.epfd, c.fd)
	c.fd = -1
	if s := c.srv; s != nil {
		// Mid-batch, fromServer decides at the ReadyForQuery; idle in
		// a transaction, roll back now.
		s.cl = nil
		if !s.busy {
			rollback(s)
		}
	}
}

// rollback ends the open transaction of a server whose client has gone;
// the answer's ReadyForQuery 'I' releases the connection.
func rollback(s *loopServer) {
	s.busy = true
	rawWriteAll(s.fd, rollbackQuery)
}

var rollbackQuery = frame('Q', []byte("ROLLBACK\x00"))

// shutdown closes every socket, the epoll instance and the pipe.
func (l *loop) shutdown() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for fd := range l.clients {
		syscall.Close(fd)
	}
	for fd := range l.servers {
		syscall.Close(fd)
	}
	clear(l.clients)
	clear(l.servers)
	syscall.Close(l.epfd)
	syscall.Close(l.stop[0])
	syscall.Close(l.stop[1])
}

func rawRead(fd int, p []byte) (int, error) {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

// rawWriteAll writes p, spinning on EAGAIN: a floor for small answers, not
// a way to treat a slow client.
func rawWriteAll(fd int, p []byte) {
	for len(p) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			p = p[n:]
		case syscall.EAGAIN, syscall.EINTR:
		default:
			return
		}
	}
}
