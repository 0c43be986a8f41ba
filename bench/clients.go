package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Login is what a raw client needs to log in.
type Login struct {
	User, Password, DB string
	Cache              *ScramCache
}

// StormResult is the outcome of Storm.
type StormResult struct {
	Clients   int
	OK        int
	Failures  int
	FirstErr  string
	Wall      time.Duration // first dial to last query answered
	ConnP50   time.Duration // dial to ReadyForQuery
	ConnP99   time.Duration
	ConnMax   time.Duration
	QueryP50  time.Duration // SELECT 1 right after login, including any wait for a pooled server
	QueryP99  time.Duration
	PerSecond float64 // OK / Wall
}

// Storm opens n connections at once (all goroutines released together),
// runs SELECT 1 on each, holds every connection open until all are done, then
// closes them. Each client has timeout for its login plus query. Failures
// are counted, not returned: a server that drops clients in a storm has a
// result, not a harness error.
func Storm(ctx context.Context, addr string, l Login, n int, timeout time.Duration) StormResult {
	res := StormResult{Clients: n}
	start := make(chan struct{})
	var ready, done sync.WaitGroup
	conns := make([]*RawConn, n)
	connT := make([]float64, n)
	queryT := make([]float64, n)
	var failures atomic.Int64
	var firstErr atomic.Value
	fail := func(err error) {
		failures.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
	}
	ready.Add(n)
	done.Add(n)
	for i := 0; i < n; i++ {
		go func(i int) {
			defer done.Done()
			ready.Done()
			<-start
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			t0 := time.Now()
			c, err := ConnectRaw(cctx, addr, l.User, l.Password, l.DB, l.Cache)
			if err != nil {
				fail(err)
				return
			}
			t1 := time.Now()
			conns[i] = c
			if err := c.SimpleQuery(cctx, "SELECT 1"); err != nil {
				fail(err)
				return
			}
			connT[i] = float64(t1.Sub(t0))
			queryT[i] = float64(time.Since(t1))
		}(i)
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	done.Wait()
	res.Wall = time.Since(t0)
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	var cs, qs []float64
	for i := range connT {
		if connT[i] > 0 {
			cs = append(cs, connT[i])
			qs = append(qs, queryT[i])
		}
	}
	res.Failures = int(failures.Load())
	res.OK = len(cs)
	if v := firstErr.Load(); v != nil {
		res.FirstErr = v.(string)
	}
	res.ConnP50 = time.Duration(Percentile(cs, 50))
	res.ConnP99 = time.Duration(Percentile(cs, 99))
	res.ConnMax = time.Duration(Percentile(cs, 100))
	res.QueryP50 = time.Duration(Percentile(qs, 50))
	res.QueryP99 = time.Duration(Percentile(qs, 99))
	if res.Wall > 0 {
		res.PerSecond = float64(res.OK) / res.Wall.Seconds()
	}
	return res
}

// IdleResult is the outcome of Idle.
type IdleResult struct {
	Clients         int
	Connected       int
	FirstErr        string
	RSSBeforeKiB    int64
	RSSAfterKiB     int64
	PerClientKiB    float64
	ConnectDuration time.Duration
}

// Idle measures pid's RSS, opens n authenticated connections to addr (at
// most parallel logins at a time), waits settle, measures RSS again and
// closes them all. The RSS growth divided by the connections is the memory
// one idle client costs the proxy.
func Idle(ctx context.Context, pid int, addr string, l Login, n, parallel int, settle time.Duration) (IdleResult, error) {
	res := IdleResult{Clients: n}
	before, err := ReadProc(pid)
	if err != nil {
		return res, err
	}
	res.RSSBeforeKiB = before.RSSKiB
	conns := make([]*RawConn, n)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	t0 := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			c, err := ConnectRaw(cctx, addr, l.User, l.Password, l.DB, l.Cache)
			if err != nil {
				mu.Lock()
				if res.FirstErr == "" {
					res.FirstErr = err.Error()
				}
				mu.Unlock()
				return
			}
			c.Idle()
			conns[i] = c
		}(i)
	}
	wg.Wait()
	res.ConnectDuration = time.Since(t0)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for _, c := range conns {
		if c != nil {
			res.Connected++
		}
	}
	select {
	case <-time.After(settle):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	after, err := ReadProc(pid)
	if err != nil {
		return res, err
	}
	res.RSSAfterKiB = after.RSSKiB
	if res.Connected > 0 {
		res.PerClientKiB = float64(after.RSSKiB-before.RSSKiB) / float64(res.Connected)
	}
	if res.Connected < n && res.FirstErr == "" {
		res.FirstErr = fmt.Sprintf("%d of %d clients connected", res.Connected, n)
	}
	return res, nil
}
