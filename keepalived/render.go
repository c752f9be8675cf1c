package keepalived

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
)

//go:embed keepalived.conf.tmpl
var confTemplate string

var tmpl = template.Must(template.New("keepalived.conf").Option("missingkey=error").Parse(confTemplate))

// Defaults for Options: where the chatrelay package (packaging/nfpm.yaml)
// installs the check's copy of the relay and the notify script.
const (
	DefaultRelayBin     = "/usr/libexec/chatrelay/relay"
	DefaultNotifyScript = "/usr/libexec/chatrelay/notify.sh"
	DefaultTrackFile    = "/run/chatrelay/relay.down"
	DefaultScriptUser   = "keepalived_script"
)

// The check's probe timeout and grace period (README.md, "The keepalived
// check"). Two probes of 400 ms each fit keepalived's 1 s script timeout.
const (
	CheckTimeout = "400ms"
	CheckGrace   = "3s"
)

// Options are what differs between deployments of the same topology: the VMs
// use the defaults; the drill points the paths at its own files.
type Options struct {
	RelayBin     string   // relay binary the check runs (DefaultRelayBin)
	NotifyScript string   // notify script, keepalived/notify.sh installed (DefaultNotifyScript)
	TrackFile    string   // file the relay's supervisor writes 1 (down) or 0 (up) to (DefaultTrackFile)
	ScriptUser   string   // user keepalived runs the scripts as (DefaultScriptUser; the drill uses root)
	Interface    string   // overrides the topology's interface
	Unicast      bool     // VRRP adverts by unicast to the peer instead of multicast
	RedisURL     string   // optional: the check counts registered message servers there (--redis)
	RedisCA      string   // optional: CA file that verifies a rediss:// RedisURL (--redis-ca-file)
	RedisPass    string   // optional: file holding the Redis password (--redis-password-file)
	LinkTLS      bool     // the link port serves TLS: the check probes it over TLS (--link-tls)
	CheckCert    string   // optional: with CheckKey, the client certificate the probe shows a mutual-TLS link port (--link-cert)
	CheckKey     string   // its key (--link-key)
	ExtraGlobal  []string // optional lines added to global_defs, one keyword each
}

func (o Options) withDefaults() Options {
	if o.RelayBin == "" {
		o.RelayBin = DefaultRelayBin
	}
	if o.NotifyScript == "" {
		o.NotifyScript = DefaultNotifyScript
	}
	if o.TrackFile == "" {
		o.TrackFile = DefaultTrackFile
	}
	if o.ScriptUser == "" {
		o.ScriptUser = DefaultScriptUser
	}
	return o
}

var (
	userRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	// Characters that keepalived's parser would take as a comment ('#', '!'),
	// a parameter ('$'), a block ('{', '}') or the end of a quoted string.
	unsafeConfChars = " \t\r\n\"'#!${}\\"
)

func (o Options) validate() []string {
	var p []string
	for _, f := range []struct {
		name, path string
		optional   bool
	}{
		{"relay binary", o.RelayBin, false},
		{"notify script", o.NotifyScript, false},
		{"track file", o.TrackFile, false},
		{"Redis CA file", o.RedisCA, true},
		{"Redis password file", o.RedisPass, true},
		{"check certificate", o.CheckCert, true},
		{"check key", o.CheckKey, true},
	} {
		switch {
		case f.optional && f.path == "":
		case !filepath.IsAbs(f.path):
			p = append(p, fmt.Sprintf("%s %q is not an absolute path (keepalived runs scripts without a working directory)", f.name, f.path))
		case strings.ContainsAny(f.path, unsafeConfChars):
			p = append(p, fmt.Sprintf("%s %q has a blank or one of %q, which keepalived.conf cannot carry in a script line", f.name, f.path, strings.TrimSpace(unsafeConfChars)))
		}
	}
	if (o.CheckCert == "") != (o.CheckKey == "") {
		p = append(p, "the check's client certificate and key go together")
	}
	if o.CheckCert != "" && !o.LinkTLS {
		p = append(p, "a check client certificate is for a TLS link port: set LinkTLS")
	}
	if o.RedisCA != "" && o.RedisURL == "" {
		p = append(p, "a Redis CA file without a Redis URL")
	}
	if o.RedisPass != "" && o.RedisURL == "" {
		p = append(p, "a Redis password file without a Redis URL")
	}
	if !userRE.MatchString(o.ScriptUser) {
		p = append(p, fmt.Sprintf("script user %q is not a user name", o.ScriptUser))
	}
	if o.Interface != "" && (!ifNameRE.MatchString(o.Interface) || o.Interface == "." || o.Interface == "..") {
		p = append(p, fmt.Sprintf("interface %q is not a network interface name", o.Interface))
	}
	if o.RedisURL != "" {
		u, err := url.Parse(o.RedisURL)
		switch {
		case strings.ContainsAny(o.RedisURL, unsafeConfChars):
			p = append(p, fmt.Sprintf("redis URL has a blank or one of %q, which keepalived.conf cannot carry in a script line", strings.TrimSpace(unsafeConfChars)))
		case err != nil || u.Scheme == "" || !strings.HasPrefix(u.Scheme, "redis"):
			p = append(p, fmt.Sprintf("redis URL %q is not a redis://, rediss://, redis-sentinel:// or redis-cluster:// URL", o.RedisURL))
		}
	}
	for _, l := range o.ExtraGlobal {
		if strings.ContainsAny(l, "{}\r\n") {
			p = append(p, fmt.Sprintf("extra global_defs line %q: one keyword per line, without braces", l))
		}
	}
	return p
}

// confData is what the template sees.
type confData struct {
	Host, Peer   Host
	Instances    []instance // one VRRP instance per VIP
	Two          bool       // two VIPs: both relays carry traffic
	Prefix       int
	Interface    string
	AdvertInt    string
	LinkPort     int
	Unicast      bool
	ScriptUser   string
	CheckCommand string
	TrackFile    string
	NotifyScript string
	ExtraGlobal  []string
}

// instance is one VRRP instance: one VIP.
type instance struct {
	Name       string // VI_RELAY for the first VIP, VI_RELAY_B for the second
	VIP        string
	VRID       int
	Priority   int    // this host's priority in it
	Role       string // "MASTER" or "BACKUP" at the first election
	MasterDown string // how long the peer waits for a silent MASTER, in seconds
	// ReleaseFile, with two VIPs, is the file whose 1 hands this VIP to
	// the peer (ReleaseFile()).
	ReleaseFile string
}

// ReleaseFile is, with two VIPs, the file that hands vip to the peer
// relay: keepalived faults vip's instance on this host while it holds 1.
// It sits beside the track file: /run/chatrelay/relay.down gives
// /run/chatrelay/relay.release-192.168.56.101.
func ReleaseFile(trackFile, vip string) string {
	return strings.TrimSuffix(trackFile, filepath.Ext(trackFile)) + ".release-" + vip
}

// Render returns the keepalived.conf of the relay host called host.
func Render(t *Topology, host string, o Options) ([]byte, error) {
	if t == nil {
		return nil, errors.New("render keepalived.conf: no topology")
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	h, ok := t.Host(host)
	if !ok || !h.Has(RoleRelay) {
		return nil, fmt.Errorf("render keepalived.conf: %w", t.notRelay(host))
	}
	peer, err := t.Peer(host)
	if err != nil {
		return nil, fmt.Errorf("render keepalived.conf: %w", err)
	}
	o = o.withDefaults()
	if p := o.validate(); len(p) > 0 {
		return nil, fmt.Errorf("render keepalived.conf: %s", strings.Join(p, "; "))
	}
	ifname := t.Interface
	if o.Interface != "" {
		ifname = o.Interface
	}

	check := []string{o.RelayBin, "check",
		"--admin", "127.0.0.1:" + strconv.Itoa(t.Ports.RelayAdmin),
		"--link", "127.0.0.1:" + strconv.Itoa(t.Ports.RelayLink),
		"--timeout", CheckTimeout, "--grace", CheckGrace}
	if o.LinkTLS {
		check = append(check, "--link-tls")
	}
	if o.CheckCert != "" {
		check = append(check, "--link-cert", o.CheckCert, "--link-key", o.CheckKey)
	}
	if o.RedisURL != "" {
		check = append(check, "--redis", o.RedisURL)
	}
	if o.RedisCA != "" {
		check = append(check, "--redis-ca-file", o.RedisCA)
	}
	if o.RedisPass != "" {
		check = append(check, "--redis-password-file", o.RedisPass)
	}
	// RFC 5798: Master_Down_Interval = 3 * advert + (256 - priority) * advert / 256,
	// computed with the priority of the relay that waits: the peer.
	down := func(prio int) string {
		return strconv.FormatFloat(3*t.AdvertInt+float64(256-prio)*t.AdvertInt/256, 'f', 2, 64)
	}
	role := func(mine, theirs int) string {
		if mine > theirs {
			return "MASTER"
		}
		return "BACKUP"
	}
	insts := []instance{{Name: "VI_RELAY", VIP: t.VIP, VRID: t.VirtualRouterID, Priority: h.Priority,
		Role: role(h.Priority, peer.Priority), MasterDown: down(peer.Priority)}}
	insts[0].ReleaseFile = ReleaseFile(o.TrackFile, t.VIP)
	if t.VIPB != "" {
		// The second VIP's priorities are the first's swapped: the
		// backup of the first VIP is the master of the second.
		insts = append(insts, instance{Name: "VI_RELAY_B", VIP: t.VIPB, VRID: t.VirtualRouterIDB, Priority: peer.Priority,
			Role: role(peer.Priority, h.Priority), MasterDown: down(h.Priority), ReleaseFile: ReleaseFile(o.TrackFile, t.VIPB)})
	}
	extra := make([]string, 0, len(o.ExtraGlobal))
	for _, l := range o.ExtraGlobal {
		if l = strings.TrimSpace(l); l != "" {
			extra = append(extra, l)
		}
	}

	data := confData{
		Host:         h,
		Peer:         peer,
		Instances:    insts,
		Two:          len(insts) > 1,
		Prefix:       t.Prefix,
		Interface:    ifname,
		AdvertInt:    strconv.FormatFloat(t.AdvertInt, 'f', -1, 64),
		LinkPort:     t.Ports.RelayLink,
		Unicast:      o.Unicast,
		ScriptUser:   o.ScriptUser,
		CheckCommand: strings.Join(check, " "),
		TrackFile:    o.TrackFile,
		NotifyScript: o.NotifyScript,
		ExtraGlobal:  extra,
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("render keepalived.conf: %w", err)
	}
	return buf.Bytes(), nil
}
