package msgserver

import (
	"encoding/binary"
	"errors"
	"slices"

	"github.com/chatrelay/chatrelay/wire"
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
	b = wire.AppendStr8(b, p.From)
	b = wire.AppendStr8(b, p.To)
	b = binary.BigEndian.AppendUint64(b, uint64(p.TS))
	return append(b, p.Content...)
}

func parsePayload(b []byte) (payload, error) {
	var p payload
	from, b, ok1 := wire.CutStr8(b)
	to, b, ok2 := wire.CutStr8(b)
	if !ok1 || !ok2 || len(b) < 8 {
		return p, errBadPayload
	}
	p.From, p.To = string(from), string(to)
	p.TS = int64(binary.BigEndian.Uint64(b))
	p.Content = string(b[8:])
	return p, nil
}

// EncodePayload returns the Forward payload of a chat message, for tools
// and tests that speak the link protocol directly.
func EncodePayload(from, to string, ts int64, content string) []byte {
	return appendPayload(nil, &payload{From: from, To: to, TS: ts, Content: content})
}
