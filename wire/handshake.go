package wire

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"
)

// MinSecretLen is the shortest link secret either side accepts.
const MinSecretLen = 16

// MaxServerIDLen is the longest server id: ids name servers in presence
// records, logs and metric labels, so they are short and plain.
const MaxServerIDLen = 64

// MaxAuthFrame is the length field of the largest Auth frame the encoding
// allows (a server id of MaxIDLen bytes). It is all the relay reads from a
// peer before the peer has proved the secret: a first frame that claims
// more ends the connection before anything is allocated for it.
const MaxAuthFrame = 1 + 1 + 1 + MaxIDLen + NonceLen + MACLen

// maxGreetFrame bounds the relay's frames a server reads in the handshake
// (Challenge, Welcome, or a Reject with its reason).
const maxGreetFrame = 4096

// Handshake errors. The relay logs ErrProbe quietly (it is the health check
// probing the port); a server stops backing off quickly on ErrRejected only
// when the relay said why.
var (
	// ErrProbe is a peer that took the challenge and hung up without a word.
	ErrProbe = errors.New("closed before auth")
	// ErrRejected is a relay that refused the server or failed to prove the secret.
	ErrRejected = errors.New("relay refused the link")
)

// ValidServerID reports whether id may name a message server: 1 to
// MaxServerIDLen ASCII letters, digits, '.', '_' or '-'. Both sides check
// it: a server's configuration, and the relay on every Auth.
func ValidServerID(id string) bool {
	if id == "" || len(id) > MaxServerIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}

// ServerIDRule says what ValidServerID accepts, for error messages.
const ServerIDRule = "1..64 letters, digits, '.', '_' or '-'"

// Accept runs the relay's half of the handshake on a fresh connection: it
// sends a challenge, checks the server's proof of one of secrets (the
// current link secret and, during a rotation, the next one; empty ones are
// skipped), and answers with a Welcome that proves the same secret back.
// It returns the authenticated server id.
//
// admit, if not nil, is asked about the authenticated id before the
// Welcome; its error is sent as the Reject reason. A refused peer is sent a
// Reject with the reason before the error is returned; the server id is
// returned with the error when a valid one was claimed.
//
// Accept reads nothing past the Auth frame and at most MaxAuthFrame bytes
// of it, so a stranger costs the relay a few hundred bytes, and the caller
// reads the established link with a Reader of its own. The caller owns
// deadlines.
func Accept(rw io.ReadWriter, relayID string, admit func(serverID string) error, secrets ...[]byte) (serverID string, err error) {
	var nonce [NonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", fmt.Errorf("make nonce: %w", err)
	}
	if _, err := rw.Write(AppendChallenge(nil, nonce)); err != nil {
		return "", fmt.Errorf("send challenge: %w", err)
	}
	reject := func(id, reason string, err error) (string, error) {
		_, _ = rw.Write(AppendReject(nil, reason))
		return id, err
	}
	typ, body, err := readHandshakeFrame(rw, MaxAuthFrame)
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		return "", ErrProbe
	case errors.Is(err, ErrFrameTooLarge) || errors.Is(err, ErrEmptyFrame):
		return reject("", "expected auth frame", fmt.Errorf("read auth: %w", err))
	case err != nil:
		return "", fmt.Errorf("read auth: %w", err)
	}
	if typ != TypeAuth {
		return reject("", "expected auth frame", fmt.Errorf("%w: got %d before auth", ErrBadType, typ))
	}
	a, err := ParseAuth(body)
	if err != nil {
		return reject("", err.Error(), fmt.Errorf("parse auth: %w", err))
	}
	if !ValidServerID(a.ServerID) {
		const why = "bad server id"
		return reject("", why+": want "+ServerIDRule, fmt.Errorf("%s %.80q", why, a.ServerID))
	}
	var secret []byte
	for _, s := range secrets {
		if len(s) > 0 && CheckMAC(a.MAC, AuthMAC(s, nonce, a.ServerID)) {
			secret = s
			break
		}
	}
	if secret == nil {
		const why = "authentication failed: wrong link secret"
		return reject(a.ServerID, why, errors.New(why))
	}
	if admit != nil {
		if err := admit(a.ServerID); err != nil {
			return reject(a.ServerID, err.Error(), err)
		}
	}
	if _, err := rw.Write(AppendWelcome(nil, relayID, WelcomeMAC(secret, a.ClientNonce, relayID))); err != nil {
		return a.ServerID, fmt.Errorf("send welcome: %w", err)
	}
	return a.ServerID, nil
}

// Greet runs the message server's half of the handshake: it answers the
// relay's challenge as serverID with the first of secrets (its current link
// secret) and accepts the relay's proof of any of them (a relay may answer
// with the next secret during a rotation; empty ones are skipped). It
// returns the relay's id. Like Accept it reads nothing past the Welcome:
// frames the relay sends right after it are left for the caller's Reader.
// The caller owns deadlines.
func Greet(rw io.ReadWriter, serverID string, secrets ...[]byte) (relayID string, err error) {
	if len(secrets) == 0 || len(secrets[0]) == 0 {
		return "", errors.New("no link secret")
	}
	typ, body, err := readHandshakeFrame(rw, maxGreetFrame)
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
	a := Auth{ServerID: serverID, MAC: AuthMAC(secrets[0], nonce, serverID)}
	if _, err := rand.Read(a.ClientNonce[:]); err != nil {
		return "", fmt.Errorf("make nonce: %w", err)
	}
	if _, err := rw.Write(AppendAuth(nil, a)); err != nil {
		return "", fmt.Errorf("send auth: %w", err)
	}
	typ, body, err = readHandshakeFrame(rw, maxGreetFrame)
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
	for _, s := range secrets {
		if len(s) > 0 && CheckMAC(m, WelcomeMAC(s, a.ClientNonce, relayID)) {
			return relayID, nil
		}
	}
	return "", fmt.Errorf("%w: relay %q did not prove the link secret", ErrRejected, relayID)
}

// ReadChallenge reads the relay's first frame and checks it is a valid
// challenge, without answering: the keepalived check's port probe.
func ReadChallenge(r io.Reader) error {
	typ, body, err := readHandshakeFrame(r, 1024)
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

// readHandshakeFrame reads one frame of at most maxFrame bytes (length field) with
// exact reads: unlike a Reader it buffers nothing past the frame and
// allocates only what the frame holds, once its header is within the limit.
// The handshake's frames are few and small.
func readHandshakeFrame(r io.Reader, maxFrame int) (typ byte, body []byte, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n == 0 {
		return 0, nil, ErrEmptyFrame
	}
	if n > maxFrame {
		return 0, nil, fmt.Errorf("%w: %d > %d bytes", ErrFrameTooLarge, n, maxFrame)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return buf[0], buf[1:], nil
}
