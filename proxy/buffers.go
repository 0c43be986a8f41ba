package proxy

import (
	"bufio"
	"io"
	"sync"
	"syscall"

	"github.com/pgsluice/pgsluice/proxy/wire"
)

// Memory per idle client. A client's full-size reader and writer
// (wire.BufferSize each) come from process-wide pools and are held only
// while the session has something to read or write; a logged-in client
// that waits for its next query holds neither. The session goroutine then
// waits for the socket to become readable without a buffer (a
// non-blocking MSG_PEEK of one byte, then the netpoller), which costs the
// same syscalls as the blocking read it replaces: that read also returned
// EAGAIN once before parking.
//
// Under TLS the session keeps its reader (crypto/tls may hold decrypted
// bytes the socket no longer shows); the writer is pooled either way.

var (
	clientReaders = sync.Pool{New: func() any {
		return &pooledReader{r: bufio.NewReaderSize(nil, wire.BufferSize), raw: allocRawIO()}
	}}
	clientWriters = sync.Pool{New: func() any {
		return &pooledWriter{w: bufio.NewWriterSize(nil, wire.BufferSize), raw: allocRawIO()}
	}}
)

// pooledReader and pooledWriter are a pooled client buffer with the raw
// I/O (rawio_linux.go; nil elsewhere) it reads or writes through, bound to
// the client's socket while a session holds them. An idle client holds
// neither, so raw I/O costs it nothing.
type pooledReader struct {
	r   *bufio.Reader
	raw *rawIO
}

type pooledWriter struct {
	w   *bufio.Writer
	raw *rawIO
}

// source is what a pooled buffer of s reads or writes through: its raw
// I/O bound to the plain socket, else the connection (TLS, other systems).
func (s *session) source(raw *rawIO) io.ReadWriter {
	if raw != nil && s.rawc != nil {
		raw.rc = s.rawc
		return raw
	}
	return s.conn
}

// getReader takes a pooled reader for s.
func (s *session) getReader() {
	pr := clientReaders.Get().(*pooledReader)
	pr.r.Reset(s.source(pr.raw))
	s.r, s.rb = pr.r, pr
}

// putReader gives s's pooled reader back.
func (s *session) putReader() {
	pr := s.rb
	s.r, s.rb = nil, nil
	pr.r.Reset(nil)
	if pr.raw != nil {
		pr.raw.rc = nil
	}
	clientReaders.Put(pr)
}

// idleWriterSize is the buffer of the small writer a session keeps while
// it holds no pooled writer. The proxy's own paths take a pooled writer
// before writing (clientWriterLocked); the small one only keeps s.w valid
// for any other writer (FATAL messages are written straight through).
const idleWriterSize = 64

// clientWriterLocked makes s.w a full-size pooled writer (mu held). Every
// path that writes more than a FATAL message to the client calls it first.
func (s *session) clientWriterLocked() *bufio.Writer {
	if s.wPooled {
		return s.w
	}
	if s.w != nil && s.w.Buffered() > 0 {
		// Keep the byte order: whatever the small writer holds goes first.
		s.w.Flush()
	}
	if s.wSmall == nil {
		s.wSmall = s.w
	}
	pw := clientWriters.Get().(*pooledWriter)
	pw.w.Reset(s.source(pw.raw))
	s.w, s.wb = pw.w, pw
	s.wPooled = true
	return pw.w
}

// putClientWriterLocked gives the pooled writer back once it is empty
// (mu held).
func (s *session) putClientWriterLocked() {
	if !s.wPooled || s.w.Buffered() > 0 {
		return
	}
	s.dropWriterLocked()
}

// dropWriterLocked gives the pooled writer back, dropping what it holds
// (mu held).
func (s *session) dropWriterLocked() {
	pw := s.wb
	pw.w.Reset(nil)
	if pw.raw != nil {
		pw.raw.rc = nil
	}
	clientWriters.Put(pw)
	s.w, s.wb = s.wSmall, nil
	s.wPooled = false
}

// waitClient is called by the session goroutine when nothing of the
// client's is buffered. It gives the reader back, waits until the client
// socket is readable (or closed, or a deadline passed), and takes a reader
// again. The error is the wait's (a deadline set by Shutdown, a closed
// socket): the caller treats it like a failed read.
func (s *session) waitClient() error {
	if s.rawc == nil {
		if s.r == nil {
			s.r = bufio.NewReaderSize(s.conn, wire.BufferSize)
		}
		return nil
	}
	if s.r != nil {
		s.putReader()
	}
	s.peekCalls = 0
	err := s.rawc.Read(s.peekFn)
	s.waited = true
	if s.r == nil {
		s.getReader()
	}
	return err
}

// peekClient is the RawConn.Read callback of waitClient. Returning true
// ends the wait, which is always safe: the buffered read that follows is
// an ordinary blocking read. Returning false (wait for the poller) is
// safe only after the socket said EAGAIN in this same RawConn.Read, so
// that readiness cannot have been signalled already.
//
// With raw I/O (plain TCP on Linux) it reads instead of peeking: it takes
// a pooled reader, fills it with one read(2) and keeps it when that read
// returned anything (data, EOF, an error), or gives it back on EAGAIN and
// waits. A query already waiting then costs one system call instead of a
// peek and a read, and a waiting client still holds no reader.
//
// Not on the first wait after login: the read's frames (bufio, rawIO)
// inside the callback would grow a fresh goroutine's stack from 2 to
// 4 KiB, which a client that logs in and stays idle would keep (bench
// scenario 5; BenchmarkIdleClientMemory). Once the client has sent
// something, handling it has grown the stack beyond that anyway.
func (s *session) peekClient(fd uintptr) bool {
	if haveRawIO && s.waited {
		s.getReader()
		raw := s.rb.raw
		raw.trying, raw.tryFD = true, fd
		_, err := s.r.Peek(1)
		raw.trying = false
		if err == errWouldBlock {
			s.putReader()
			return false
		}
		// Data is buffered; EOF or an error comes again from the next
		// read (bufio hands an error out once).
		return true
	}
	s.peekCalls++
	if s.peekCalls > 1 {
		return true // woken by the netpoller
	}
	return peekReadable(fd)
}

// initClientBuffers prepares the buffer handling once the client is logged
// in: plain sockets get the wait-without-buffer path.
func (s *session) initClientBuffers() {
	if sc, ok := s.conn.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			s.rawc = rc
			s.peekFn = s.peekClient
		}
	}
}

// releaseClientBuffers returns the pooled buffers when the session ends
// (mu held; the pump has exited).
func (s *session) releaseClientBuffersLocked() {
	if s.wPooled {
		s.dropWriterLocked() // unflushed bytes are dropped: the client is gone
	}
	if s.r != nil && s.rawc != nil {
		s.putReader()
	}
}

// newStmtInfo returns a statement record for a Parse. The unnamed
// statement is replaced by nearly every extended-protocol query; its
// record (and the Parse bytes it keeps) is recycled from the one before
// last, which nothing references any more: s.unnamed is the last one and
// s.lastBound (a portal bound earlier may still be executed) is checked.
func (s *session) newStmtInfo(name string) *stmtInfo {
	if sp := s.unnamedSpare; name == "" && sp != nil && sp != s.lastBound && sp != s.unnamed {
		s.unnamedSpare = nil
		*sp = stmtInfo{parse: sp.parse[:0]}
		return sp
	}
	return &stmtInfo{name: name}
}

// recycleUnnamed keeps the unnamed statement being replaced for reuse by
// a later Parse (see newStmtInfo).
func (s *session) recycleUnnamed(old *stmtInfo) {
	if old != nil && cap(old.parse) <= 4096 {
		s.unnamedSpare = old
	}
}
