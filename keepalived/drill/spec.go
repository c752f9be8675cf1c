package drill

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/chatrelay/chatrelay/keepalived"
)

// spec is the lab as the drill uses it, read from the same topology file
// the VMs are built from: same addresses, ports and keepalived settings.
type spec struct {
	topo         *keepalived.Topology
	vip          string
	vips         []string // vip, and the second VIP in two-VIP mode
	mask         int
	ip           map[string]string // host -> address
	relays       []string          // by priority: [0] is the initial master
	msgs         []string
	redisHost    string
	clientIP     string // the drill's extra client host
	linkPort     int
	adminPort    int
	clientPort   int
	msgAdminPort int
	redisPort    int
}

// loadSpec reads the topology; oneVIP drops its second VIP (if any), for
// the active-passive mode.
func loadSpec(path string, oneVIP bool) (*spec, error) {
	t, err := keepalived.LoadTopology(path)
	if err != nil {
		return nil, err
	}
	if oneVIP {
		t.VIPB, t.VirtualRouterIDB = "", 0
	}
	s := &spec{
		topo: t, vip: t.VIP, vips: t.VIPs(), mask: t.Prefix, ip: map[string]string{},
		linkPort: t.Ports.RelayLink, adminPort: t.Ports.RelayAdmin, clientPort: t.Ports.MsgServerClient,
		msgAdminPort: t.Ports.MsgServerAdmin, redisPort: t.Ports.Redis,
	}
	var relayPrio []int
	for _, h := range t.Hosts {
		s.ip[h.Name] = h.IP
		if h.Has(keepalived.RoleRelay) {
			if len(s.relays) == 1 && h.Priority > relayPrio[0] {
				s.relays = append([]string{h.Name}, s.relays...)
				relayPrio = append([]int{h.Priority}, relayPrio...)
			} else {
				s.relays = append(s.relays, h.Name)
				relayPrio = append(relayPrio, h.Priority)
			}
		}
		if h.Has(keepalived.RoleMsgServer) {
			s.msgs = append(s.msgs, h.Name)
		}
		if h.Has(keepalived.RoleRedis) {
			s.redisHost = h.Name
		}
	}
	if len(s.relays) != 2 || len(s.msgs) < 2 || s.redisHost == "" {
		return nil, fmt.Errorf("topology %s: the drill needs two relays, two message servers and a Redis host", path)
	}
	// The client host takes the highest free address of the subnet.
	pfx, err := netip.ParsePrefix(fmt.Sprintf("%s/%d", t.VIP, t.Prefix))
	if err != nil {
		return nil, err
	}
	used := map[string]bool{t.VIP: true, t.VIPB: true}
	for _, a := range s.ip {
		used[a] = true
	}
	for a := pfx.Masked().Addr().Next(); pfx.Contains(a.Next()); a = a.Next() { // a.Next() in range: a is not the broadcast address
		if !used[a.String()] {
			s.clientIP = a.String()
		}
	}
	if s.clientIP == "" {
		return nil, fmt.Errorf("topology %s: no free address for the client host", path)
	}
	return s, nil
}

// render is the host's keepalived.conf, from the shared template, with the
// drill's paths: scripts as root (the drill runs as root), the relay's track
// file and the TLS files in the drill's folder, and the lab's Redis for the
// check.
func (s *spec) render(host string, d *drill) ([]byte, error) {
	cert, key := d.cert(host, "check")
	return keepalived.Render(s.topo, host, keepalived.Options{
		RelayBin:     d.cfg.RelayBin,
		NotifyScript: filepath.Join(d.cfg.ScriptsDir, "notify.sh"),
		TrackFile:    d.trackFile(host),
		ScriptUser:   "root",
		// As on the VMs: the check probes the link port over mutual TLS
		// and counts registered message servers in Redis, over TLS.
		LinkTLS:   true,
		CheckCert: cert,
		CheckKey:  key,
		RedisURL:  d.redisURL(),
		RedisCA:   d.caFile(),
	})
}
