// Package wire is the relay link protocol spoken between message servers and
// the relay: a binary, length-prefixed frame format and its handshake. Both
// sides import it; it is the only definition of the format.
//
// Every frame is
//
//	length  uint32 big-endian: the number of bytes that follow (type + body)
//	type    uint8
//	body    length-1 bytes, laid out per type below
//
// Strings inside bodies are "str8": one length byte, then that many bytes.
// A frame longer than the reader's limit is an error that ends the link.
//
// Handshake (the relay speaks first):
//
//	relay -> server   Challenge  version(1) nonce(32)
//	server -> relay   Auth       version(1) serverID(str8) clientNonce(32) mac(32)
//	                  mac = HMAC-SHA256(secret, "chatrelay auth" | nonce | serverID)
//	relay -> server   Welcome    relayID(str8) mac(32)
//	                  mac = HMAC-SHA256(secret, "chatrelay welcome" | clientNonce | relayID)
//	               or Reject     reason(rest)
//
// The server proves it knows the shared link secret, and the relay proves the
// same back, so neither a telnet user nor a stranger holding the VIP can join.
// During a rotation either side may hold two secrets (Accept, Greet). Until
// the Welcome the relay reads at most MaxAuthFrame bytes of one frame, and
// server ids follow ValidServerID (handshake.go).
// After Welcome both sides may send any of:
//
//	Forward  id(16) origin(str8) dest(str8) payload(rest)      route to dest
//	Ack      id(16) origin(str8) dest(str8) status(1)          dest -> origin
//	Nack     id(16) origin(str8) dest(str8) reason(1)          relay -> origin
//	Kick     origin(str8) dest(str8) user(str8) session(str8)  take over a login
//	Ping     nanos(8)                                          either side
//	Pong     nanos(8)                                          echo of a Ping
//
// The relay routes Forward, Ack and Kick by dest without decoding the rest;
// the payload of Forward is opaque to it.
package wire

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Version is the link protocol version sent in the first frame of each side.
const Version = 1

// Frame types. Their body layouts are in the package comment.
const (
	TypeChallenge byte = 1
	TypeAuth      byte = 2
	TypeWelcome   byte = 3
	TypeReject    byte = 4
	TypeForward   byte = 10
	TypeAck       byte = 11
	TypeNack      byte = 12
	TypeKick      byte = 13
	TypePing      byte = 20
	TypePong      byte = 21
)

// Ack statuses: what the destination server did with a forwarded message.
const (
	AckDelivered byte = 1 // written to the recipient's session
	// 2 was "stored offline", never sent: a destination delivers or says
	// not-here, and the origin stores offline. Not to be reused.
	AckNotHere byte = 3 // the recipient is not on this server: look again
)

// Nack reasons: why the relay could not forward.
const (
	NackNoRoute byte = 1 // no link to the destination server
)

// Sizes of fixed fields.
const (
	IDLen    = 16
	NonceLen = 32
	MACLen   = sha256.Size
	// HeaderLen is the length prefix plus the type byte.
	HeaderLen = 5
	// MaxIDLen is the longest server id, user or session string (str8).
	MaxIDLen = 255
)

// DefaultMaxFrame bounds a frame's length when the caller sets no limit.
const DefaultMaxFrame = 1 << 20

// Errors returned by the decoders. Callers log them and drop the link.
var (
	ErrFrameTooLarge = errors.New("frame exceeds size limit")
	ErrEmptyFrame    = errors.New("frame has no type byte")
	ErrShortBody     = errors.New("frame body too short for its type")
	ErrBadVersion    = errors.New("unsupported link protocol version")
	ErrBadType       = errors.New("unexpected frame type")
)

// ID is a message id: unique per message across all servers and restarts.
type ID [IDLen]byte

// String renders the id as 32 hex digits, the form clients see.
func (id ID) String() string {
	const hexdigits = "0123456789abcdef"
	var b [IDLen * 2]byte
	for i, c := range id {
		b[i*2] = hexdigits[c>>4]
		b[i*2+1] = hexdigits[c&0x0f]
	}
	return string(b[:])
}

// Reader reads frames from a link. The returned body is valid until the next
// call to Next.
type Reader struct {
	r   *bufio.Reader
	max int
	hdr [4]byte // a field, not a local: a local would escape through io.ReadFull
	buf []byte
}

// NewReader reads frames of at most maxFrame bytes (length field) from r.
func NewReader(r io.Reader, maxFrame int) *Reader {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &Reader{r: bufio.NewReaderSize(r, 64<<10), max: maxFrame}
}

// Next reads one frame. raw is the whole frame including its header, for
// passing through unchanged; body is raw without the header.
func (fr *Reader) Next() (typ byte, body, raw []byte, err error) {
	if _, err = io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, nil, nil, err
	}
	n := int(binary.BigEndian.Uint32(fr.hdr[:]))
	if n == 0 {
		return 0, nil, nil, ErrEmptyFrame
	}
	if n > fr.max {
		return 0, nil, nil, fmt.Errorf("%w: %d > %d bytes", ErrFrameTooLarge, n, fr.max)
	}
	if cap(fr.buf) < 4+n {
		fr.buf = make([]byte, 4+n)
	}
	raw = fr.buf[:4+n]
	copy(raw, fr.hdr[:])
	if _, err = io.ReadFull(fr.r, raw[4:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, nil, err
	}
	return raw[4], raw[HeaderLen:], raw, nil
}

// Ready reports whether Next can return without reading from the
// connection: a whole frame is buffered (or a header Next will refuse). A
// reader that batches its writes flushes them when Ready is false.
func (fr *Reader) Ready() bool {
	if fr.r.Buffered() < 4 {
		return false
	}
	h, _ := fr.r.Peek(4)
	n := int(binary.BigEndian.Uint32(h))
	return n == 0 || n > fr.max || fr.r.Buffered() >= 4+n
}

// begin appends a frame header with a placeholder length; finish fills it.
func begin(b []byte, typ byte) ([]byte, int) {
	start := len(b)
	return append(b, 0, 0, 0, 0, typ), start
}

func finish(b []byte, start int) []byte {
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-4))
	return b
}

// AppendStr8 appends s as a str8: a length byte, then s, cut to MaxIDLen
// bytes (names are validated far below that; the cut only guards the
// encoding). Payloads use it for their own fields too.
func AppendStr8(b []byte, s string) []byte {
	if len(s) > MaxIDLen {
		s = s[:MaxIDLen]
	}
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// CutStr8 splits a str8 off the front of b. ok is false when b is too
// short for the length its first byte claims.
func CutStr8(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return nil, b, false
	}
	n := 1 + int(b[0])
	return b[1:n], b[n:], true
}

// cursor decodes a body field by field; the first short read sticks.
type cursor struct {
	b   []byte
	err error
}

func (c *cursor) bytes(n int) []byte {
	if c.err != nil {
		return nil
	}
	if len(c.b) < n {
		c.err = ErrShortBody
		return nil
	}
	v := c.b[:n]
	c.b = c.b[n:]
	return v
}

func (c *cursor) byte1() byte {
	v := c.bytes(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (c *cursor) str8() string {
	n := int(c.byte1())
	return string(c.bytes(n))
}

// str8Bytes is str8 without a copy, for the routing hot path.
func (c *cursor) str8Bytes() []byte {
	n := int(c.byte1())
	return c.bytes(n)
}

// AppendChallenge appends a Challenge frame.
func AppendChallenge(b []byte, nonce [NonceLen]byte) []byte {
	b, s := begin(b, TypeChallenge)
	b = append(b, Version)
	b = append(b, nonce[:]...)
	return finish(b, s)
}

// ParseChallenge decodes a Challenge body.
func ParseChallenge(body []byte) (nonce [NonceLen]byte, err error) {
	c := cursor{b: body}
	if v := c.byte1(); c.err == nil && v != Version {
		return nonce, fmt.Errorf("%w: relay speaks %d, we speak %d", ErrBadVersion, v, Version)
	}
	copy(nonce[:], c.bytes(NonceLen))
	return nonce, c.err
}

// Auth is the server's answer to a Challenge.
type Auth struct {
	ServerID    string
	ClientNonce [NonceLen]byte
	MAC         [MACLen]byte
}

// AppendAuth appends an Auth frame.
func AppendAuth(b []byte, a Auth) []byte {
	b, s := begin(b, TypeAuth)
	b = append(b, Version)
	b = AppendStr8(b, a.ServerID)
	b = append(b, a.ClientNonce[:]...)
	b = append(b, a.MAC[:]...)
	return finish(b, s)
}

// ParseAuth decodes an Auth body.
func ParseAuth(body []byte) (a Auth, err error) {
	c := cursor{b: body}
	if v := c.byte1(); c.err == nil && v != Version {
		return a, fmt.Errorf("%w: server speaks %d, relay speaks %d", ErrBadVersion, v, Version)
	}
	a.ServerID = c.str8()
	copy(a.ClientNonce[:], c.bytes(NonceLen))
	copy(a.MAC[:], c.bytes(MACLen))
	return a, c.err
}

// AuthMAC is the proof a server sends for a relay's challenge nonce.
func AuthMAC(secret []byte, nonce [NonceLen]byte, serverID string) [MACLen]byte {
	return mac(secret, "chatrelay auth", nonce[:], serverID)
}

// WelcomeMAC is the proof the relay sends back for the server's nonce.
func WelcomeMAC(secret []byte, clientNonce [NonceLen]byte, relayID string) [MACLen]byte {
	return mac(secret, "chatrelay welcome", clientNonce[:], relayID)
}

func mac(secret []byte, label string, nonce []byte, id string) [MACLen]byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(label))
	h.Write(nonce)
	h.Write([]byte(id))
	var out [MACLen]byte
	copy(out[:], h.Sum(nil))
	return out
}

// CheckMAC compares two MACs in constant time.
func CheckMAC(got, want [MACLen]byte) bool { return hmac.Equal(got[:], want[:]) }

// AppendWelcome appends a Welcome frame.
func AppendWelcome(b []byte, relayID string, m [MACLen]byte) []byte {
	b, s := begin(b, TypeWelcome)
	b = AppendStr8(b, relayID)
	b = append(b, m[:]...)
	return finish(b, s)
}

// ParseWelcome decodes a Welcome body.
func ParseWelcome(body []byte) (relayID string, m [MACLen]byte, err error) {
	c := cursor{b: body}
	relayID = c.str8()
	copy(m[:], c.bytes(MACLen))
	return relayID, m, c.err
}

// AppendReject appends a Reject frame with a human-readable reason.
func AppendReject(b []byte, reason string) []byte {
	b, s := begin(b, TypeReject)
	b = append(b, reason...)
	return finish(b, s)
}

// Forward is a message on its way from origin server to dest server.
type Forward struct {
	ID      ID
	Origin  string
	Dest    string
	Payload []byte // aliases the frame buffer when parsed
}

// AppendForward appends a Forward frame, growing b at most once.
func AppendForward(b []byte, f *Forward) []byte {
	b = slices.Grow(b, HeaderLen+IDLen+2+min(len(f.Origin), MaxIDLen)+min(len(f.Dest), MaxIDLen)+len(f.Payload))
	b, s := begin(b, TypeForward)
	b = append(b, f.ID[:]...)
	b = AppendStr8(b, f.Origin)
	b = AppendStr8(b, f.Dest)
	b = append(b, f.Payload...)
	return finish(b, s)
}

// AppendForwardFunc appends a Forward frame whose payload fn appends (fn
// only appends): for a sender that encodes the payload straight into the
// frame, without a buffer of its own.
func AppendForwardFunc(b []byte, id ID, origin, dest string, fn func([]byte) []byte) []byte {
	b, s := begin(b, TypeForward)
	b = append(b, id[:]...)
	b = AppendStr8(b, origin)
	b = AppendStr8(b, dest)
	b = fn(b)
	return finish(b, s)
}

// ParseForward decodes a Forward body. Payload aliases body.
func ParseForward(body []byte) (f Forward, err error) {
	c := cursor{b: body}
	copy(f.ID[:], c.bytes(IDLen))
	f.Origin = c.str8()
	f.Dest = c.str8()
	if c.err != nil {
		return f, c.err
	}
	f.Payload = c.b
	return f, nil
}

// Ack reports, from dest back to origin, what happened to message ID.
// The same layout carries a Nack, whose Code is a Nack reason.
type Ack struct {
	ID     ID
	Origin string
	Dest   string
	Code   byte
}

// AppendAck appends an Ack (typ TypeAck) or Nack (typ TypeNack) frame.
func AppendAck(b []byte, typ byte, a Ack) []byte {
	b, s := begin(b, typ)
	b = append(b, a.ID[:]...)
	b = AppendStr8(b, a.Origin)
	b = AppendStr8(b, a.Dest)
	b = append(b, a.Code)
	return finish(b, s)
}

// ParseAck decodes an Ack or Nack body.
func ParseAck(body []byte) (a Ack, err error) {
	c := cursor{b: body}
	copy(a.ID[:], c.bytes(IDLen))
	a.Origin = c.str8()
	a.Dest = c.str8()
	a.Code = c.byte1()
	return a, c.err
}

// Kick tells dest that user has logged in elsewhere and its session there
// (if it is still Session) must close.
type Kick struct {
	Origin  string
	Dest    string
	User    string
	Session string
}

// AppendKick appends a Kick frame.
func AppendKick(b []byte, k Kick) []byte {
	b, s := begin(b, TypeKick)
	b = AppendStr8(b, k.Origin)
	b = AppendStr8(b, k.Dest)
	b = AppendStr8(b, k.User)
	b = AppendStr8(b, k.Session)
	return finish(b, s)
}

// ParseKick decodes a Kick body.
func ParseKick(body []byte) (k Kick, err error) {
	c := cursor{b: body}
	k.Origin = c.str8()
	k.Dest = c.str8()
	k.User = c.str8()
	k.Session = c.str8()
	return k, c.err
}

// RouteOf returns the origin and destination server ids of a Forward, Ack
// or Kick body without copying: what the relay needs to route it. A Nack is
// not routed (the relay originates it), so it is not routable either.
func RouteOf(typ byte, body []byte) (origin, dest []byte, err error) {
	c := cursor{b: body}
	switch typ {
	case TypeForward, TypeAck:
		c.bytes(IDLen)
	case TypeKick:
	default:
		return nil, nil, fmt.Errorf("%w: %d is not routable", ErrBadType, typ)
	}
	origin = c.str8Bytes()
	dest = c.str8Bytes()
	return origin, dest, c.err
}

// AppendPing appends a Ping (or, with TypePong, a Pong) frame.
func AppendPing(b []byte, typ byte, nanos int64) []byte {
	b, s := begin(b, typ)
	b = binary.BigEndian.AppendUint64(b, uint64(nanos))
	return finish(b, s)
}

// ParsePing decodes a Ping or Pong body.
func ParsePing(body []byte) (int64, error) {
	if len(body) < 8 {
		return 0, ErrShortBody
	}
	return int64(binary.BigEndian.Uint64(body)), nil
}
