package keepalived

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/chatrelay/chatrelay/internal/certs/pki"
)

// The lab's TLS. Every connection is encrypted: clients to the message
// servers, the relay link (mutual TLS: a message server's id is bound to
// its certificate), and Redis. The certificates come from a CA of the lab's
// own, made on the VM host by `relay gen-certs` (scripts/build-vagrant.sh
// runs it) into vagrant/build/pki/, and by the namespace drill for its own
// lab:
//
//	ca.pem, ca-key.pem      the CA; its key never leaves the VM host
//	<host>/<name>.pem       a certificate of that host, <name>-key.pem its key
//
// Each VM is sent ca.pem and its own folder only, so a VM can be trusted
// with its own identity and nothing more: a compromised message server
// cannot mint a certificate for another one. Renewing is running
// build-vagrant.sh again (it reissues what expires within RenewBefore or no
// longer matches the topology, and keeps the rest) and `vagrant provision`.

// How long the lab's CA and certificates live.
const (
	CAValidity = 10 * 365 * 24 * time.Hour
	// CertValidity is a host certificate's lifetime; RenewBefore is how
	// close to its end gen-certs replaces it.
	CertValidity = 397 * 24 * time.Hour
	RenewBefore  = 30 * 24 * time.Hour
)

// Cert is one certificate of a lab host: its files are Name.pem and
// Name-key.pem.
type Cert struct {
	Host string
	Name string   // "relay", "check", "msgserver" or "redis"
	Leaf pki.Leaf // names, addresses and uses; the validity is WriteCerts'
}

// Certs lists the certificates of the lab's hosts, by role:
//
//	relay      relay.pem: the link port's (server). It names the VIP (an
//	           IP SAN: message servers dial the VIP and check its
//	           certificate for it), the host's address, and every relay's
//	           name (whichever relay holds the VIP answers for it, also to
//	           a server given --link-server-name relay-a)
//	           check.pem: the client certificate keepalived's check shows
//	           the link port (mutual TLS); its common name has a blank, so
//	           it can never be a server id
//	msgserver  msgserver.pem: its client port's (server) and its link's
//	           (client): the common name is the host name, the server id
//	           the relay binds the link to
//	redis      redis.pem: Redis's (server), for the host's address and
//	           127.0.0.1; no DNS name, so it is no server id either
func Certs(t *Topology) []Cert {
	var relays []string
	for _, r := range t.Relays() {
		relays = append(relays, r.Name)
	}
	var vips []net.IP // either relay may hold either VIP
	for _, v := range t.VIPs() {
		vips = append(vips, net.ParseIP(v))
	}
	var out []Cert
	for _, h := range t.Hosts {
		ip := net.ParseIP(h.IP)
		if h.Has(RoleRelay) {
			out = append(out,
				Cert{h.Name, "relay", pki.Leaf{CommonName: h.Name, DNSNames: relays, IPs: append(vips, ip), Server: true}},
				Cert{h.Name, "check", pki.Leaf{CommonName: h.Name + " keepalived check", Client: true}})
		}
		if h.Has(RoleMsgServer) {
			out = append(out, Cert{h.Name, "msgserver", pki.Leaf{CommonName: h.Name, DNSNames: []string{h.Name}, IPs: []net.IP{ip}, Server: true, Client: true}})
		}
		if h.Has(RoleRedis) {
			out = append(out, Cert{h.Name, "redis", pki.Leaf{CommonName: h.Name + " redis", IPs: []net.IP{ip, net.IPv4(127, 0, 0, 1)}, Server: true}})
		}
	}
	return out
}

// CertPaths are a certificate's files under dir (WriteCerts' layout).
func (c Cert) CertPaths(dir string) (cert, key string) {
	return filepath.Join(dir, c.Host, c.Name+".pem"), filepath.Join(dir, c.Host, c.Name+"-key.pem")
}

// WriteCerts makes or renews the lab's CA and certificates in dir: the CA
// is made once and kept; a certificate is (re)issued when it is missing,
// not signed by the CA, within RenewBefore of its end, or no longer what
// Certs asks for (the topology changed). It returns one line per file set
// saying what it did.
func WriteCerts(t *Topology, dir string, now time.Time) ([]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caCert, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	var report []string
	ca, err := pki.LoadCA(caCert, caKey)
	_, certErr := os.Stat(caCert)
	switch {
	case errors.Is(certErr, os.ErrNotExist):
		if ca, err = pki.NewCA("chatrelay lab CA", now.Add(-time.Hour), now.Add(CAValidity)); err != nil {
			return nil, err
		}
		if err := ca.WriteFiles(caCert, caKey); err != nil {
			return nil, err
		}
		report = append(report, "made  "+caCert+" (the key stays here: "+caKey+")")
	case err != nil:
		return nil, fmt.Errorf("%w (remove %s to start a new CA; every VM then needs `vagrant provision`)", err, dir)
	case ca.Cert.NotAfter.Before(now.Add(RenewBefore)):
		return nil, fmt.Errorf("the lab CA %s expires on %s: remove %s to start a new one, then `vagrant provision`", caCert, ca.Cert.NotAfter.Format(time.DateOnly), dir)
	default:
		report = append(report, "kept  "+caCert)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, c := range Certs(t) {
		certFile, keyFile := c.CertPaths(dir)
		if current(certFile, keyFile, c.Leaf, roots, now) {
			report = append(report, "kept  "+certFile)
			continue
		}
		if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
			return nil, err
		}
		l := c.Leaf
		l.NotBefore, l.NotAfter = now.Add(-time.Hour), now.Add(CertValidity)
		if err := ca.IssueFiles(l, certFile, keyFile); err != nil {
			return nil, err
		}
		report = append(report, "made  "+certFile)
	}
	return report, nil
}

// current reports whether certFile is a certificate the CA signed for
// want, not near its end, with its key beside it.
func current(certFile, keyFile string, want pki.Leaf, roots *x509.CertPool, now time.Time) bool {
	c, err := pki.ReadCert(certFile)
	if err != nil {
		return false
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		return false // no key, or not this certificate's
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return false
	}
	var usage []x509.ExtKeyUsage
	if want.Server {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	if want.Client {
		usage = append(usage, x509.ExtKeyUsageClientAuth)
	}
	return c.NotAfter.After(now.Add(RenewBefore)) &&
		c.Subject.CommonName == want.CommonName &&
		slices.Equal(c.DNSNames, want.DNSNames) &&
		slices.EqualFunc(c.IPAddresses, want.IPs, func(a, b net.IP) bool { return a.Equal(b) }) &&
		slices.Equal(c.ExtKeyUsage, usage)
}
