package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// closedAddr is a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// The hand-back's failures, each with a clear message and the release file
// left so that this relay can hold the VIP again. (The drill's hand-back
// scenario runs the command against real keepalived; here the host's
// address list is a function that says what keepalived would have done.)
func TestHandBackFailures(t *testing.T) {
	vip := net.ParseIP("192.0.2.10")
	release := filepath.Join(t.TempDir(), "relay.release-192.0.2.10")
	base := handBack{vip: vip, release: release, onVIP: closedAddr(t), timeout: 300 * time.Millisecond}

	t.Run("not held here", func(t *testing.T) {
		h := base
		h.hasAddr = func(net.IP) (bool, error) { return false, nil }
		if _, err := h.run(context.Background()); err == nil || !strings.Contains(err.Error(), "does not hold 192.0.2.10") {
			t.Fatalf("err %v, want: this host does not hold it", err)
		}
		if _, err := os.Stat(release); !os.IsNotExist(err) {
			t.Fatalf("the release file was written (%v): a VIP not held here must not be touched", err)
		}
	})
	t.Run("peer down", func(t *testing.T) {
		h := base
		h.peer = closedAddr(t)
		h.hasAddr = func(net.IP) (bool, error) { return true, nil }
		if _, err := h.run(context.Background()); err == nil || !strings.Contains(err.Error(), "peer relay does not answer") {
			t.Fatalf("err %v, want: the peer does not answer", err)
		}
		if _, err := os.Stat(release); !os.IsNotExist(err) {
			t.Fatalf("the release file was written (%v) though the peer is down", err)
		}
	})
	t.Run("peer is this host", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0") // this host's relay, answering on the other VIP
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		h := base
		h.peer = ln.Addr().String()
		h.hasAddr = func(net.IP) (bool, error) { return true, nil } // the VIP and the "peer" are both here
		if _, err := h.run(context.Background()); err == nil || !strings.Contains(err.Error(), "is an address of this host") {
			t.Fatalf("err %v, want: --peer is this host", err)
		}
		if _, err := os.Stat(release); !os.IsNotExist(err) {
			t.Fatalf("the release file was written (%v) with no other relay to take the VIP", err)
		}
	})
	t.Run("nobody takes it", func(t *testing.T) {
		h := base
		var released atomic.Bool // keepalived: the VIP leaves once the file says 1
		h.hasAddr = func(net.IP) (bool, error) {
			if data, _ := os.ReadFile(release); strings.TrimSpace(string(data)) == "1" {
				released.Store(true)
			}
			return !released.Load(), nil
		}
		_, err := h.run(context.Background())
		if err == nil || !strings.Contains(err.Error(), "nobody answered on "+base.onVIP) {
			t.Fatalf("err %v, want: nobody answered on the VIP", err)
		}
		if !released.Load() {
			t.Fatal("the release file never said 1")
		}
		if data, err := os.ReadFile(release); err != nil || strings.TrimSpace(string(data)) != "0" {
			t.Fatalf("release file %q (%v) after a failed hand-back, want 0: the VIP could never come back", data, err)
		}
	})
	t.Run("handed back", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0") // the peer's relay, now on the VIP
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		h := base
		h.onVIP = ln.Addr().String()
		h.hasAddr = func(net.IP) (bool, error) {
			data, _ := os.ReadFile(release)
			return strings.TrimSpace(string(data)) != "1", nil
		}
		if _, err := h.run(context.Background()); err != nil {
			t.Fatal(err)
		}
		if data, err := os.ReadFile(release); err != nil || strings.TrimSpace(string(data)) != "0" {
			t.Fatalf("release file %q (%v) after the hand-back, want 0", data, err)
		}
	})
}
