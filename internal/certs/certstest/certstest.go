// Package certstest makes a throwaway certificate authority and certificates
// for tests of the TLS ports: real X.509, made with crypto/x509 (package
// pki), written to the test's temporary directory.
package certstest

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/certs/pki"
)

// CA is a test certificate authority.
type CA struct {
	// File is the CA certificate's PEM file, for --*-ca flags.
	File string
	ca   *pki.CA
	dir  string
}

// NewCA makes a CA valid for a day, its files under t.TempDir().
func NewCA(t testing.TB) *CA {
	t.Helper()
	ca, err := pki.NewCA("chatrelay test CA", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &CA{File: filepath.Join(dir, "ca.pem"), ca: ca, dir: dir}
	if err := ca.WriteFiles(c.File, filepath.Join(dir, "ca-key.pem")); err != nil {
		t.Fatal(err)
	}
	return c
}

// Issue makes a certificate for name (its common name and a DNS name),
// valid for the given hosts (IP addresses or DNS names) as a server and as
// a client, and returns its certificate and key files.
func (ca *CA) Issue(t testing.TB, name string, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	return ca.IssueValid(t, name, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour), hosts...)
}

// IssueValid is Issue with an explicit validity window (for expired certificates).
func (ca *CA) IssueValid(t testing.TB, name string, notBefore, notAfter time.Time, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	l := pki.Leaf{CommonName: name, DNSNames: []string{name}, NotBefore: notBefore, NotAfter: notAfter, Server: true, Client: true}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			l.IPs = append(l.IPs, ip)
		} else {
			l.DNSNames = append(l.DNSNames, h)
		}
	}
	dir, err := os.MkdirTemp(ca.dir, name+"-*")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := ca.ca.IssueFiles(l, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// Reissue writes a new certificate for name over certFile and keyFile, as
// a renewal does.
func (ca *CA) Reissue(t testing.TB, name, certFile, keyFile string, hosts ...string) {
	t.Helper()
	c, k := ca.Issue(t, name, hosts...)
	for _, p := range [][2]string{{k, keyFile}, {c, certFile}} {
		if err := os.Rename(p[0], p[1]); err != nil {
			t.Fatal(err)
		}
	}
}
