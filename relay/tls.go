package relay

import (
	"crypto/tls"
	"errors"
	"net"
	"slices"
)

// TLS on the link port (Config.TLS). The TLS handshake comes first, within
// the handshake timeout; the link handshake (the shared secret, both ways)
// then runs inside it, unchanged, as the proof that the peer is one of
// ours. A failed TLS handshake is logged at debug level and counted: a
// plaintext client, a scanner or a server that does not trust this relay's
// certificate gets nothing. With mutual TLS (Config.TLS asks for and
// verifies client certificates) a server's id is bound to its
// certificate: the id its Auth claims must be the certificate's common
// name or one of its DNS names, so the link secret alone cannot pass for
// another server.

// startTLS runs the TLS handshake on conn, if the link port serves TLS,
// and returns the connection to speak the link protocol on; false when
// the handshake failed (conn is closed).
func (r *Relay) startTLS(conn net.Conn, remote string) (net.Conn, bool) {
	if r.cfg.TLS == nil {
		return conn, true
	}
	tc := tls.Server(conn, r.cfg.TLS)
	if err := tc.Handshake(); err != nil { // within serveConn's deadline; Close closes conn
		if r.ctx.Err() == nil {
			r.m.tlsHandshakeFailed()
			r.log.Debug("link TLS handshake failed", "remote", remote, "err", err)
		}
		conn.Close()
		return nil, false
	}
	return tc, true
}

// errIDNotCertified is the Reject reason for a server whose claimed id is
// not a name of its client certificate.
var errIDNotCertified = errors.New("server id does not match its certificate")

// certifiedID is the link handshake's check of a claimed server id against
// the client certificate conn presented: with mutual TLS, the id must be
// the certificate's common name or one of its DNS names. Without a client
// certificate (plaintext, or TLS without client certificates) the secret
// alone vouches for the id.
func certifiedID(conn net.Conn) func(serverID string) error {
	return func(id string) error {
		tc, ok := conn.(*tls.Conn)
		if !ok {
			return nil
		}
		certs := tc.ConnectionState().PeerCertificates
		if len(certs) == 0 {
			return nil
		}
		if leaf := certs[0]; leaf.Subject.CommonName == id || slices.Contains(leaf.DNSNames, id) {
			return nil
		}
		return errIDNotCertified
	}
}
