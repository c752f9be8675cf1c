package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/chatrelay/chatrelay/internal/cli"
	"github.com/chatrelay/chatrelay/keepalived"
	"github.com/chatrelay/chatrelay/relay"
)

// handBackMain is "relay hand-back": on the relay that holds both VIPs
// after a failover, it gives one back to the peer through that VIP's
// release file (keepalived.ReleaseFile), waits until the peer answers on
// it, and clears the file again. Exit codes: 0 handed back, 1 not (the VIP
// stays or comes back here), 2 bad flags.
func handBackMain(args []string, stdout, stderr io.Writer) int {
	fs := cli.NewCommand("relay hand-back", "relay hand-back: give a VIP this relay holds back to the peer relay (two VIPs).\n\n"+
		"Usage: relay hand-back --vip 192.168.56.100 [--peer 192.168.56.11:7000] [flags]\n\n"+
		"Run it as root on the relay that holds both VIPs, once the peer is healthy again. It sets the\n"+
		"VIP's release file, so keepalived faults that VIP's instance here and the peer takes the VIP;\n"+
		"waits until the VIP has left this host and a relay answers on it; then clears the file, so this\n"+
		"relay is the VIP's backup again. If nobody takes the VIP in --timeout, the file is cleared\n"+
		"anyway and keepalived gives the VIP back to this relay.", stdout, stderr)
	var (
		vipFlag   = fs.String("vip", "", "the VIP to hand back; required")
		peer      = fs.String("peer", "", "the peer relay's own link address (host:port): it must answer before the VIP is let go; empty: not checked")
		trackFile = fs.String("track-file", keepalived.DefaultTrackFile, "the relay's track file; the VIP's release file is beside it")
		port      = fs.Int("port", 0, "the link port the relay on the VIP answers on (default: --peer's port, else 7000)")
		timeout   = fs.Duration("timeout", 5*time.Second, "how long the peer has to take the VIP")
	)
	if code, done := fs.Parse(args); done {
		return code
	}
	vip := net.ParseIP(*vipFlag)
	if *port == 0 {
		*port = defaultLinkPort()
		if _, p, err := net.SplitHostPort(*peer); err == nil {
			*port, _ = strconv.Atoi(p)
		}
	}
	switch {
	case vip == nil:
		return fs.Fail("--vip must be an IP address, got %q", *vipFlag)
	case *port < 1 || *port > 65535:
		return fs.Fail("--port must be in 1..65535")
	case *timeout <= 0:
		return fs.Fail("--timeout must be positive")
	}
	if *peer != "" {
		if _, _, err := net.SplitHostPort(*peer); err != nil {
			return fs.Fail("--peer must be host:port, the peer relay's own link address: %v", err)
		}
	}
	h := handBack{
		vip:     vip,
		release: keepalived.ReleaseFile(*trackFile, vip.String()),
		onVIP:   net.JoinHostPort(vip.String(), strconv.Itoa(*port)),
		peer:    *peer,
		timeout: *timeout,
		hasAddr: relay.HasAddr,
	}
	// Interrupted (Ctrl-C, a lost terminal), it still clears the release
	// file: left at 1, this relay's instance would stay in FAULT for good.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	took, err := h.run(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "relay hand-back:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s handed back in %.2f s: a relay on another host answers on %s\n", vip, took.Seconds(), h.onVIP)
	return 0
}

func defaultLinkPort() int {
	_, p, _ := net.SplitHostPort(relay.DefaultLinkAddr)
	n, _ := strconv.Atoi(p)
	return n
}

// handBack is one hand-back of vip.
type handBack struct {
	vip     net.IP
	release string // the VIP's release file
	onVIP   string // the relay's link address on the VIP
	peer    string // the peer relay's own link address; empty: not checked
	timeout time.Duration
	hasAddr func(net.IP) (bool, error)
}

// handBackPoll is how often the VIP and the relay on it are checked.
const handBackPoll = 20 * time.Millisecond

// run hands the VIP back and returns how long the peer took to answer on it.
func (h *handBack) run(ctx context.Context) (time.Duration, error) {
	held, err := h.hasAddr(h.vip)
	switch {
	case err != nil:
		return 0, err
	case !held:
		return 0, fmt.Errorf("this host does not hold %s: nothing to hand back (run it on the relay that holds both VIPs)", h.vip)
	}
	if h.peer != "" {
		c, err := net.DialTimeout("tcp", h.peer, time.Second)
		if err != nil {
			return 0, fmt.Errorf("the peer relay does not answer at %s, so it could not serve %s: not handed back: %w", h.peer, h.vip, err)
		}
		remote := c.RemoteAddr().(*net.TCPAddr).IP
		c.Close()
		if here, err := h.hasAddr(remote); err != nil || here {
			return 0, fmt.Errorf("--peer %s is an address of this host (the other VIP, or this relay's own): give the peer relay's own address: not handed back", h.peer)
		}
	}
	if err := keepalived.WriteTrackFile(h.release, "1"); err != nil {
		return 0, fmt.Errorf("release %s: %w", h.vip, err)
	}
	start := time.Now()
	took, waitErr := h.waitPeer(ctx, start)
	// Cleared whatever happened: this relay is the VIP's backup again (or,
	// if nobody took it, its master again once keepalived sees no other).
	if err := keepalived.WriteTrackFile(h.release, "0"); err != nil {
		return 0, errors.Join(waitErr, fmt.Errorf("clear %s (write 0 to it by hand, or this relay will never take %s again): %w", h.release, h.vip, err))
	}
	if waitErr != nil {
		if held, err := h.hasAddr(h.vip); err == nil && !held {
			waitErr = fmt.Errorf("%w; %s has left this host (check --port, and which relay holds it)", waitErr, h.vip)
		}
	}
	return took, waitErr
}

// waitPeer waits until the VIP has left this host and a relay answers on it.
func (h *handBack) waitPeer(ctx context.Context, start time.Time) (time.Duration, error) {
	deadline := start.Add(h.timeout)
	t := time.NewTicker(handBackPoll)
	defer t.Stop()
	gone := false
	for {
		held, err := h.hasAddr(h.vip)
		if err != nil {
			return 0, err
		}
		if !held {
			gone = true
			d := net.Dialer{Timeout: handBackPoll * 5}
			if c, err := d.DialContext(ctx, "tcp", h.onVIP); err == nil {
				c.Close()
				return time.Since(start), nil
			}
		}
		if time.Now().After(deadline) {
			if !gone {
				return 0, fmt.Errorf("%s did not leave this host in %s: is keepalived running here, and does its config track %s?", h.vip, h.timeout, h.release)
			}
			return 0, fmt.Errorf("nobody answered on %s within %s of releasing it (is keepalived running on the peer, is its relay on this port?)", h.onVIP, h.timeout)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}
