package testenv

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/certs"
	"github.com/chatrelay/chatrelay/internal/certs/certstest"
)

// StartRedisTLS starts a redis-server that serves TLS only, with a
// certificate for 127.0.0.1 from ca; clients need no certificate of their
// own (--tls-auth-clients no). Its URL is rediss://; verify it with
// ca.File (msgserver --redis-ca-file).
func StartRedisTLS(t testing.TB, ca *certstest.CA) *Redis {
	t.Helper()
	cert, key := ca.Issue(t, "redis", "127.0.0.1")
	args := []string{"--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca.File, "--tls-auth-clients", "no"}
	return startRedis(t, args, ClientTLS(t, ca, "127.0.0.1"))
}

// ClientTLS is a TLS client config that trusts ca and expects serverName.
func ClientTLS(t testing.TB, ca *certstest.CA, serverName string) *tls.Config {
	t.Helper()
	pool, err := certs.LoadPool(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{MinVersion: certs.MinVersion, RootCAs: pool, ServerName: serverName}
}

// ServerTLS is a server config serving the certificate in certFile and
// keyFile (certs.ServerConfig); it is reloaded only when the test asks.
func ServerTLS(t testing.TB, certFile, keyFile string) (*tls.Config, *certs.Reloader) {
	t.Helper()
	r, err := certs.Load(certFile, keyFile, Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return certs.ServerConfig(r), r
}

// DialTLS connects to a message server's TLS client port and completes
// the handshake, failing the test if either fails.
func DialTLS(t testing.TB, addr string, tc *tls.Config) *Client {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, tc)
	if err != nil {
		t.Fatalf("dial %s over TLS: %v", addr, err)
	}
	return newClient(t, conn)
}

// DialPeerTLS is DialPeer over TLS with tc. It also returns the answer's
// body: a Reject's reason.
func DialPeerTLS(t testing.TB, addr, id string, secret []byte, tc *tls.Config) (*Peer, byte, string) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, tc)
	if err != nil {
		t.Fatalf("dial relay over TLS: %v", err)
	}
	p, typ, body := greetPeer(t, conn, id, secret)
	return p, typ, string(body)
}
