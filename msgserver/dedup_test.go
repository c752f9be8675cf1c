package msgserver

import (
	"encoding/binary"
	"testing"

	"github.com/chatrelay/chatrelay/wire"
)

func id(prefix byte, seq uint64) wire.ID {
	var i wire.ID
	i[0] = prefix
	binary.BigEndian.PutUint64(i[8:], seq)
	return i
}

func TestDedupWindow(t *testing.T) {
	d := newDedup(100)
	for _, seq := range []uint64{0, 1, 2, 99} {
		if d.seen(id(1, seq)) {
			t.Fatalf("seq %d seen before it was added", seq)
		}
	}
	for seq := uint64(0); seq < 150; seq++ {
		d.add(id(1, seq))
	}
	for seq := uint64(50); seq < 150; seq++ {
		if !d.seen(id(1, seq)) {
			t.Fatalf("seq %d within the last 100 not seen", seq)
		}
	}
	if d.seen(id(1, 10)) {
		t.Fatal("seq 10 is out of the window and must not be reported seen")
	}
	if d.seen(id(2, 60)) {
		t.Fatal("another origin's seq 60 reported seen")
	}
	if d.seen(id(1, 150)) || d.seen(id(1, 250)) {
		t.Fatal("future seqs reported seen")
	}
}
