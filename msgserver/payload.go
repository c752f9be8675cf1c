package msgserver

import (
	"encoding/binary"
	"errors"
	"slices"
)

// The payload of a Forward frame, opaque to the relay:
//
//	from  str8     sender's user name
//	to    str8     recipient's user name
//	ts    int64    server time of acceptance, unix milliseconds, big-endian
//	content        the rest
type payload struct {
	From, To string
	TS       int64
	Content  string
}

var errBadPayload = errors.New("malformed chat payload")

func appendPayload(b []byte, p *payload) []byte {
	b = slices.Grow(b, 2+min(len(p.From), 255)+min(len(p.To), 255)+8+len(p.Content))
	b = appendStr8(b, p.From)
	b = appendStr8(b, p.To)
	b = binary.BigEndian.AppendUint64(b, uint64(p.TS))
	return append(b, p.Content...)
}

func parsePayload(b []byte) (payload, error) {
	var p payload
	str := func() (string, bool) {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return "", false
		}
		n := int(b[0])
		s := string(b[1 : 1+n])
		b = b[1+n:]
		return s, true
	}
	var ok1, ok2 bool
	p.From, ok1 = str()
	p.To, ok2 = str()
	if !ok1 || !ok2 || len(b) < 8 {
		return p, errBadPayload
	}
	p.TS = int64(binary.BigEndian.Uint64(b))
	p.Content = string(b[8:])
	return p, nil
}

// EncodePayload returns the Forward payload of a chat message, for tools
// and tests that speak the link protocol directly.
func EncodePayload(from, to string, ts int64, content string) []byte {
	return appendPayload(nil, &payload{From: from, To: to, TS: ts, Content: content})
}

// appendStr8 appends a length byte and s, cut to 255 bytes (names are
// validated far below that; the cut only guards the encoding).
func appendStr8(b []byte, s string) []byte {
	if len(s) > 255 {
		s = s[:255]
	}
	b = append(b, byte(len(s)))
	return append(b, s...)
}
