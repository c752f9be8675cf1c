package vagrant_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/certs/pki"
	"github.com/chatrelay/chatrelay/keepalived"
	"github.com/chatrelay/chatrelay/vagrant"
)

// verify checks certFile against the CA in dir for a use and, if given, a
// name (a DNS name or an IP) and returns the certificate.
func verify(t *testing.T, dir, certFile string, usage x509.ExtKeyUsage, name string) (*x509.Certificate, error) {
	t.Helper()
	ca, err := pki.ReadCert(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.ReadCert(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	_, err = c.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}})
	return c, err
}

// Each lab host gets the certificates of its roles, and they are good for
// what the lab uses them for: every relay's for the VIP (message servers
// dial it) and every relay name; each message server's as a server for its
// address and as a client whose common name is its server id (mutual TLS
// binds the link to it); Redis's for its address; the check's as a client
// only, under a name that can be no server id. Keys are 0600 and the CA's
// key stays in the folder (the Vagrantfile uploads what the hosts need).
func TestLabCertificates(t *testing.T) {
	for _, l := range labs(t) {
		t.Run(l.name, func(t *testing.T) {
			topo := l.load(t)
			dir := filepath.Join(t.TempDir(), "pki")
			if _, err := keepalived.WriteCerts(topo, dir, time.Now()); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(filepath.Join(dir, "ca-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("CA key: %v %v, want mode 0600", err, fi)
			}
			got := map[string][]string{}
			for _, c := range keepalived.Certs(topo) {
				got[c.Host] = append(got[c.Host], c.Name)
				certFile, keyFile := c.CertPaths(dir)
				if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("%s: %v %v, want mode 0600", keyFile, err, fi)
				}
				if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
					t.Errorf("%s %s: %v", c.Host, c.Name, err)
				}
			}
			for _, h := range topo.Hosts {
				var want []string
				if h.Has(keepalived.RoleRelay) {
					want = append(want, "relay", "check")
					for _, name := range append([]string{topo.VIP, h.IP}, relayNames(topo)...) {
						if _, err := verify(t, dir, filepath.Join(dir, h.Name, "relay.pem"), x509.ExtKeyUsageServerAuth, name); err != nil {
							t.Errorf("%s relay.pem not good for %s: %v", h.Name, name, err)
						}
					}
					c, err := verify(t, dir, filepath.Join(dir, h.Name, "check.pem"), x509.ExtKeyUsageClientAuth, "")
					if err != nil || regexp.MustCompile(`^[A-Za-z0-9._-]+$`).MatchString(c.Subject.CommonName) || len(c.DNSNames) > 0 {
						t.Errorf("%s check.pem: %v, common name %q, DNS %v: want a client certificate that names no server id", h.Name, err, c.Subject.CommonName, c.DNSNames)
					}
					if _, err := verify(t, dir, filepath.Join(dir, h.Name, "check.pem"), x509.ExtKeyUsageServerAuth, ""); err == nil {
						t.Errorf("%s check.pem is good as a server certificate", h.Name)
					}
				}
				if h.Has(keepalived.RoleMsgServer) {
					want = append(want, "msgserver")
					p := filepath.Join(dir, h.Name, "msgserver.pem")
					if _, err := verify(t, dir, p, x509.ExtKeyUsageServerAuth, h.IP); err != nil {
						t.Errorf("%s msgserver.pem not good for its client port at %s: %v", h.Name, h.IP, err)
					}
					if c, err := verify(t, dir, p, x509.ExtKeyUsageClientAuth, ""); err != nil || c.Subject.CommonName != h.Name {
						t.Errorf("%s msgserver.pem as a link client: %v, common name %q", h.Name, err, c.Subject.CommonName)
					}
					if _, err := verify(t, dir, p, x509.ExtKeyUsageServerAuth, topo.VIP); err == nil {
						t.Errorf("%s msgserver.pem is good for the VIP: a message server could pose as the relay", h.Name)
					}
				}
				if h.Has(keepalived.RoleRedis) {
					want = append(want, "redis")
					c, err := verify(t, dir, filepath.Join(dir, h.Name, "redis.pem"), x509.ExtKeyUsageServerAuth, h.IP)
					if err != nil || len(c.DNSNames) > 0 || c.Subject.CommonName == h.Name {
						t.Errorf("%s redis.pem: %v, names %q %v: want one for %s that names no server id", h.Name, err, c.Subject.CommonName, c.DNSNames, h.IP)
					}
				}
				if strings.Join(got[h.Name], " ") != strings.Join(want, " ") {
					t.Errorf("%s gets %v, want %v", h.Name, got[h.Name], want)
				}
			}
		})
	}
}

func relayNames(t *keepalived.Topology) []string {
	var out []string
	for _, r := range t.Relays() {
		out = append(out, r.Name)
	}
	return out
}

// Running gen-certs again keeps the CA and every certificate that is still
// right; it reissues those near their end or no longer matching the
// topology (a host's new address), and nothing else.
func TestWriteCertsRenewsOnlyWhatChanged(t *testing.T) {
	topo := labs(t)[0].load(t)
	dir := filepath.Join(t.TempDir(), "pki")
	now := time.Now()
	if _, err := keepalived.WriteCerts(topo, dir, now); err != nil {
		t.Fatal(err)
	}
	snapshot := func() map[string][]byte {
		m := map[string][]byte{}
		_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				m[p], _ = os.ReadFile(p)
			}
			return nil
		})
		return m
	}
	before := snapshot()
	report, err := keepalived.WriteCerts(topo, dir, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range report {
		if !strings.HasPrefix(l, "kept  ") {
			t.Errorf("second run: %q, want everything kept", l)
		}
	}

	// msg-2 moves: its certificate alone is reissued.
	for i := range topo.Hosts {
		if topo.Hosts[i].Name == "msg-2" {
			topo.Hosts[i].IP = "192.168.56.23"
		}
	}
	if _, err := keepalived.WriteCerts(topo, dir, now); err != nil {
		t.Fatal(err)
	}
	after := snapshot()
	for p, b := range after {
		changed := !bytes.Equal(before[p], b)
		if want := strings.Contains(p, "/msg-2/"); changed != want {
			t.Errorf("%s changed %v after msg-2 moved, want %v", p, changed, want)
		}
	}
	c, err := verify(t, dir, filepath.Join(dir, "msg-2", "msgserver.pem"), x509.ExtKeyUsageServerAuth, "192.168.56.23")
	if err != nil || !c.IPAddresses[0].Equal(net.ParseIP("192.168.56.23")) {
		t.Fatalf("msg-2's new certificate: %v", err)
	}
	// Near their end, every certificate is reissued, and the CA kept.
	report, err = keepalived.WriteCerts(topo, dir, now.Add(keepalived.CertValidity-keepalived.RenewBefore/2))
	if err != nil {
		t.Fatal(err)
	}
	made := 0
	for _, l := range report {
		if strings.HasPrefix(l, "made  ") {
			made++
		}
		if strings.Contains(l, "ca.pem") && !strings.HasPrefix(l, "kept  ") {
			t.Errorf("the CA was not kept: %q", l)
		}
	}
	if made != len(keepalived.Certs(topo)) {
		t.Errorf("near their end, %d certificates reissued, want all %d:\n%s", made, len(keepalived.Certs(topo)), strings.Join(report, "\n"))
	}

	// A CA certificate whose key is gone is not silently replaced.
	if err := os.Remove(filepath.Join(dir, "ca-key.pem")); err != nil {
		t.Fatal(err)
	}
	if _, err := keepalived.WriteCerts(topo, dir, now); err == nil || !strings.Contains(err.Error(), "remove "+dir) {
		t.Fatalf("CA key missing: %v, want an error saying to remove the folder", err)
	}
}

// Every TLS file the rendered files name is one provision.sh installs.
func TestRenderedTLSPathsAreInstalled(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root(t), "vagrant", "provision", "provision.sh"))
	if err != nil {
		t.Fatal(err)
	}
	provision := string(b)
	path := regexp.MustCompile(`(` + regexp.QuoteMeta(vagrant.TLSDir) + `|` + regexp.QuoteMeta(vagrant.RedisTLSDir) + `)/[a-z-]+\.pem`)
	seen := 0
	for _, l := range labs(t) {
		for host, files := range l.files(t) {
			for name, data := range files {
				for _, p := range path.FindAllString(string(data), -1) {
					seen++
					if !strings.Contains(provision, " "+p+"\n") {
						t.Errorf("%s %s %s names %s, which provision.sh does not install", l.name, host, name, p)
					}
				}
			}
		}
	}
	if seen == 0 {
		t.Fatal("no rendered file names a TLS file")
	}
}
