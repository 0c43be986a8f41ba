package local

import (
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestChildOutlivesThreadThatStartedIt: Linux sends a child's parent-death
// signal when the thread that forked it exits, not the process. A Go thread
// exits when a goroutine ends while locked to it (runtime.LockOSThread), so
// without care any locked goroutine elsewhere in a test process could take
// the cluster's servers down with it. The child here is started from such a
// goroutine, whose thread then exits; it must still be running.
func TestChildOutlivesThreadThatStartedIt(t *testing.T) {
	// Locked here, this goroutine's thread cannot run the starter below.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var p *proc
	for attempt := 0; p == nil && attempt < 20; attempt++ {
		started := make(chan *proc, 1)
		go func() {
			runtime.LockOSThread()
			if syscall.Gettid() == os.Getpid() {
				// The main thread never exits (Go parks it instead):
				// it would prove nothing. Try again on another.
				runtime.UnlockOSThread()
				started <- nil
				return
			}
			// Never unlocked: this thread exits with the goroutine.
			p, err := startProc(nil, syscall.SIGKILL, &logSink{}, "", t.TempDir(), "sleep", "30")
			if err != nil {
				t.Errorf("start sleep: %v", err)
			}
			started <- p
		}()
		p = <-started
	}
	if p == nil {
		t.Fatal("no child started from a thread other than the main one")
	}
	defer p.stop(syscall.SIGKILL, time.Second)
	select {
	case <-p.done:
		t.Fatalf("the child died when the goroutine that started it ended on a locked thread: %v", p.err)
	case <-time.After(time.Second):
	}
}
