package relay

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	sockaddr "github.com/hashicorp/go-sockaddr"
)

// VIPWatcher tells whether this host holds the virtual IP, by listing the
// host's interface addresses with go-sockaddr every Interval. When the
// address goes away it drops the links accepted on it, so message servers
// reconnect to the new master at once instead of waiting for a timeout.
type VIPWatcher struct {
	VIP      net.IP
	Interval time.Duration
	Server   *Relay

	held     atomic.Bool
	acquired atomic.Int64 // unix nanos of the last time the VIP was acquired
}

// AcquiredAt is when the VIP was last acquired (zero if never).
func (w *VIPWatcher) AcquiredAt() time.Time {
	n := w.acquired.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// HasAddr reports whether ip is configured on any interface of this host.
func HasAddr(ip net.IP) (bool, error) {
	addrs, err := sockaddr.GetAllInterfaces()
	if err != nil {
		return false, fmt.Errorf("list interface addresses: %w", err)
	}
	for _, a := range addrs {
		ipa := sockaddr.ToIPAddr(a.SockAddr)
		if ipa == nil {
			continue
		}
		if p := (*ipa).NetIP(); p != nil && p.Equal(ip) {
			return true, nil
		}
	}
	return false, nil
}

// Held reports whether the VIP was on this host at the last poll.
func (w *VIPWatcher) Held() bool { return w.held.Load() }

// Run polls until ctx ends.
func (w *VIPWatcher) Run(ctx context.Context) {
	s := w.Server
	t := time.NewTicker(w.Interval)
	defer t.Stop()
	failing := false
	for {
		held, err := HasAddr(w.VIP)
		switch {
		case err != nil:
			if !failing {
				s.log.Error("cannot list interface addresses; VIP role unknown", "err", err)
			}
			failing = true
		default:
			failing = false
			if held && !w.held.Load() {
				w.acquired.Store(time.Now().UnixNano()) // before Held turns true
			}
			if was := w.held.Swap(held); was != held {
				s.m.SetVIPHeld(w.VIP.String(), held)
				if held {
					s.log.Info("VIP acquired: this relay is master", "vip", w.VIP.String())
				} else {
					n := s.DropLinks(w.VIP)
					s.log.Warn("VIP lost: this relay is backup; dropped links on the VIP", "vip", w.VIP.String(), "links", n)
				}
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}
