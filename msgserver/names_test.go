package msgserver

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/secure/precis"
	"golang.org/x/text/unicode/norm"
)

func TestNormalizeName(t *testing.T) {
	const max = 64
	tests := []struct {
		name, in string
		want     string // "" means refused with bad_name
	}{
		{"article", "zhima201", "zhima201"},
		{"chinese", "芝麻201", "芝麻201"},
		{"inner space", "Zhi Ma", "Zhi Ma"},
		{"emoji", "🙂", "🙂"},
		{"escaped-looking ASCII", `\ud800`, `\ud800`},
		{"NFC: decomposed ë", "Zoe\u0308", "Zoë"},
		{"NFC: composed ë", "Zo\u00eb", "Zoë"},
		{"NFC: Hangul jamo", "\u1100\u1161", "가"},
		{"no-break space is a space", "Zhi\u00a0Ma", "Zhi Ma"},
		{"ideographic space is a space", "山田\u3000太郎", "山田 太郎"},
		{"whole Cyrillic name", "Алиса", "Алиса"},
		{"Japanese: Han, kana, Latin", "山田たろうタロウ2", "山田たろうタロウ2"},
		{"Korean: Hangul and Han", "김민준金", "김민준金"},
		{"Chinese with Bopomofo", "芝麻ㄅ", "芝麻ㄅ"},
		{"Greek", "Αλέξης", "Αλέξης"},
		{"Arabic", "علي", "علي"},
		{"combining mark after a letter", "e\u0301x", "éx"},

		{"empty", "", ""},
		{"whitespace only", "   ", ""},
		{"one space", " ", ""},
		{"no-break spaces only", "\u00a0\u00a0", ""},
		{"leading space", " alice", ""},
		{"trailing space", "alice ", ""},
		{"trailing no-break space", "alice\u00a0", ""},
		{"two spaces", "a  b", ""},
		{"zero-width space", "a\u200bb", ""},
		{"zero-width space alone", "\u200b", ""},
		{"zero-width joiner", "a\u200db", ""},
		{"zero-width non-joiner", "a\u200cb", ""},
		{"word joiner", "ali\u2060ce", ""},
		{"byte order mark", "\ufeffalice", ""},
		{"soft hyphen", "ali\u00adce", ""},
		{"right-to-left override", "a\u202eb", ""},
		{"left-to-right mark", "alice\u200e", ""},
		{"right-to-left isolate", "\u2067alice", ""},
		{"Arabic letter mark", "a\u061cb", ""},
		{"variation selector", "\u2764\ufe0f", ""},
		{"Hangul filler (blank letter)", "\u3164", ""},
		{"line separator", "a\u2028b", ""},
		{"tab", "a\tb", ""},
		{"private use", "a\ue000", ""},
		{"unassigned", "a\U000e0080", ""},
		{"combining mark first", "\u0301a", ""},
		{"Cyrillic а in a Latin name", "\u0430lice", ""},
		{"Greek ο in a Latin name", "b\u03bfb", ""},
		{"Han and Cyrillic", "芝Д", ""},
		{"kana and Bopomofo", "たㄅ", ""},
		{"replacement character", "a\ufffd", ""},
		{"invalid UTF-8", "a\xffb", ""},
		{"over the limit", strings.Repeat("a", max+1), ""},
		{"over the limit once normalised", strings.Repeat("\u0958", max/6+1), ""}, // each NFC is 6 bytes
		{"far over the limit", strings.Repeat("a", 10*max), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, cerr := normalizeName(tt.in, max)
			if tt.want != "" {
				if cerr != nil || got != tt.want {
					t.Fatalf("normalizeName(%q) = %q, %v; want %q", tt.in, got, cerr, tt.want)
				}
				return
			}
			if cerr == nil {
				t.Fatalf("normalizeName(%q) = %q, want %s", tt.in, got, CodeBadName)
			}
			if cerr.code != CodeBadName || cerr.msg == "" {
				t.Fatalf("normalizeName(%q): %v, want %s with a reason", tt.in, cerr, CodeBadName)
			}
		})
	}
}

// The reason names the character a client cannot see.
func TestNormalizeNameSaysWhichCharacter(t *testing.T) {
	for in, want := range map[string]string{
		"a\u200bb":   "U+200B",
		"\u0430lice": "Cyrillic and Latin",
		"\u0301a":    "U+0301",
		"alice ":     "space",
	} {
		if _, cerr := normalizeName(in, 64); cerr == nil || !strings.Contains(cerr.msg, want) {
			t.Errorf("normalizeName(%q) = %v, want a reason naming %s", in, cerr, want)
		}
	}
}

// FuzzNormalizeName: any input is accepted or refused with bad_name, never
// a panic; what is accepted is a valid name in its one form, and
// normalising it again gives it back.
func FuzzNormalizeName(f *testing.F) {
	for _, s := range []string{"zhima201", "芝麻201", "Zoe\u0308", " a", "a\u200bb", "\u0430lice", "山田\u3000太郎", "\u1100\u1161\u11a8", "\u0958"} {
		f.Add(s)
	}
	const max = 64
	f.Fuzz(func(t *testing.T, in string) {
		out, cerr := normalizeName(in, max)
		if cerr != nil {
			if cerr.code != CodeBadName || out != "" {
				t.Fatalf("normalizeName(%q) = %q, %v", in, out, cerr)
			}
			return
		}
		if out == "" || len(out) > max || !utf8.ValidString(out) || !norm.NFC.IsNormalString(out) {
			t.Fatalf("normalizeName(%q) = %q: not a valid name in NFC", in, out)
		}
		if out[0] == ' ' || out[len(out)-1] == ' ' || strings.Contains(out, "  ") {
			t.Fatalf("normalizeName(%q) = %q: stray spaces", in, out)
		}
		again, cerr := normalizeName(out, max)
		if cerr != nil || again != out {
			t.Fatalf("normalizeName is not idempotent: %q -> %q -> %q, %v", in, out, again, cerr)
		}
	})
}

// BenchmarkNormalizeName is the cost per chat of the recipient's name.
func BenchmarkNormalizeName(b *testing.B) {
	for _, name := range []string{"zhima202", "芝麻202", "Zoe\u0308 Müller"} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, cerr := normalizeName(name, 64); cerr != nil {
					b.Fatal(cerr)
				}
			}
		})
	}
}

// plainLetter's shortcut agrees with the full path: every plain letter is
// valid and unchanged under precis, in NFC, and in the script said.
func TestPlainLettersNeedNoPrecis(t *testing.T) {
	n := 0
	for r := rune(0x80); r <= 0xffff; r++ {
		script := plainLetter(r)
		if script == nil {
			continue
		}
		n++
		s := string(r)
		if out, err := precis.OpaqueString.String(s); err != nil || out != s {
			t.Fatalf("%U: precis gives %q, %v", r, out, err)
		}
		if !norm.NFC.IsNormalString(s) || !unicode.Is(script, r) || !unicode.IsLetter(r) {
			t.Fatalf("%U: not an NFC letter of %s", r, scriptNames[script])
		}
	}
	t.Logf("%d plain letters", n)
}
