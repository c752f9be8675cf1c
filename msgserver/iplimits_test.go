package msgserver

import (
	"net"
	"net/netip"
	"testing"
)

func tcpAddr(s string) *net.TCPAddr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

// A spray of source addresses, each connecting, logging in and leaving,
// grows the per-address state to its bound and no further; each source
// still has its own connection cap, and an IPv6 /64 is one source.
func TestIPLimitsStayBounded(t *testing.T) {
	cfg := Config{MaxConnsPerIP: 2, LoginRatePerIP: 0.001, LoginBurstPerIP: 5, PerIPExempt: []netip.Prefix{}}
	cfg.setDefaults()
	l := newIPLimits(&cfg)
	for i := range 3 * maxRecentSources {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		src, ok := l.open(net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 40000)))
		if !ok || !l.allowLogin(src) {
			t.Fatalf("source %d refused", i)
		}
		l.close(src)
		if _, recent := l.sources(); recent > maxRecentSources {
			t.Fatalf("after %d sources, %d are remembered: more than %d", i+1, recent, maxRecentSources)
		}
	}
	if live, _ := l.sources(); live != 0 {
		t.Fatalf("%d sources with open connections, want 0", live)
	}

	// Two addresses of one /64 share its cap; another /64 has its own.
	a1, ok1 := l.open(tcpAddr("[2001:db8:1:2::10]:1000"))
	a2, ok2 := l.open(tcpAddr("[2001:db8:1:2:ffff::1]:1000"))
	_, ok3 := l.open(tcpAddr("[2001:db8:1:2::99]:1000"))
	b, ok4 := l.open(tcpAddr("[2001:db8:1:3::10]:1000"))
	if !ok1 || !ok2 || ok3 || !ok4 {
		t.Fatalf("opens in one /64: %v %v %v (want the third refused); another /64: %v", ok1, ok2, ok3, ok4)
	}
	// An IPv4-mapped address is its IPv4 address.
	v4, _ := l.open(tcpAddr("192.0.2.1:1"))
	mapped, _ := l.open(tcpAddr("[::ffff:192.0.2.1]:1"))
	if _, ok := l.open(tcpAddr("192.0.2.1:2")); ok {
		t.Fatal("an IPv4-mapped IPv6 address counted apart from its IPv4 address")
	}
	for _, s := range []*ipSource{a1, a2, b, v4, mapped} {
		l.close(s)
	}
	if live, _ := l.sources(); live != 0 {
		t.Fatalf("%d sources with open connections after closing all, want 0", live)
	}
}

// Exempt networks are not counted at all.
func TestIPLimitsExempt(t *testing.T) {
	cfg := Config{MaxConnsPerIP: 1}
	cfg.setDefaults() // loopback exempt
	l := newIPLimits(&cfg)
	for range 3 {
		for _, a := range []string{"127.0.0.1:1", "127.9.9.9:1", "[::1]:1"} {
			if src, ok := l.open(tcpAddr(a)); !ok || src != nil {
				t.Fatalf("%s: counted (%v, %v), want exempt", a, src, ok)
			}
		}
	}
}
