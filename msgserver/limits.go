package msgserver

import (
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/chatrelay/chatrelay/internal/netx"
	"golang.org/x/time/rate"
)

// Limits on what a stranger can cost, before and after login. Per
// connection: a login deadline, a line deadline, a size limit that answers
// as soon as it is passed (session.go), and a token bucket on requests.
// Per source address: open connections and login requests (ipLimits).
// Per server: no more connections than descriptors allow (connLimit).

// connLimit is the most client connections the server takes: maxSessions,
// or fewer if the descriptor limit (RLIMIT_NOFILE, which Go raises to the
// hard limit at start) would run out first, keeping headroom descriptors
// for Redis, the relay link, the admin port and the listeners. fds is the
// limit read, 0 if it could not be read.
func connLimit(maxSessions, headroom int) (limit int, fds uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return maxSessions, 0
	}
	// A limit too small for the headroom keeps half for clients.
	avail := max(int64(min(rl.Cur, 1<<40))-int64(headroom), int64(rl.Cur/2), 1)
	return int(min(int64(maxSessions), avail)), rl.Cur
}

// maxRecentSources bounds how many sources without an open connection
// keep their login bucket (ipLimits.recent).
const maxRecentSources = 1 << 16

// ipLimits counts open connections and login requests per source
// address. Every entry costs memory before anyone has logged in, so what
// it keeps is bounded: an entry with open connections lives as long as
// they do (at most the connection limit), and one without keeps only a
// login bucket that is not yet full again, at most maxRecentSources of
// them. A spray of source addresses therefore grows neither map past
// those bounds; IPv6 sources count by /64, so one subscriber's block is
// one source.
type ipLimits struct {
	maxConns   int        // 0: no cap
	loginRate  rate.Limit // rate.Inf: no limit
	loginBurst int
	exempt     []netip.Prefix

	mu     sync.Mutex
	live   map[netip.Addr]*ipSource     // sources with open connections
	recent map[netip.Addr]*rate.Limiter // sources without, whose login bucket is refilling
	sweep  int                          // len(recent) at which it is next swept
}

// ipSource is one source address with open connections.
type ipSource struct {
	key    netip.Addr
	conns  int
	logins *rate.Limiter // nil until its first login request
}

func newIPLimits(cfg *Config) *ipLimits {
	l := &ipLimits{
		maxConns:   max(cfg.MaxConnsPerIP, 0),
		loginRate:  rate.Inf,
		loginBurst: cfg.LoginBurstPerIP,
		exempt:     cfg.PerIPExempt,
		live:       make(map[netip.Addr]*ipSource),
		recent:     make(map[netip.Addr]*rate.Limiter),
		sweep:      1024,
	}
	if cfg.LoginRatePerIP > 0 {
		l.loginRate = rate.Limit(cfg.LoginRatePerIP)
	}
	return l
}

// sourceKey is the address a connection from addr counts under, or false
// if it counts under none (an exempt network, or not an IP connection).
func (l *ipLimits) sourceKey(addr net.Addr) (netip.Addr, bool) {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	a := ta.AddrPort().Addr().Unmap()
	for _, p := range l.exempt {
		if p.Contains(a) {
			return netip.Addr{}, false
		}
	}
	return netx.SourceKey(addr)
}

// open counts a new connection from addr. It returns the source to give
// back to close (nil for a connection no limit counts), and false if the
// source is at its connection cap: the connection is refused.
func (l *ipLimits) open(addr net.Addr) (*ipSource, bool) {
	k, ok := l.sourceKey(addr)
	if !ok || (l.maxConns == 0 && l.loginRate == rate.Inf) {
		return nil, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	src := l.live[k]
	if src == nil {
		src = &ipSource{key: k, logins: l.recent[k]}
		delete(l.recent, k)
		l.live[k] = src
	}
	if l.maxConns > 0 && src.conns >= l.maxConns {
		return nil, false
	}
	src.conns++
	return src, true
}

// close gives back a connection open counted.
func (l *ipLimits) close(src *ipSource) {
	if src == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if src.conns--; src.conns > 0 {
		return
	}
	delete(l.live, src.key)
	now := time.Now()
	if src.logins == nil || src.logins.TokensAt(now) >= float64(l.loginBurst) {
		return // nothing to remember: a full bucket is what a new one is
	}
	l.recent[src.key] = src.logins
	if len(l.recent) >= l.sweep {
		l.sweepRecent(now)
	}
}

// sweepRecent forgets the sources whose login bucket has filled up again,
// then, if more than half of maxRecentSources are left, any down to that
// half (they may log in a little sooner than their rate allows: the price
// of a bounded map). It runs when recent has doubled since the last sweep
// (and never lets it pass maxRecentSources), so its cost per close stays
// constant.
func (l *ipLimits) sweepRecent(now time.Time) {
	for k, lim := range l.recent {
		if lim.TokensAt(now) >= float64(l.loginBurst) {
			delete(l.recent, k)
		}
	}
	for k := range l.recent {
		if len(l.recent) <= maxRecentSources/2 {
			break
		}
		delete(l.recent, k)
	}
	l.sweep = max(2*len(l.recent), 1024)
}

// allowLogin takes a login request from src's bucket and reports whether
// there was one.
func (l *ipLimits) allowLogin(src *ipSource) bool {
	if src == nil || l.loginRate == rate.Inf {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if src.logins == nil {
		src.logins = rate.NewLimiter(l.loginRate, l.loginBurst)
	}
	return src.logins.Allow()
}

// sources returns how many source addresses are tracked, with and
// without open connections.
func (l *ipLimits) sources() (live, recent int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.live), len(l.recent)
}
