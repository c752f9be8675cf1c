package msgserver

import (
	"strings"
	"testing"
)

// The client protocol's hot path, per message: decode the sender's line,
// encode the recipient's event, and the Forward payload both ways.

// articleChat is the article's chat line.
var articleChat = []byte(`{"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are you"}`)

func BenchmarkDecodeRequest(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(articleChat)))
	for b.Loop() {
		r, cerr := decodeRequest(articleChat)
		if cerr != nil || r.Cmd != "chat" || r.Content != "how are you" {
			b.Fatalf("decodeRequest = %+v, %v", r, cerr)
		}
	}
}

// BenchmarkDecodeRequest100 is the benchmark load's line: 100-byte content.
func BenchmarkDecodeRequest100(b *testing.B) {
	line := []byte(`{"cmd":"chat","recv":"bench-17-b","content":"` + strings.Repeat("x", 100) + `"}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		if r, cerr := decodeRequest(line); cerr != nil || len(r.Content) != 100 {
			b.Fatalf("decodeRequest = %+v, %v", r, cerr)
		}
	}
}

var benchEvent = chatEvent{Event: "chat", ID: "0123456789abcdef0123456789abcdef", From: "zhima201", To: "zhima202",
	Content: "how are you", TS: 1732000000000}

// BenchmarkEncodeChatEvent is the recipient's line, as the server writes it.
func BenchmarkEncodeChatEvent(b *testing.B) {
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchEvent.appendLine(nil))))
	for b.Loop() {
		buf = benchEvent.appendLine(buf[:0])
	}
	if buf[len(buf)-1] != '\n' {
		b.Fatalf("line %q does not end in a newline", buf)
	}
}

// BenchmarkEncodeChatEventStdlib is the same line through encoding/json,
// the encoder it replaced, for comparison.
func BenchmarkEncodeChatEventStdlib(b *testing.B) {
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	b.SetBytes(int64(len(appendJSONLine(nil, benchEvent))))
	for b.Loop() {
		buf = appendJSONLine(buf[:0], benchEvent)
	}
}

// BenchmarkEncodeChatReply is the sender's "relayed" reply.
func BenchmarkEncodeChatReply(b *testing.B) {
	r := reply{Reply: "chat", OK: true, ID: "0123456789abcdef0123456789abcdef", Status: StatusRelayed}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = r.appendLine(buf[:0])
	}
}

func BenchmarkPayloadRoundTrip(b *testing.B) {
	p := &payload{From: "zhima201", To: "zhima202", TS: 1732000000000, Content: strings.Repeat("x", 100)}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	b.SetBytes(int64(len(appendPayload(nil, p))))
	for b.Loop() {
		buf = appendPayload(buf[:0], p)
		got, err := parsePayload(buf)
		if err != nil || got.TS != p.TS || len(got.Content) != len(p.Content) {
			b.Fatalf("parsePayload = %+v, %v", got, err)
		}
	}
}
