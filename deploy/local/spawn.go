package local

import (
	"os/exec"
	"runtime"
	"sync"
)

// A child's parent-death signal (SysProcAttr.Pdeathsig) is sent when the
// thread that forked it exits, not when the process does (prctl(2):
// "the parent in this case is considered to be the thread that created
// this process"). The Go runtime ends a thread whenever a goroutine
// returns while locked to it, so a child forked on an ordinary goroutine
// dies with whatever locked goroutine later borrows and leaves that
// thread: in bench/floor's tests, the loop model's locked goroutine
// ending took the test's PostgreSQL down ("the database system is shutting
// down"). StartCmd forks every child on one thread that lives as long as
// the process, so the signal means what the harness wants: the test
// process died.

type spawnCall struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	spawnOnce  sync.Once
	spawnCalls chan spawnCall
)

// StartCmd is cmd.Start run on the process's spawning thread. Use it for
// every child that sets Pdeathsig.
func StartCmd(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnCalls = make(chan spawnCall)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread must not be reused, nor end
			for c := range spawnCalls {
				c.done <- c.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnCalls <- spawnCall{cmd, done}
	return <-done
}
