package local

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// startRedis starts redis-server and waits for PING. With pickPort it picks
// a free port and retries on bind conflicts; otherwise it reuses Redis.Port.
func (c *Cluster) startRedis(ctx context.Context, pickPort bool) error {
	r := c.Redis
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil && !r.proc.exited() {
		return nil
	}
	attempts := 1
	if pickPort {
		attempts = 5
	}
	var lastErr error
	for range attempts {
		if pickPort {
			p, err := freePort()
			if err != nil {
				return err
			}
			r.Port = p
		}
		// Redis runs as the caller (it does not mind root); it writes
		// nothing to disk with these flags.
		p, err := startProc(nil, syscall.SIGKILL, c.sink, "redis| ", r.Dir, c.redisBin,
			"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", r.Dir, "--daemonize", "no", "--protected-mode", "yes")
		if err != nil {
			return fmt.Errorf("local: redis: %w", err)
		}
		r.proc = p
		lastErr = waitPing(ctx, r, p)
		if lastErr == nil {
			return nil
		}
		_ = p.stop(syscall.SIGKILL, time.Second)
		if !pickPort || !isBindConflict(p.tail.String()) {
			break
		}
	}
	return lastErr
}

func waitPing(ctx context.Context, r *RedisNode, p *proc) error {
	deadline := time.Now().Add(30 * time.Second)
	var lastErr error
	for {
		if p.exited() {
			return fmt.Errorf("local: redis exited during startup (%v); last log lines:\n%s", p.err, p.tail.String())
		}
		if lastErr = ping(r.Addr()); lastErr == nil {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("local: redis not answering PING on %s: %v; last log lines:\n%s", r.Addr(), lastErr, p.tail.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("unexpected PING reply %q", line)
	}
	return nil
}

// StopRedis stops redis-server (SIGTERM, then SIGKILL). Stopping a stopped
// redis is a no-op.
func (c *Cluster) StopRedis() error {
	if c.Redis == nil {
		return errors.New("local: StopRedis: no redis")
	}
	r := c.Redis
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return nil
	}
	err := r.proc.stop(syscall.SIGTERM, 10*time.Second)
	if err != nil {
		err = nil // killed after the grace period: it is down, as asked
	}
	return err
}

// StartRedis starts a stopped redis-server again on the same port (empty)
// and waits until it answers PING.
func (c *Cluster) StartRedis() error {
	if c.Redis == nil {
		return errors.New("local: StartRedis: no redis")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.startRedis(ctx, false)
}
