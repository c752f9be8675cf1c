// Package vagrant renders the files of the chatrelay lab from the topology
// (keepalived/topology.json) and the text/template files in templates/: for
// each host, the env files of its systemd units, its firewall script, its
// Redis settings and its keepalived.conf (keepalived.Render, with the VMs'
// paths); for the VM host, the Prometheus scrape config of the lab; and
// the lab's CA and certificates (certs.go: everything runs over TLS).
//
// The provisioner renders each VM's files on the VM (`relay render-lab`, run
// by provision/render.sh) from the topology uploaded with it, so editing
// topology.json and running `vagrant provision` is all it takes. Prometheus
// runs on the VM host, so its config is checked in where it is used,
// health/prometheus/prometheus.yml beside alerts.yml; go generate rewrites it
// and the tests fail while it is stale.
package vagrant

//go:generate go run ../cmd/relay render-lab --topology ../keepalived/topology.json --prometheus ../health/prometheus/prometheus.yml

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/chatrelay/chatrelay/keepalived"
)

//go:embed templates/*.tmpl
var templateFS embed.FS

var templates = template.Must(template.New("").Option("missingkey=error").ParseFS(templateFS, "templates/*.tmpl"))

// Paths and settings the lab's files share with provision.sh and the units.
const (
	// EtcDir holds the units' env files, the link secret and the topology
	// on every VM.
	EtcDir = "/etc/chatrelay"
	// CheckRelayBin is the copy of the relay that keepalived's check runs,
	// and NotifyScript keepalived/notify.sh, as the chatrelay package
	// installs them (packaging/nfpm.yaml), in the folder its postinstall.sh
	// labels for SELinux.
	CheckRelayBin = keepalived.DefaultRelayBin
	NotifyScript  = keepalived.DefaultNotifyScript
	// RedisPasswordFile holds the lab Redis's password for the message
	// servers (--redis-password-file), readable by the services' user;
	// CheckRedisPasswordFile is the same password for keepalived's check,
	// readable by the script user. RedisAuthConf is Redis's side: its
	// requirepass, written by provision.sh from the same file.
	RedisPasswordFile      = EtcDir + "/redis.password"
	CheckRedisPasswordFile = EtcDir + "/redis-check.password"
	RedisAuthConf          = "/etc/redis/chatrelay-auth.conf"
	// ShutdownGrace is the message servers' --shutdown-grace;
	// chatrelay-msgserver.service's TimeoutStopSec must stay above it.
	ShutdownGrace = "5s"
)

// Options are what the topology does not say about a VM: the provisioner
// sets them from what it finds on the VM and from `vagrant up`'s environment.
// They change only keepalived.conf, on relay hosts.
type Options struct {
	Interface string // the NIC holding the host's lab address; empty: the topology's interface
	Unicast   bool   // VRRP adverts by unicast to the peer (CHATRELAY_VRRP_UNICAST=1)
}

// File is one rendered file of a host, named as provision.sh installs it:
// relay.env, msgserver.env, firewall.sh, redis.conf or keepalived.conf.
type File struct {
	Name string
	Data []byte
}

// Rule is one opening in a host's firewall.
type Rule struct {
	For    string // what it is for, printed above the rule
	Proto  string // "tcp", or "vrrp" (IP protocol 112, no port)
	Port   int
	Source string // an address or a prefix; "" for anywhere
}

// Target is one process Prometheus scrapes.
type Target struct {
	Job  string // "relay" or "msgserver", the job labels alerts.yml uses
	Host string // the target's host label
	Addr string // its address and admin port
}

// hostData is what the host templates see.
type hostData struct {
	keepalived.Host
	RoleList      string
	VIP           string
	Ports         keepalived.Ports
	RelayAddr     string
	RedisURL      string
	RedisPassFile string
	RedisAuthConf string
	SecretFile    string
	TLSDir        string // the chatrelay services' TLS files (certs.go)
	RedisTLSDir   string // Redis's
	ShutdownGrace string
	Rules         []Rule
}

// RenderHost returns the files of the host called host, sorted by name.
func RenderHost(t *keepalived.Topology, host string, o Options) ([]File, error) {
	if t == nil {
		return nil, errors.New("render lab host: no topology")
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	h, ok := t.Host(host)
	if !ok {
		var names []string
		for _, h := range t.Hosts {
			names = append(names, h.Name)
		}
		return nil, fmt.Errorf("render lab host: host %q is not in the topology (hosts: %s)", host, strings.Join(names, ", "))
	}
	rules, err := firewallRules(t, h)
	if err != nil {
		return nil, err
	}
	d := hostData{
		Host:          h,
		RoleList:      strings.Join(h.Roles, ", "),
		VIP:           strings.Join(t.VIPs(), ","),
		Ports:         t.Ports,
		RelayAddr:     t.RelayAddr(),
		RedisURL:      redisURL(t),
		RedisPassFile: RedisPasswordFile,
		RedisAuthConf: RedisAuthConf,
		SecretFile:    EtcDir + "/link.secret",
		TLSDir:        TLSDir,
		RedisTLSDir:   RedisTLSDir,
		ShutdownGrace: ShutdownGrace,
		Rules:         rules,
	}
	names := []string{"firewall.sh"}
	if h.Has(keepalived.RoleRelay) {
		names = append(names, "relay.env")
	}
	if h.Has(keepalived.RoleMsgServer) {
		names = append(names, "msgserver.env")
	}
	if h.Has(keepalived.RoleRedis) {
		names = append(names, "redis.conf")
	}
	var files []File
	for _, name := range names {
		b, err := execute(name, d)
		if err != nil {
			return nil, err
		}
		files = append(files, File{Name: name, Data: b})
	}
	if h.Has(keepalived.RoleRelay) {
		conf, err := keepalived.Render(t, host, keepalived.Options{
			RelayBin:     CheckRelayBin,
			NotifyScript: NotifyScript,
			RedisURL:     redisURL(t),
			RedisCA:      TLSDir + "/ca.pem",
			RedisPass:    CheckRedisPasswordFile,
			LinkTLS:      true,
			CheckCert:    TLSDir + "/check.pem",
			CheckKey:     TLSDir + "/check-key.pem",
			Interface:    o.Interface,
			Unicast:      o.Unicast,
		})
		if err != nil {
			return nil, err
		}
		files = append(files, File{Name: "keepalived.conf", Data: conf})
	}
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	return files, nil
}

// redisURL is the lab's Redis, over TLS.
func redisURL(t *keepalived.Topology) string {
	if u, ok := strings.CutPrefix(t.RedisURL(), "redis://"); ok {
		return "rediss://" + u
	}
	return ""
}

// FirewallRules lists what the firewall of the host called host lets in,
// for its roles:
//
//	relay      VRRP from the other relay only; the link port (message
//	           servers dial the VIP) and the admin port (Prometheus on the VM
//	           host) from the lab network
//	msgserver  the client port from anywhere; the admin port from the lab network
//	redis      the Redis port from the lab network only
//
// The lab network is the VIP's subnet: the VMs, and the VM host on it.
func FirewallRules(t *keepalived.Topology, host string) ([]Rule, error) {
	if t == nil {
		return nil, errors.New("firewall rules: no topology")
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	h, ok := t.Host(host)
	if !ok {
		return nil, fmt.Errorf("firewall rules: host %q is not in the topology", host)
	}
	return firewallRules(t, h)
}

// firewallRules is FirewallRules for a host of a validated topology.
func firewallRules(t *keepalived.Topology, h keepalived.Host) ([]Rule, error) {
	vip, err := netip.ParseAddr(t.VIP)
	if err != nil {
		return nil, fmt.Errorf("firewall rules: vip: %w", err)
	}
	lab := netip.PrefixFrom(vip, t.Prefix).Masked().String()
	var rules []Rule
	if h.Has(keepalived.RoleRelay) {
		for _, r := range t.Relays() {
			if r.Name != h.Name {
				rules = append(rules, Rule{For: "VRRP adverts from the peer relay " + r.Name + " (multicast or unicast)", Proto: "vrrp", Source: r.IP})
			}
		}
		rules = append(rules,
			Rule{For: "relay link: message servers dial the VIP", Proto: "tcp", Port: t.Ports.RelayLink, Source: lab},
			Rule{For: "relay admin (/healthz, /metrics): Prometheus on the VM host", Proto: "tcp", Port: t.Ports.RelayAdmin, Source: lab})
	}
	if h.Has(keepalived.RoleMsgServer) {
		rules = append(rules,
			Rule{For: "client sessions (telnet, apps), from anywhere", Proto: "tcp", Port: t.Ports.MsgServerClient},
			Rule{For: "message server admin (/healthz, /metrics): Prometheus on the VM host", Proto: "tcp", Port: t.Ports.MsgServerAdmin, Source: lab})
	}
	if h.Has(keepalived.RoleRedis) {
		rules = append(rules, Rule{For: "Redis (TLS, password): message servers and the relays' check, lab network only", Proto: "tcp", Port: t.Ports.Redis, Source: lab})
	}
	return rules, nil
}

// ScrapeTargets are the processes Prometheus scrapes, each at its own
// address, never the VIP (the rules must see both relays): every relay and
// every message server on its admin port, in topology order.
func ScrapeTargets(t *keepalived.Topology) []Target {
	if t == nil {
		return nil
	}
	var out []Target
	for _, job := range []struct {
		role string
		port int
	}{{keepalived.RoleRelay, t.Ports.RelayAdmin}, {keepalived.RoleMsgServer, t.Ports.MsgServerAdmin}} {
		for _, h := range t.WithRole(job.role) {
			out = append(out, Target{Job: job.role, Host: h.Name, Addr: net.JoinHostPort(h.IP, strconv.Itoa(job.port))})
		}
	}
	return out
}

// RenderPrometheus returns the lab's Prometheus config (prometheus.yml),
// which loads alerts.yml from its own folder.
func RenderPrometheus(t *keepalived.Topology) ([]byte, error) {
	if t == nil {
		return nil, errors.New("render prometheus.yml: no topology")
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	d := struct {
		Ports      keepalived.Ports
		Relays     []Target
		MsgServers []Target
	}{Ports: t.Ports}
	for _, tg := range ScrapeTargets(t) {
		if tg.Job == keepalived.RoleRelay {
			d.Relays = append(d.Relays, tg)
		} else {
			d.MsgServers = append(d.MsgServers, tg)
		}
	}
	return execute("prometheus.yml", d)
}

func execute(name string, data any) ([]byte, error) {
	var buf bytes.Buffer
	if err := templates.ExecuteTemplate(&buf, name+".tmpl", data); err != nil {
		return nil, fmt.Errorf("render %s: %w", name, err)
	}
	return buf.Bytes(), nil
}
