package msgserver

import (
	"bytes"
	"testing"
	"unicode"
	"unicode/utf8"
)

// FuzzDecodeRequest feeds arbitrary client lines to the request decoder and
// the name check. Seeds are in testdata/fuzz/FuzzDecodeRequest.
func FuzzDecodeRequest(f *testing.F) {
	const maxName = 64
	f.Fuzz(func(t *testing.T, line []byte) {
		orig := append([]byte(nil), line...)
		r, cerr := decodeRequest(line)
		if cerr == nil {
			switch r.Cmd {
			case "login", "chat", "ping", "logout":
			default:
				t.Fatalf("decodeRequest(%q) accepted cmd %q", line, r.Cmd)
			}
			if !utf8.Valid(line) {
				t.Fatalf("decodeRequest accepted invalid UTF-8 %q", line)
			}
		} else if cerr.code != CodeBadJSON && cerr.code != CodeUnknownCmd {
			t.Fatalf("decodeRequest(%q): code %q, want %s or %s", line, cerr.code, CodeBadJSON, CodeUnknownCmd)
		}
		if !bytes.Equal(line, orig) {
			t.Fatalf("decodeRequest modified its input")
		}

		name := string(line)
		if n, e := normalizeName(name, maxName); e == nil {
			if len(n) < 1 || len(n) > maxName {
				t.Fatalf("normalizeName accepted %q as a %d-byte name", name, len(n))
			}
			if !utf8.ValidString(n) {
				t.Fatalf("normalizeName accepted invalid UTF-8 %q", name)
			}
			for _, c := range n {
				if unicode.IsControl(c) || c == utf8.RuneError {
					t.Fatalf("normalizeName accepted %q with control or replacement character %U", name, c)
				}
			}
		} else if e.code != CodeBadName {
			t.Fatalf("normalizeName(%q): code %q, want %s", name, e.code, CodeBadName)
		}
		// Fields of a decoded request go through the same check.
		for _, s := range []string{r.Name, r.Send, r.Recv} {
			if n, e := normalizeName(s, maxName); e == nil && (!utf8.ValidString(n) || len(n) > maxName) {
				t.Fatalf("normalizeName accepted decoded field %q", s)
			}
		}
	})
}

// FuzzPayload checks the chat payload carried in Forward frames: parsePayload
// must survive any bytes, whatever parses must encode back to the same bytes
// (the format is canonical: content is the rest), and any payload with
// From and To of at most 255 bytes must survive appendPayload/parsePayload.
// Seeds are in testdata/fuzz/FuzzPayload.
func FuzzPayload(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, from, to string, ts int64, content string) {
		if p, err := parsePayload(data); err == nil {
			if re := appendPayload(nil, &p); !bytes.Equal(re, data) {
				t.Fatalf("parsePayload(%q) = %+v, which encodes as %q", data, p, re)
			}
		} else if err != errBadPayload {
			t.Fatalf("parsePayload: %v, want errBadPayload", err)
		}

		if len(from) > 255 || len(to) > 255 {
			return // str8 cannot carry these; callers limit names to 255 bytes
		}
		want := payload{From: from, To: to, TS: ts, Content: content}
		prefix := []byte("prefix")
		b := appendPayload(append([]byte(nil), prefix...), &want)
		if !bytes.HasPrefix(b, prefix) {
			t.Fatalf("appendPayload overwrote the buffer it appends to")
		}
		got, err := parsePayload(b[len(prefix):])
		if err != nil || got != want {
			t.Fatalf("round trip of %+v: %+v, %v", want, got, err)
		}
		// A cut anywhere before the content is an error, never a panic.
		fixed := 1 + len(from) + 1 + len(to) + 8
		for n := range fixed {
			if _, err := parsePayload(b[len(prefix) : len(prefix)+n]); err == nil {
				t.Fatalf("parsePayload accepted the first %d of %d fixed bytes", n, fixed)
			}
		}
	})
}
