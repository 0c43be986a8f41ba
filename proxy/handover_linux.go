package proxy

import (
	"net"
	"syscall"
	"unsafe"
)

// SO_REUSEPORT and SO_ATTACH_REUSEPORT_CBPF (asm-generic/socket.h, the
// values of every architecture Go supports on Linux but mips, sparc and
// parisc); the syscall package names neither.
const (
	soReuseport           = 15
	soAttachReuseportCBPF = 51
)

// reuseportControl sets SO_REUSEPORT before bind, and the options every
// accepted client socket should have (listenerOptions).
func reuseportControl(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soReuseport, 1)
		for _, o := range listenerOptions {
			if serr == nil {
				serr = syscall.SetsockoptInt(int(fd), o.level, o.name, o.value)
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// listenerOptions are set once on the listening socket. Linux copies a
// listener's socket options to each socket it accepts, so a new client
// costs no setsockopt for them. Go would otherwise set keepalive on every
// accepted connection (four setsockopt calls, each a blocking system call
// to the Go scheduler, which wakes its monitor thread when the process was
// idle): Listen turns that off (ListenConfig.KeepAlive < 0). The values
// are Go's defaults: first probe after 15 s idle, then every 15 s, 9
// probes. (TCP_NODELAY is set by Go's Accept itself.)
var listenerOptions = []struct{ level, name, value int }{
	{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
	{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, 15},
	{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, 15},
	{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, 9},
}

// listenKeepAlive is ListenConfig.KeepAlive for Listen: negative, because
// the accepted sockets inherit keepalive from the listener.
const listenKeepAlive = -1

// steerToNewest attaches to ln's reuseport group a program that picks
// socket 1: the newer of two processes during a handover, out of range
// (hence the kernel's hash) otherwise.
func steerToNewest(ln net.Listener) error {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return nil
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return err
	}
	prog := []syscall.SockFilter{{Code: 0x06 /* BPF_RET|BPF_K */, K: 1}}
	fprog := syscall.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	var serr error
	err = rc.Control(func(fd uintptr) {
		_, _, e := syscall.Syscall6(syscall.SYS_SETSOCKOPT, fd, syscall.SOL_SOCKET, soAttachReuseportCBPF,
			uintptr(unsafe.Pointer(&fprog)), unsafe.Sizeof(fprog), 0)
		if e != 0 {
			serr = e
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return &net.OpError{Op: "setsockopt SO_ATTACH_REUSEPORT_CBPF", Net: "tcp", Addr: ln.Addr(), Err: serr}
	}
	return nil
}

// acceptQueueLen returns the number of connections waiting in ln's accept
// queue (tcpi_unacked of a listening socket), or -1 if unknown.
func acceptQueueLen(ln net.Listener) int {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return -1
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return -1
	}
	var info syscall.TCPInfo
	n := -1
	rc.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(info))
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
		if e == 0 {
			n = int(info.Unacked)
		}
	})
	return n
}
