package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/chatrelay/chatrelay/internal/cli"
	"github.com/chatrelay/chatrelay/keepalived"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/vagrant"
)

// renderMain is "relay render-keepalived": it prints (or writes to --out) the
// keepalived.conf of one relay host, rendered from the topology. Exit codes:
// 0 done, 2 anything wrong (flags, topology, options, writing --out).
func renderMain(args []string, stdout, stderr io.Writer) int {
	host, _ := os.Hostname()
	fs := cli.NewCommand("relay render-keepalived", "relay render-keepalived: print the keepalived.conf of one relay host, rendered from the topology.\n\n"+
		"Usage: relay render-keepalived --topology keepalived/topology.json --host relay-a [flags]", stdout, stderr)
	var (
		topology   = fs.String("topology", "", "topology file (keepalived/topology.json in the repository); required")
		hostName   = fs.String("host", host, "relay host to render for, a relay name in the topology")
		unicast    = fs.Bool("unicast", false, "VRRP adverts by unicast to the peer relay instead of multicast")
		iface      = fs.String("interface", "", "network interface for the VIP and adverts; empty: the topology's")
		relayBin   = fs.String("relay-bin", keepalived.DefaultRelayBin, "relay binary the vrrp_script check runs")
		notify     = fs.String("notify", keepalived.DefaultNotifyScript, "notify script (keepalived/notify.sh, installed)")
		trackFile  = fs.String("track-file", keepalived.DefaultTrackFile, "file the relay's supervisor writes 1 (down) or 0 (up) to")
		scriptUser = fs.String("script-user", keepalived.DefaultScriptUser, "user keepalived runs the scripts as")
		redisURL   = fs.String("redis", "", "Redis URL the check counts registered message servers in; empty: the servers the relay has seen")
		redisCA    = fs.String("redis-ca-file", "", "CA file the check verifies a rediss:// --redis with")
		redisPass  = fs.String("redis-password-file", "", "file holding the Redis password the check logs in to --redis with")
		linkTLS    = fs.Bool("link-tls", false, "the relay's link port serves TLS: the check probes it over TLS")
		linkCert   = fs.String("link-cert", "", "client certificate the check shows a mutual-TLS link port (with --link-key)")
		linkKey    = fs.String("link-key", "", "the key of --link-cert")
		out        = fs.String("out", "", "write the config to this file instead of stdout")
	)
	if code, done := fs.Parse(args); done {
		return code
	}
	if *topology == "" {
		return fs.Fail("--topology is required (keepalived/topology.json in the repository)")
	}
	if *redisURL != "" {
		if _, err := store.ParseURL(*redisURL); err != nil {
			return fs.Fail("--redis: %v", err)
		}
	}
	t, err := keepalived.LoadTopology(*topology)
	if err != nil {
		return fs.Fail("%v", err)
	}
	conf, err := keepalived.Render(t, *hostName, keepalived.Options{
		RelayBin:     *relayBin,
		NotifyScript: *notify,
		TrackFile:    *trackFile,
		ScriptUser:   *scriptUser,
		Interface:    *iface,
		Unicast:      *unicast,
		RedisURL:     *redisURL,
		RedisCA:      *redisCA,
		RedisPass:    *redisPass,
		LinkTLS:      *linkTLS,
		CheckCert:    *linkCert,
		CheckKey:     *linkKey,
	})
	if err != nil {
		return fs.Fail("%v", err)
	}
	if *out == "" {
		if _, err := stdout.Write(conf); err != nil {
			return fs.Fail("write: %v", err)
		}
		return 0
	}
	if err := writeFileAtomic(*out, conf); err != nil {
		return fs.Fail("%v", err)
	}
	return 0
}

// renderLabMain is "relay render-lab": it writes the files of one Vagrant lab
// host into --out (the provisioner runs it on each VM), or the lab's
// Prometheus config to --prometheus. Exit codes: 0 done, 2 anything wrong
// (flags, topology, options, writing).
func renderLabMain(args []string, stdout, stderr io.Writer) int {
	fs := cli.NewCommand("relay render-lab", "relay render-lab: render the Vagrant lab's files from the topology: a host's env files,\n"+
		"firewall.sh, redis.conf and keepalived.conf (by role), or the Prometheus config.\n\n"+
		"Usage: relay render-lab --topology keepalived/topology.json --host msg-1 --out DIR [--interface NIC] [--unicast]\n"+
		"       relay render-lab --topology keepalived/topology.json --prometheus health/prometheus/prometheus.yml\n"+
		"       relay render-lab --topology keepalived/topology.json --grafana vagrant/build/grafana", stdout, stderr)
	var (
		topology   = fs.String("topology", "", "topology file (keepalived/topology.json in the repository); required")
		hostName   = fs.String("host", "", "lab host whose files to render (with --out)")
		out        = fs.String("out", "", "folder to write the host's files into (created if missing)")
		iface      = fs.String("interface", "", "relay hosts: network interface for the VIP and adverts; empty: the topology's")
		unicast    = fs.Bool("unicast", false, "relay hosts: VRRP adverts by unicast to the peer relay instead of multicast")
		prometheus = fs.String("prometheus", "", `write the lab's Prometheus config to this file ("-": stdout)`)
		grafanaDir = fs.String("grafana", "", "write Grafana provisioning (a Prometheus datasource, the chatrelay dashboard) into this folder, for Grafana's paths.provisioning")
		grafanaURL = fs.String("grafana-prometheus", vagrant.DefaultGrafanaPrometheus, "the Prometheus URL the --grafana datasource points at")
	)
	if code, done := fs.Parse(args); done {
		return code
	}
	switch {
	case *topology == "":
		return fs.Fail("--topology is required (keepalived/topology.json in the repository)")
	case (*hostName == "") != (*out == ""):
		return fs.Fail("--host and --out go together: the host's files are written into the folder --out")
	case *hostName == "" && *prometheus == "" && *grafanaDir == "":
		return fs.Fail("nothing to render: give --host and --out, --prometheus, or --grafana")
	}
	t, err := keepalived.LoadTopology(*topology)
	if err != nil {
		return fs.Fail("%v", err)
	}
	if *hostName != "" {
		files, err := vagrant.RenderHost(t, *hostName, vagrant.Options{Interface: *iface, Unicast: *unicast})
		if err != nil {
			return fs.Fail("%v", err)
		}
		if err := os.MkdirAll(*out, 0o755); err != nil {
			return fs.Fail("%v", err)
		}
		for _, f := range files {
			if err := writeFileAtomic(filepath.Join(*out, f.Name), f.Data); err != nil {
				return fs.Fail("%v", err)
			}
		}
	}
	if *grafanaDir != "" {
		dir, err := filepath.Abs(*grafanaDir)
		if err != nil {
			return fs.Fail("--grafana: %v", err)
		}
		files, err := vagrant.RenderGrafana(dir, *grafanaURL)
		if err != nil {
			return fs.Fail("%v", err)
		}
		for _, f := range files {
			p := filepath.Join(dir, f.Name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return fs.Fail("%v", err)
			}
			if err := writeFileAtomic(p, f.Data); err != nil {
				return fs.Fail("%v", err)
			}
		}
	}
	if *prometheus != "" {
		conf, err := vagrant.RenderPrometheus(t)
		if err != nil {
			return fs.Fail("%v", err)
		}
		if *prometheus == "-" {
			_, err = stdout.Write(conf)
		} else {
			err = writeFileAtomic(*prometheus, conf)
		}
		if err != nil {
			return fs.Fail("write: %v", err)
		}
	}
	return 0
}

// writeFileAtomic replaces path with data in one rename, so keepalived (or a
// reload) never reads a half-written config.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// genCertsMain is "relay gen-certs": it makes or renews the Vagrant lab's
// CA and host certificates in --out from the topology (keepalived.WriteCerts
// says what each host gets and when a certificate is reissued).
// scripts/build-vagrant.sh runs it on the VM host. Exit codes: 0 done, 2
// anything wrong.
func genCertsMain(args []string, stdout, stderr io.Writer) int {
	fs := cli.NewCommand("relay gen-certs", "relay gen-certs: make or renew the lab's CA and each host's certificates from the topology.\n"+
		"The CA key stays in --out: copy only ca.pem and a host's own folder to that host.\n\n"+
		"Usage: relay gen-certs --topology keepalived/topology.json --out vagrant/build/pki", stdout, stderr)
	topology := fs.String("topology", "", "topology file (keepalived/topology.json in the repository); required")
	out := fs.String("out", "", "folder for the CA and the hosts' certificates (vagrant/build/pki); required")
	if code, done := fs.Parse(args); done {
		return code
	}
	switch {
	case *topology == "" || *out == "":
		return fs.Fail("--topology and --out are required")
	}
	t, err := keepalived.LoadTopology(*topology)
	if err != nil {
		return fs.Fail("%v", err)
	}
	report, err := keepalived.WriteCerts(t, *out, time.Now())
	if err != nil {
		return fs.Fail("%v", err)
	}
	for _, l := range report {
		fmt.Fprintln(stdout, l)
	}
	return 0
}
