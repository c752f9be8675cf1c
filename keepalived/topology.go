// Package keepalived turns the one topology description of the relay tier
// (topology.json: the VIP, the VRRP settings, the ports and the hosts) into
// the keepalived.conf of each relay host, from one embedded template.
//
// The same topology.json is read by the Vagrantfile, by the failover drill
// and by package vagrant, which renders the lab's other files from it, so
// the VMs, the drill and the rendered configs cannot disagree on an address
// or a port. README.md in this folder documents the schema and
// every choice in the rendered config.
package keepalived

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// Host roles in the topology.
const (
	RoleRelay     = "relay"     // runs a relay and keepalived; exactly two hosts have it
	RoleMsgServer = "msgserver" // runs a message server, which dials the VIP
	RoleRedis     = "redis"     // runs redis-server
)

// Topology is the lab: one VRRP virtual router with one VIP (or two, each
// with its own, for two relays that both carry traffic), shared by two
// relay hosts, and the hosts that use it. Field names are the JSON keys.
type Topology struct {
	VIP             string `json:"vip"`               // the virtual IP message servers dial, IPv4
	Prefix          int    `json:"prefix"`            // VIP prefix length; every host is in VIP/prefix
	Interface       string `json:"interface"`         // NIC carrying the VIP and the VRRP adverts on the relay hosts
	VirtualRouterID int    `json:"virtual_router_id"` // VRRP VRID, 1..255, unique on the LAN segment
	// VIPB, if set, is a second VIP in the same subnet, with its own VRRP
	// instance (VirtualRouterIDB): the higher-priority relay is MASTER of
	// VIP and BACKUP of VIPB, its peer the reverse, and message servers
	// link to both, so both relays carry traffic. Empty: one VIP, one
	// relay active and the other waiting.
	VIPB             string  `json:"vip_b,omitempty"`
	VirtualRouterIDB int     `json:"virtual_router_id_b,omitempty"`
	AdvertInt        float64 `json:"advert_int"` // VRRP advert interval in seconds (VRRPv3: 0.01 steps)
	Ports            Ports   `json:"ports"`
	Hosts            []Host  `json:"hosts"`
}

// Ports are the TCP ports each service listens on, the same on every host.
type Ports struct {
	RelayLink       int `json:"relay_link"`       // relay link port (message servers dial VIP:relay_link)
	RelayAdmin      int `json:"relay_admin"`      // relay /healthz and /metrics, on 127.0.0.1
	MsgServerClient int `json:"msgserver_client"` // message server client port
	MsgServerAdmin  int `json:"msgserver_admin"`  // message server /healthz and /metrics
	Redis           int `json:"redis"`            // redis-server
}

// Host is one machine (a VM, or a network namespace in the drill).
type Host struct {
	Name     string   `json:"name"`               // host name: keepalived router_id, message server id
	IP       string   `json:"ip"`                 // its address on Interface's network
	Roles    []string `json:"roles"`              // RoleRelay, RoleMsgServer, RoleRedis
	Priority int      `json:"priority,omitempty"` // VRRP priority, relay hosts only (1..254)
}

// Has reports whether the host has role.
func (h Host) Has(role string) bool {
	for _, r := range h.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// LoadTopology reads and validates the topology file at path.
func LoadTopology(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	t, err := ParseTopology(data)
	if err != nil {
		return nil, fmt.Errorf("topology %s: %w", path, err)
	}
	return t, nil
}

// ParseTopology decodes a topology document strictly (unknown keys are
// errors: a misspelt key must not silently fall back to a zero value) and
// validates it.
func ParseTopology(data []byte) (*Topology, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var t Topology
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("not a valid topology document: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("not a valid topology document: data after the top-level object")
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// ValidationError lists every problem found in a topology.
type ValidationError struct {
	Problems []string
}

func (e *ValidationError) Error() string {
	if len(e.Problems) == 1 {
		return "invalid topology: " + e.Problems[0]
	}
	return "invalid topology:\n  - " + strings.Join(e.Problems, "\n  - ")
}

var (
	// Host names become keepalived router_ids, message server ids and
	// arguments of the notify script: keep them to a safe alphabet.
	hostNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	// Linux interface names: at most 15 bytes, no '/', ':' or blanks.
	ifNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
)

// Validate returns nil or a *ValidationError naming every problem, in
// words an operator can act on.
func (t *Topology) Validate() error {
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }

	// The VIP and its subnet.
	var subnet netip.Prefix
	vip, err := netip.ParseAddr(t.VIP)
	switch {
	case t.VIP == "":
		add("vip: missing (the virtual IP message servers dial, e.g. 192.168.56.100)")
	case err != nil || !vip.Is4():
		add("vip: %q is not an IPv4 address", t.VIP)
	}
	if t.Prefix < 1 || t.Prefix > 30 {
		add("prefix: %d is not a usable IPv4 prefix length (1..30)", t.Prefix)
	} else if vip.Is4() {
		subnet = netip.PrefixFrom(vip, t.Prefix).Masked()
		if vip == subnet.Addr() || vip == broadcast(subnet) {
			add("vip: %s is the network or broadcast address of %s", vip, subnet)
		}
	}

	// The second VIP, if any.
	if t.VIPB != "" || t.VirtualRouterIDB != 0 {
		vipB, err := netip.ParseAddr(t.VIPB)
		switch {
		case t.VIPB == "":
			add("vip_b: missing, but virtual_router_id_b is set (both or neither)")
		case err != nil || !vipB.Is4():
			add("vip_b: %q is not an IPv4 address", t.VIPB)
		case vipB == vip:
			add("vip_b: %s is the same as vip", vipB)
		case subnet.IsValid() && !subnet.Contains(vipB):
			add("vip_b: %s is outside the VIP's subnet %s", vipB, subnet)
		case subnet.IsValid() && (vipB == subnet.Addr() || vipB == broadcast(subnet)):
			add("vip_b: %s is the network or broadcast address of %s", vipB, subnet)
		}
		switch {
		case t.VirtualRouterIDB < 1 || t.VirtualRouterIDB > 255:
			add("virtual_router_id_b: %d is outside 1..255 (the second VIP needs its own virtual router)", t.VirtualRouterIDB)
		case t.VirtualRouterIDB == t.VirtualRouterID:
			add("virtual_router_id_b: %d is the same as virtual_router_id; each VIP needs its own virtual router", t.VirtualRouterIDB)
		}
	}

	// VRRP.
	if !ifNameRE.MatchString(t.Interface) || t.Interface == "." || t.Interface == ".." {
		add("interface: %q is not a network interface name (1-15 letters, digits, '.', '_', '-')", t.Interface)
	}
	if t.VirtualRouterID < 1 || t.VirtualRouterID > 255 {
		add("virtual_router_id: %d is outside 1..255", t.VirtualRouterID)
	}
	// VRRPv3 carries the interval in centiseconds in 12 bits (RFC 5798).
	switch cs := t.AdvertInt * 100; {
	case math.IsNaN(t.AdvertInt) || t.AdvertInt < 0.01:
		add("advert_int: %v s is below VRRPv3's minimum of 0.01 s", t.AdvertInt)
	case t.AdvertInt > 40.95:
		add("advert_int: %v s is above VRRPv3's maximum of 40.95 s", t.AdvertInt)
	case math.Abs(cs-math.Round(cs)) > 1e-6:
		add("advert_int: %v s is not a whole number of centiseconds (VRRPv3's resolution)", t.AdvertInt)
	}

	// Ports.
	ports := []struct {
		key  string
		port int
		role string
	}{
		{"relay_link", t.Ports.RelayLink, RoleRelay},
		{"relay_admin", t.Ports.RelayAdmin, RoleRelay},
		{"msgserver_client", t.Ports.MsgServerClient, RoleMsgServer},
		{"msgserver_admin", t.Ports.MsgServerAdmin, RoleMsgServer},
		{"redis", t.Ports.Redis, RoleRedis},
	}
	for _, pt := range ports {
		if pt.port < 1 || pt.port > 65535 {
			add("ports.%s: %d is not a TCP port (1..65535)", pt.key, pt.port)
		}
	}

	// Hosts.
	names := map[string]int{}
	ips := map[netip.Addr]string{}
	var relays []Host
	roleCount := map[string]int{}
	for i, h := range t.Hosts {
		where := fmt.Sprintf("hosts[%d]", i)
		if h.Name != "" {
			where = fmt.Sprintf("hosts[%d] %q", i, h.Name)
		}
		switch {
		case h.Name == "":
			add("%s: name is missing", where)
		case !hostNameRE.MatchString(h.Name):
			add("%s: name may only have letters, digits, '.', '_' and '-' (at most 63)", where)
		default:
			if j, dup := names[h.Name]; dup {
				add("%s: name is also used by hosts[%d]", where, j)
			} else {
				names[h.Name] = i
			}
		}
		ip, err := netip.ParseAddr(h.IP)
		switch {
		case err != nil || !ip.Is4():
			add("%s: ip %q is not an IPv4 address", where, h.IP)
		default:
			if other, dup := ips[ip]; dup {
				add("%s: ip %s is also used by %s", where, ip, other)
			} else {
				ips[ip] = where
			}
			if ip == vip {
				add("%s: ip %s is the VIP; a host needs its own address", where, ip)
			}
			if t.VIPB != "" && ip.String() == t.VIPB {
				add("%s: ip %s is vip_b; a host needs its own address", where, ip)
			}
			if subnet.IsValid() && !subnet.Contains(ip) {
				add("%s: ip %s is outside the VIP's subnet %s: the relays could not carry the VIP on it and message servers could not reach it directly", where, ip, subnet)
			} else if subnet.IsValid() && (ip == subnet.Addr() || ip == broadcast(subnet)) {
				add("%s: ip %s is the network or broadcast address of %s", where, ip, subnet)
			}
		}
		if len(h.Roles) == 0 {
			add("%s: roles is empty (want some of %q, %q, %q)", where, RoleRelay, RoleMsgServer, RoleRedis)
		}
		seen := map[string]bool{}
		for _, r := range h.Roles {
			switch {
			case r != RoleRelay && r != RoleMsgServer && r != RoleRedis:
				add("%s: unknown role %q (want %q, %q or %q)", where, r, RoleRelay, RoleMsgServer, RoleRedis)
			case seen[r]:
				add("%s: role %q is listed twice", where, r)
			default:
				seen[r] = true
				roleCount[r]++
			}
		}
		// Two services of one host must not share a port.
		used := map[int]string{}
		for _, pt := range ports {
			if !seen[pt.role] || pt.port == 0 {
				continue
			}
			if other, clash := used[pt.port]; clash {
				add("%s: ports.%s and ports.%s are both %d on this host", where, other, pt.key, pt.port)
			}
			used[pt.port] = pt.key
		}
		if seen[RoleRelay] {
			relays = append(relays, h)
			// 255 is reserved for the address owner, whose priority tracking
			// cannot lower: it would never fault.
			if h.Priority < 1 || h.Priority > 254 {
				add("%s: priority %d is outside 1..254 (a relay host needs a VRRP priority; 255 means address owner and disables tracking)", where, h.Priority)
			}
		} else if h.Priority != 0 {
			add("%s: priority is set but the host is not a relay (only relay hosts run keepalived)", where)
		}
	}
	if n := len(relays); n != 2 {
		add("hosts: %d hosts have the role %q; the tier is a pair, exactly 2 are needed", n, RoleRelay)
	} else if relays[0].Priority == relays[1].Priority {
		add("hosts: relays %q and %q both have priority %d; they must differ so the first election is deterministic",
			relays[0].Name, relays[1].Name, relays[0].Priority)
	}
	if roleCount[RoleMsgServer] == 0 {
		add("hosts: no host has the role %q", RoleMsgServer)
	}
	if roleCount[RoleRedis] == 0 {
		add("hosts: no host has the role %q", RoleRedis)
	}

	if len(p) > 0 {
		return &ValidationError{Problems: p}
	}
	return nil
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= ^uint32(0) >> p.Bits()
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Host returns the host called name.
func (t *Topology) Host(name string) (Host, bool) {
	for _, h := range t.Hosts {
		if h.Name == name {
			return h, true
		}
	}
	return Host{}, false
}

// WithRole returns the hosts that have role, in file order.
func (t *Topology) WithRole(role string) []Host {
	var out []Host
	for _, h := range t.Hosts {
		if h.Has(role) {
			out = append(out, h)
		}
	}
	return out
}

// Relays returns the relay hosts, in file order.
func (t *Topology) Relays() []Host { return t.WithRole(RoleRelay) }

// Peer returns the other relay of the pair.
func (t *Topology) Peer(name string) (Host, error) {
	if h, ok := t.Host(name); !ok || !h.Has(RoleRelay) {
		return Host{}, t.notRelay(name)
	}
	for _, h := range t.Relays() {
		if h.Name != name {
			return h, nil
		}
	}
	return Host{}, fmt.Errorf("relay %q has no peer in the topology", name)
}

func (t *Topology) notRelay(name string) error {
	var names []string
	for _, h := range t.Relays() {
		names = append(names, h.Name)
	}
	if _, ok := t.Host(name); ok {
		return fmt.Errorf("host %q is not a relay host (relay hosts: %s)", name, strings.Join(names, ", "))
	}
	return fmt.Errorf("host %q is not in the topology (relay hosts: %s)", name, strings.Join(names, ", "))
}

// VIPs returns the VIPs: one, or two when both relays carry traffic.
func (t *Topology) VIPs() []string {
	if t.VIPB == "" {
		return []string{t.VIP}
	}
	return []string{t.VIP, t.VIPB}
}

// RelayAddr is where message servers dial the relay tier: VIP:relay_link,
// and with two VIPs both, comma-separated (msgserver --relay).
func (t *Topology) RelayAddr() string {
	addrs := make([]string, 0, 2)
	for _, v := range t.VIPs() {
		addrs = append(addrs, net.JoinHostPort(v, strconv.Itoa(t.Ports.RelayLink)))
	}
	return strings.Join(addrs, ",")
}

// RedisURL is the redis:// URL of the first host with the redis role.
func (t *Topology) RedisURL() string {
	r := t.WithRole(RoleRedis)
	if len(r) == 0 {
		return ""
	}
	return "redis://" + r[0].IP + ":" + strconv.Itoa(t.Ports.Redis) + "/0"
}
