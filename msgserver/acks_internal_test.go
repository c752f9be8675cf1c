package msgserver

import (
	"fmt"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/wire"
)

// Login options and ack ids decode; wrong types and too many ids are
// bad_json, with a reason.
func TestDecodeAckRequests(t *testing.T) {
	r, e := decodeRequest([]byte(`{"cmd":"login","name":"bob","acks":true,"receipts":false}`))
	if e != nil || !r.Acks || r.Receipts {
		t.Fatalf("login options: %+v %v", r, e)
	}
	r, e = decodeRequest([]byte(`{"cmd":"ack","id":"a","ids":["b","c"]}`))
	if e != nil || r.Cmd != "ack" || strings.Join(r.IDs, ",") != "a,b,c" {
		t.Fatalf("ack ids: %+v %v", r, e)
	}
	many := `{"cmd":"ack","ids":["` + strings.Repeat(`x","`, maxAckIDs) + `x"]}`
	for _, line := range []string{`{"cmd":"login","name":"b","acks":"yes"}`, `{"cmd":"ack","ids":"x"}`, `{"cmd":"ack","ids":[1]}`, `{"cmd":"ack","id":1}`, many} {
		if _, e := decodeRequest([]byte(line)); e == nil || e.code != CodeBadJSON {
			t.Errorf("%.60s: %v, want bad_json", line, e)
		}
	}
}

// Every entry format reads back as written; a Forward payload carries the
// receipt flag and receipts, and a plain chat payload is the old one.
func TestEntryRoundTrip(t *testing.T) {
	id := wire.ID{1, 2, 3}
	chat := item{ev: chatEvent{Event: eventChat, ID: id.String(), From: "ann", To: "bob", Content: "hi", TS: 42}, msgID: id}
	withReceipt := chat
	withReceipt.wantReceipt = true
	receipt := item{ev: chatEvent{Event: eventReceipt, ID: id.String(), From: "bob", To: "ann", Content: receiptDelivered, TS: 43}, msgID: id}
	for _, tc := range []struct {
		it   item
		kept bool
	}{{chat, false}, {chat, true}, {withReceipt, false}, {withReceipt, true}, {receipt, false}} {
		e := tc.it.entry(nil, tc.kept)
		if string(e[1:1+wire.IDLen]) != string(id[:]) {
			t.Errorf("%+v: the id is not at bytes 1-16", tc)
		}
		got, kept, err := parseEntry(e)
		if err != nil || kept != tc.kept && !tc.it.isReceipt() || fmt.Sprint(got) != fmt.Sprint(tc.it) {
			t.Errorf("entry of %+v (kept %v) read back as %+v, %v, %v", tc.it, tc.kept, got, kept, err)
		}
		frame := tc.it.forwardFrame(wire.ID{9}, "msg-a", "msg-b")
		f, err := wire.ParseForward(frame[wire.HeaderLen:])
		if err != nil || f.ID != (wire.ID{9}) || f.Origin != "msg-a" || f.Dest != "msg-b" {
			t.Fatalf("forward frame of %+v parsed as %+v, %v", tc.it, f, err)
		}
		if got, err := parseForward(&f); err != nil || fmt.Sprint(got) != fmt.Sprint(tc.it) && tc.it.wantReceipt {
			t.Errorf("forward of %+v read back as %+v, %v", tc.it, got, err)
		}
	}
	if p := chat.appendForwardPayload(nil); p[0] == 0 {
		t.Error("a plain chat payload must stay the old format")
	}
}
