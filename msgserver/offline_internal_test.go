package msgserver

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/wire"
)

var entryID = wire.ID{0x9a, 0x1c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}

// An entry is delivered as the line a live message would have been, with
// "offline":true, whatever the content.
func TestInboxEntryDeliveredAsTheEventLine(t *testing.T) {
	for _, s := range append(awkward, strings.Repeat("<", 4096)) {
		p := payload{From: "zhima201", To: "zhima202", TS: 1732000000123, Content: s}
		e, err := parseInboxEntry(string(appendInboxEntry(nil, entryID, &p)))
		if err != nil {
			t.Fatalf("entry of %q: %v", s, err)
		}
		want := wantLine(t, chatEvent{Event: "chat", ID: entryID.String(), From: p.From, To: p.To, Content: s, TS: p.TS, Offline: true})
		if got := e.appendLine(nil); !bytes.Equal(got, want) {
			t.Errorf("entry of %q delivered as\n %s\nwant %s", s, got, want)
		}
	}
}

func TestInboxEntryIsCompact(t *testing.T) {
	content := strings.Repeat("<", 4096)
	entry := appendInboxEntry(nil, entryID, &payload{From: "zhima201", To: "zhima202", TS: 1732000000123, Content: content})
	// version, id, two str8 names, ts: 51 bytes besides the content.
	if len(entry) != len(content)+1+16+9+9+8 {
		t.Fatalf("entry of 4 KiB of '<' is %d bytes", len(entry))
	}
}

// Entries written before the compact format are the event line itself,
// delivered as it is; anything unreadable is refused, not sent.
func TestInboxEntryFormats(t *testing.T) {
	old, err := json.Marshal(chatEvent{Event: "chat", ID: entryID.String(), From: "a", To: "b", Content: "<b>old</b>", TS: 1, Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	e, err := parseInboxEntry(string(old))
	if err != nil {
		t.Fatalf("old entry %s: %v", old, err)
	}
	if got := e.appendLine(nil); !bytes.Equal(got, append(old, '\n')) {
		t.Fatalf("old entry delivered as %q, want it as it is", got)
	}
	valid := string(appendInboxEntry(nil, entryID, &payload{From: "a", To: "b", TS: 1, Content: "x"}))
	for _, bad := range []string{"", "x", "{", `{"a":1}` + "\n" + `{"b":2}`, `{"a":1} trailing`, "\x01", valid[:17], valid[:19], "\x02" + valid[1:]} {
		if _, err := parseInboxEntry(bad); err == nil {
			t.Errorf("parseInboxEntry(%q) accepted it", bad)
		}
	}
}

// FuzzInboxEntry: whatever is in an inbox, reading it never panics, and
// what is read goes out as exactly one JSON line.
func FuzzInboxEntry(f *testing.F) {
	f.Add(string(appendInboxEntry(nil, entryID, &payload{From: "a", To: "b", TS: 1, Content: "<x>"})))
	f.Add(`{"event":"chat","id":"1","from":"a","to":"b","content":"\u003c","ts":1,"offline":true}`)
	f.Fuzz(func(t *testing.T, entry string) {
		e, err := parseInboxEntry(entry)
		if err != nil {
			return
		}
		line := e.appendLine(nil)
		if bytes.IndexByte(line, '\n') != len(line)-1 || !json.Valid(line) {
			t.Fatalf("entry %q delivered as %q: not one JSON line", entry, line)
		}
	})
}
