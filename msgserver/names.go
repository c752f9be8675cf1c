package msgserver

import (
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/secure/precis"
)

// User names are one thing each: a name has one form, the one presence
// records, inboxes and sessions are keyed by, and text that looks blank or
// hides what it is, is not a name. normalizeName applies the rules
// (docs/protocol.md lists them for clients) to login names, recipients and
// "send" alike.
//
// The character rules are PRECIS's OpaqueString profile (RFC 8265, the
// freeform class): it refuses control, zero-width, bidi-control and other
// default-ignorable characters and unassigned code points, maps every
// Unicode space to U+0020 and normalises to NFC. The stricter
// UsernameCasePreserved profile would refuse spaces and emoji inside a
// name, which names have always been allowed ("Zhi Ma-201_!", "🙂").
// On top of it:
//   - no leading, trailing or doubled space (so no whitespace-only name);
//   - no combining mark first (a mark with nothing to sit on);
//   - one script per name, as UTS #39's "highly restrictive" level has it:
//     one script, or Latin with Han and the Japanese kana, Bopomofo or
//     Hangul; digits, punctuation and symbols (Common) go with any. A
//     Latin name with a Cyrillic "а" in it is refused. A name written
//     wholly in Cyrillic letters that look Latin ("аlісе") is a name of its
//     own, a different user: telling such names apart is for the client's
//     display, and with signed logins no one can log in as another.
//
// Case is kept and compared: "Alice" and "alice" are two users, as they
// have always been.

// maxNameWork bounds the bytes of a name normalised before the length
// check: NFC shortens a name to a third at most (Hangul jamo).
const maxNameWork = 4

// normalizeName returns name's one form, or why it cannot be a user name
// (CodeBadName).
func normalizeName(name string, maxLen int) (string, *clientError) {
	if name == "" {
		return "", errorf(CodeBadName, "name is empty")
	}
	if len(name) > maxNameWork*maxLen {
		return "", errorf(CodeBadName, "name is %d bytes, the limit is %d", len(name), maxLen)
	}
	ascii := true
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == 0x7f {
			return "", errorf(CodeBadName, "name contains a control character")
		} else if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	if !ascii {
		// Printable ASCII is its own normal form, and in one script.
		var e *clientError
		if name, e = normalizeUnicode(name); e != nil {
			return "", e
		}
	}
	if len(name) > maxLen {
		return "", errorf(CodeBadName, "name is %d bytes, the limit is %d", len(name), maxLen)
	}
	switch {
	case strings.Trim(name, " ") == "":
		return "", errorf(CodeBadName, "name is only spaces")
	case name[0] == ' ' || name[len(name)-1] == ' ':
		return "", errorf(CodeBadName, "name begins or ends with a space")
	case strings.Contains(name, "  "):
		return "", errorf(CodeBadName, "name has two spaces in a row")
	}
	return name, nil
}

// normalizeUnicode applies OpaqueString and the mark and script rules.
func normalizeUnicode(name string) (string, *clientError) {
	if plainName(name) {
		// Nothing for precis to change or refuse: only the script rule
		// is left. A chat costs a tenth of the full path (benchmark).
		if a, b := mixedScripts(name); a != "" {
			return "", mixedScriptsError(a, b)
		}
		return name, nil
	}
	if !utf8.ValidString(name) {
		return "", errorf(CodeBadName, "name is not valid UTF-8")
	}
	if strings.ContainsRune(name, utf8.RuneError) {
		// Allowed by PRECIS (a symbol), but it stands for what was lost.
		return "", errorf(CodeBadName, "name contains the replacement character U+FFFD")
	}
	out, err := precis.OpaqueString.String(name)
	if err != nil {
		for _, r := range name {
			if _, err := precis.OpaqueString.String(string(r)); err != nil {
				return "", errorf(CodeBadName, "name contains %U, a control, invisible, bidi or unassigned character", r)
			}
		}
		// Only a rune's context refuses it (a joiner where no script needs one).
		return "", errorf(CodeBadName, "name contains an invisible character where it joins nothing")
	}
	first, _ := utf8.DecodeRuneInString(out)
	if unicode.Is(unicode.M, first) {
		return "", errorf(CodeBadName, "name begins with a combining mark (%U)", first)
	}
	if a, b := mixedScripts(out); a != "" {
		return "", mixedScriptsError(a, b)
	}
	return out, nil
}

func mixedScriptsError(a, b string) *clientError {
	return errorf(CodeBadName, "name mixes %s and %s letters; a name is written in one script (look-alikes such as Cyrillic а in a Latin name are refused)", a, b)
}

// plainLetter returns the script of a letter precis has nothing to do
// with, or nil: letters of the most used blocks, each assigned, valid in
// the freeform class, in NFC alone and composing with no other plain
// letter (what composes with them are combining marks and Hangul jamo,
// which are not plain). A test holds it to precis, norm and the script
// tables.
func plainLetter(r rune) *unicode.RangeTable {
	switch {
	case 0xc0 <= r && r <= 0xff && r != 0xd7 && r != 0xf7: // Latin-1 letters
		return unicode.Latin
	case 0x4e00 <= r && r <= 0x9fff: // CJK Unified Ideographs
		return unicode.Han
	case 0x3041 <= r && r <= 0x3096:
		return unicode.Hiragana
	case 0x30a1 <= r && r <= 0x30fa:
		return unicode.Katakana
	case 0xac00 <= r && r <= 0xd7a3: // Hangul syllables
		return unicode.Hangul
	}
	return nil
}

// plainName reports whether name is printable ASCII and plain letters
// only, so that it is its own normal form.
func plainName(name string) bool {
	for _, r := range name {
		if r >= utf8.RuneSelf && plainLetter(r) == nil {
			return false
		}
	}
	return true
}

// scriptFamilies are the scripts one name may mix (UTS #39, highly
// restrictive): Japanese, Chinese and Korean writing with Latin.
var scriptFamilies = [][]*unicode.RangeTable{
	{unicode.Latin, unicode.Han, unicode.Hiragana, unicode.Katakana},
	{unicode.Latin, unicode.Han, unicode.Bopomofo},
	{unicode.Latin, unicode.Han, unicode.Hangul},
}

// scripts lists every script but Common and Inherited, those names use
// most first, for scriptOf's search (a rune is in one script, and most
// are not Common); scriptNames names them.
var scripts, scriptNames = func() ([]*unicode.RangeTable, map[*unicode.RangeTable]string) {
	first := []string{"Latin", "Han", "Cyrillic", "Arabic", "Hangul", "Hiragana", "Katakana", "Greek",
		"Devanagari", "Hebrew", "Thai", "Bengali", "Tamil", "Armenian", "Georgian", "Bopomofo"}
	var rest []string
	for name := range unicode.Scripts {
		if name != "Common" && name != "Inherited" && !slices.Contains(first, name) {
			rest = append(rest, name)
		}
	}
	slices.Sort(rest)
	var list []*unicode.RangeTable
	names := make(map[*unicode.RangeTable]string)
	for _, name := range append(first, rest...) {
		list = append(list, unicode.Scripts[name])
		names[unicode.Scripts[name]] = name
	}
	return list, names
}()

// scriptOf returns r's script, or nil for a rune every script uses
// (digits, punctuation, symbols, spaces: Common) or takes on from the one
// before (combining marks: Inherited).
func scriptOf(r rune) *unicode.RangeTable {
	if r < utf8.RuneSelf {
		if 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' {
			return unicode.Latin
		}
		return nil
	}
	if t := plainLetter(r); t != nil {
		return t
	}
	for _, t := range scripts {
		if unicode.Is(t, r) {
			return t
		}
	}
	return nil // Common, Inherited, or unassigned in Go's tables (a newer Unicode's letter)
}

// mixedScripts returns two scripts name mixes that do not go together,
// or "" if it has none.
func mixedScripts(name string) (string, string) {
	var seen []*unicode.RangeTable
	for _, r := range name {
		if t := scriptOf(r); t != nil && !slices.Contains(seen, t) {
			seen = append(seen, t)
		}
	}
	// Scripts that go together two by two all belong to one family.
	for i, a := range seen {
		for _, b := range seen[:i] {
			if !slices.ContainsFunc(scriptFamilies, func(f []*unicode.RangeTable) bool {
				return slices.Contains(f, a) && slices.Contains(f, b)
			}) {
				return scriptNames[b], scriptNames[a]
			}
		}
	}
	return "", ""
}
