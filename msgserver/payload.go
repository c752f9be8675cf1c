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
	from, rest, ok1 := wire.CutStr8(b)
	to, rest, ok2 := wire.CutStr8(rest)
	if !ok1 || !ok2 || len(rest) < 8 {
		return p, errBadPayload
	}
	// One string for the three fields, cut from it: one allocation, not
	// three, for every message that arrives.
	all := string(b)
	p.From = all[1 : 1+len(from)]
	p.To = all[2+len(from) : 2+len(from)+len(to)]
	p.TS = int64(binary.BigEndian.Uint64(rest))
	p.Content = all[len(b)-len(rest)+8:]
	return p, nil
}

// EncodePayload returns the Forward payload of a chat message, for tools
// and tests that speak the link protocol directly.
func EncodePayload(from, to string, ts int64, content string) []byte {
	return appendPayload(nil, &payload{From: from, To: to, TS: ts, Content: content})
}
