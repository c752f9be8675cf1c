package wire

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"syscall"
)

// MinSecretLen is the shortest link secret either side accepts.
const MinSecretLen = 16

// Handshake errors. The relay logs ErrProbe quietly (it is the health check
// probing the port); a server stops backing off quickly on ErrRejected only
// when the relay said why.
var (
	// ErrProbe is a peer that took the challenge and hung up without a word.
	ErrProbe = errors.New("closed before auth")
	// ErrRejected is a relay that refused the server or failed to prove the secret.
	ErrRejected = errors.New("relay refused the link")
)

// Accept runs the relay's half of the handshake on a fresh connection: it
// sends a challenge, checks the server's proof of secret, and answers with a
// Welcome that proves the secret back. It returns the authenticated server
// id. A refused peer is sent a Reject with the reason before the error is
// returned; the server id is returned with the error when one was claimed.
// Each check, once the secret is proven, may still refuse the id it claims
// (the relay binds ids to client certificates so): its error is the
// Reject's reason. The caller owns deadlines.
func Accept(rw io.ReadWriter, fr *Reader, secret []byte, relayID string, checks ...func(serverID string) error) (serverID string, err error) {
	var nonce [NonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", fmt.Errorf("make nonce: %w", err)
	}
	if _, err := rw.Write(AppendChallenge(nil, nonce)); err != nil {
		return "", fmt.Errorf("send challenge: %w", err)
	}
	typ, body, _, err := fr.Next()
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		return "", ErrProbe
	}
	if err != nil {
		return "", fmt.Errorf("read auth: %w", err)
	}
	reject := func(id, reason string, err error) (string, error) {
		_, _ = rw.Write(AppendReject(nil, reason))
		return id, err
	}
	if typ != TypeAuth {
		return reject("", "expected auth frame", fmt.Errorf("%w: got %d before auth", ErrBadType, typ))
	}
	a, err := ParseAuth(body)
	if err != nil {
		return reject("", err.Error(), fmt.Errorf("parse auth: %w", err))
	}
	if a.ServerID == "" {
		return reject("", "empty server id", errors.New("empty server id"))
	}
	if !CheckMAC(a.MAC, AuthMAC(secret, nonce, a.ServerID)) {
		const why = "authentication failed: wrong link secret"
		return reject(a.ServerID, why, errors.New(why))
	}
	for _, check := range checks {
		if err := check(a.ServerID); err != nil {
			return reject(a.ServerID, err.Error(), err)
		}
	}
	if _, err := rw.Write(AppendWelcome(nil, relayID, WelcomeMAC(secret, a.ClientNonce, relayID))); err != nil {
		return a.ServerID, fmt.Errorf("send welcome: %w", err)
	}
	return a.ServerID, nil
}

// Greet runs the message server's half of the handshake: it answers the
// relay's challenge as serverID and checks the relay's proof of the same
// secret. It returns the relay's id. The caller owns deadlines.
func Greet(rw io.ReadWriter, secret []byte, serverID string) (relayID string, err error) {
	fr := NewReader(rw, 4096)
	typ, body, _, err := fr.Next()
	if err != nil {
		return "", fmt.Errorf("read challenge: %w", err)
	}
	if typ != TypeChallenge {
		return "", fmt.Errorf("%w: expected challenge, got frame type %d", ErrBadType, typ)
	}
	nonce, err := ParseChallenge(body)
	if err != nil {
		return "", fmt.Errorf("parse challenge: %w", err)
	}
	a := Auth{ServerID: serverID, MAC: AuthMAC(secret, nonce, serverID)}
	if _, err := rand.Read(a.ClientNonce[:]); err != nil {
		return "", fmt.Errorf("make nonce: %w", err)
	}
	if _, err := rw.Write(AppendAuth(nil, a)); err != nil {
		return "", fmt.Errorf("send auth: %w", err)
	}
	typ, body, _, err = fr.Next()
	if err != nil {
		return "", fmt.Errorf("read welcome: %w", err)
	}
	switch typ {
	case TypeWelcome:
	case TypeReject:
		if len(body) > 200 {
			body = body[:200]
		}
		return "", fmt.Errorf("%w: %s", ErrRejected, body)
	default:
		return "", fmt.Errorf("%w: expected welcome, got frame type %d", ErrBadType, typ)
	}
	relayID, m, err := ParseWelcome(body)
	if err != nil {
		return "", fmt.Errorf("parse welcome: %w", err)
	}
	if !CheckMAC(m, WelcomeMAC(secret, a.ClientNonce, relayID)) {
		return "", fmt.Errorf("%w: relay %q did not prove the link secret", ErrRejected, relayID)
	}
	return relayID, nil
}

// ReadChallenge reads the relay's first frame and checks it is a valid
// challenge, without answering: the keepalived check's port probe.
func ReadChallenge(r io.Reader) error {
	typ, body, _, err := NewReader(r, 1024).Next()
	if err != nil {
		return fmt.Errorf("no challenge: %w", err)
	}
	if typ != TypeChallenge {
		return fmt.Errorf("first frame has type %d, not a challenge", typ)
	}
	if _, err := ParseChallenge(body); err != nil {
		return fmt.Errorf("bad challenge: %w", err)
	}
	return nil
}
