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

// listenKeepAlive is ListenConfig.KeepAlive for Listen: Go's default
// keepalive on each accepted connection.
const listenKeepAlive = 0

func steerToNewest(ln net.Listener) error { return nil }

func acceptQueueLen(ln net.Listener) int { return -1 }
