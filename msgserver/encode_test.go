package msgserver

import (
	"bytes"
	"encoding/json"
	"testing"
)

// awkward strings: everything encoding/json escapes, and what it copies.
var awkward = []string{
	"", "how are you", "zhima201", "你好，世界", "emoji 😀 ok", "tab\there", "new\nline", "cr\r",
	`quote " and backslash \`, "<script>alert(1)</script> & co", "nul \x00 bel \x07 esc \x1b del \x7f",
	"line sep \u2028 para sep \u2029", "invalid \xff\xfe utf-8", "truncated \xe4\xbd", "replacement \ufffd char",
	"c1 \u0085 control",
}

func wantLine(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// The hand-written encoders write exactly what encoding/json writes.
func TestHandEncodersMatchEncodingJSON(t *testing.T) {
	for _, s := range awkward {
		replies := []reply{
			{Reply: "chat", OK: true, ID: s, Status: StatusRelayed, Ref: s},
			{Reply: s, OK: false, Code: CodeBadJSON, Error: s},
			{Reply: "login", OK: true, Name: s, Session: s, Server: s},
			{Reply: "ping", OK: true},
		}
		for _, r := range replies {
			if got, want := r.appendLine(nil), wantLine(t, r); !bytes.Equal(got, want) {
				t.Errorf("reply %+v:\n got %s\nwant %s", r, got, want)
			}
		}
		for _, offline := range []bool{false, true} {
			e := chatEvent{Event: "chat", ID: "0123456789abcdef", From: s, To: s + "2", Content: s, TS: 1732000000123, Offline: offline}
			if got, want := e.appendLine(nil), wantLine(t, e); !bytes.Equal(got, want) {
				t.Errorf("event %+v:\n got %s\nwant %s", e, got, want)
			}
		}
	}
}

// FuzzAppendJSONString checks the string encoder against encoding/json on
// any input. Seeds are the awkward strings.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range awkward {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendJSONString([]byte("x"), s); !bytes.Equal(got[1:], want) || got[0] != 'x' {
			t.Fatalf("appendJSONString(%q) = %s, want %s", s, got, want)
		}
	})
}
