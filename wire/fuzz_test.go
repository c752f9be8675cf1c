package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// FuzzReader feeds arbitrary bytes to a Reader and every frame it returns to
// the decoders. Nothing may panic, and whatever decodes must encode back to
// the same values. The encoding is canonical up to trailing bytes, which the
// fixed-layout parsers ignore: the re-encoded body must be a prefix of the
// body read (for Forward, whose payload is the rest, the whole body).
//
// Seeds are in testdata/fuzz/FuzzReader.
func FuzzReader(f *testing.F) {
	const max = 4096
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := NewReader(bytes.NewReader(data), max)
		for {
			typ, body, raw, err := fr.Next()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
					!errors.Is(err, ErrEmptyFrame) && !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("Next: unexpected error %v", err)
				}
				return
			}
			if len(raw) < HeaderLen || len(raw) > 4+max || raw[4] != typ ||
				!bytes.Equal(raw[HeaderLen:], body) || int(binary.BigEndian.Uint32(raw)) != len(raw)-4 {
				t.Fatalf("Next: inconsistent frame: type %d, body % x, raw % x", typ, body, raw)
			}
			checkFrame(t, typ, body)
		}
	})
}

// checkFrame decodes body as its type says and checks the round trip. Every
// other decoder is run on it too, since a peer may send any bytes under any
// type.
func checkFrame(t *testing.T, typ byte, body []byte) {
	t.Helper()
	orig := append([]byte(nil), body...)
	switch typ {
	case TypeChallenge:
		nonce, err := ParseChallenge(body)
		if err == nil {
			re := reencode(t, AppendChallenge(nil, nonce), typ)
			got, err := ParseChallenge(re)
			if err != nil || got != nonce {
				t.Fatalf("Challenge round trip: %x, %v; want %x", got, err, nonce)
			}
			mustPrefix(t, "Challenge", re, orig)
		}
	case TypeAuth:
		a, err := ParseAuth(body)
		if err == nil {
			re := reencode(t, AppendAuth(nil, a), typ)
			got, err := ParseAuth(re)
			if err != nil || got != a {
				t.Fatalf("Auth round trip: %+v, %v; want %+v", got, err, a)
			}
			mustPrefix(t, "Auth", re, orig)
		}
	case TypeWelcome:
		id, m, err := ParseWelcome(body)
		if err == nil {
			re := reencode(t, AppendWelcome(nil, id, m), typ)
			gid, gm, err := ParseWelcome(re)
			if err != nil || gid != id || gm != m {
				t.Fatalf("Welcome round trip: %q %x, %v; want %q %x", gid, gm, err, id, m)
			}
			mustPrefix(t, "Welcome", re, orig)
		}
	case TypeReject:
		re := reencode(t, AppendReject(nil, string(body)), typ)
		if !bytes.Equal(re, orig) {
			t.Fatalf("Reject round trip: % x, want % x", re, orig)
		}
	case TypeForward:
		fw, err := ParseForward(body)
		if err == nil {
			checkRoute(t, typ, body, fw.Origin, fw.Dest)
			re := reencode(t, AppendForward(nil, &fw), typ)
			got, err := ParseForward(re)
			if err != nil || got.ID != fw.ID || got.Origin != fw.Origin || got.Dest != fw.Dest || !bytes.Equal(got.Payload, fw.Payload) {
				t.Fatalf("Forward round trip: %+v, %v; want %+v", got, err, fw)
			}
			if !bytes.Equal(re, orig) {
				t.Fatalf("Forward re-encoded as % x, want % x", re, orig)
			}
		}
	case TypeAck, TypeNack:
		a, err := ParseAck(body)
		if err == nil {
			if typ == TypeAck {
				checkRoute(t, typ, body, a.Origin, a.Dest)
			}
			re := reencode(t, AppendAck(nil, typ, a), typ)
			got, err := ParseAck(re)
			if err != nil || got != a {
				t.Fatalf("Ack round trip: %+v, %v; want %+v", got, err, a)
			}
			mustPrefix(t, "Ack", re, orig)
		}
	case TypeKick:
		k, err := ParseKick(body)
		if err == nil {
			checkRoute(t, typ, body, k.Origin, k.Dest)
			re := reencode(t, AppendKick(nil, k), typ)
			got, err := ParseKick(re)
			if err != nil || got != k {
				t.Fatalf("Kick round trip: %+v, %v; want %+v", got, err, k)
			}
			mustPrefix(t, "Kick", re, orig)
		}
	case TypePing, TypePong:
		n, err := ParsePing(body)
		if err == nil {
			re := reencode(t, AppendPing(nil, typ, n), typ)
			got, err := ParsePing(re)
			if err != nil || got != n {
				t.Fatalf("Ping round trip: %d, %v; want %d", got, err, n)
			}
			mustPrefix(t, "Ping", re, orig)
		}
	}

	// Any decoder on any body: errors are fine, panics are not.
	_, _ = ParseChallenge(body)
	_, _ = ParseAuth(body)
	_, _, _ = ParseWelcome(body)
	_, _ = ParseForward(body)
	_, _ = ParseAck(body)
	_, _ = ParseKick(body)
	_, _ = ParsePing(body)
	_, _, err := RouteOf(typ, body)
	switch typ {
	case TypeForward, TypeAck, TypeKick:
		if err != nil && !errors.Is(err, ErrShortBody) {
			t.Fatalf("RouteOf(%d): %v, want nil or ErrShortBody", typ, err)
		}
	default:
		if !errors.Is(err, ErrBadType) {
			t.Fatalf("RouteOf(%d): %v, want ErrBadType", typ, err)
		}
	}
	if !bytes.Equal(body, orig) {
		t.Fatalf("a decoder modified the body")
	}
}

// reencode reads the frame an Append function produced back through a Reader
// and returns its body.
func reencode(t *testing.T, frame []byte, typ byte) []byte {
	t.Helper()
	fr := NewReader(bytes.NewReader(frame), DefaultMaxFrame)
	gotTyp, body, _, err := fr.Next()
	if err != nil || gotTyp != typ {
		t.Fatalf("re-encoded frame: type %d, %v; want type %d", gotTyp, err, typ)
	}
	if _, _, _, err := fr.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("re-encoded frame: trailing data (%v)", err)
	}
	return body
}

func mustPrefix(t *testing.T, what string, re, body []byte) {
	t.Helper()
	if !bytes.HasPrefix(body, re) {
		t.Fatalf("%s re-encoded as % x, not a prefix of % x", what, re, body)
	}
}

// checkRoute checks that RouteOf agrees with the full decoder.
func checkRoute(t *testing.T, typ byte, body []byte, origin, dest string) {
	t.Helper()
	o, d, err := RouteOf(typ, body)
	if err != nil || string(o) != origin || string(d) != dest {
		t.Fatalf("RouteOf(%d) = %q, %q, %v; the decoder says %q, %q", typ, o, d, err, origin, dest)
	}
}
