//go:build !linux

package proxy

import (
	"net"
	"syscall"
)

// Outside Linux there is no steering of a reuseport group and no accept
// queue length: listeners are plain and a handover drains by the quiet
// window alone.

func reuseportControl(network, address string, c syscall.RawConn) error { return nil }

func steerToNewest(ln net.Listener) error { return nil }

func acceptQueueLen(ln net.Listener) int { return -1 }
