package relay

import (
	"testing"
	"time"
)

// A relay that has just taken the VIP counts its time without links from
// the takeover, not from when it last had links: otherwise the check would
// fail every fresh master while the message servers are still redialling.
func TestFreshMasterIsWithinGrace(t *testing.T) {
	s, err := New(Config{ID: "relay-b", Secret: []byte("0123456789abcdef0123")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.noLinksSince = time.Now().Add(-time.Hour) // a backup without links for an hour
	s.seen["msg-1"] = &status{}                 // it has seen a server before
	w := &VIPWatcher{Server: s}
	w.acquired.Store(time.Now().UnixNano())
	w.held.Store(true)
	w.VIP = []byte{192, 168, 56, 100}
	s.vips = append(s.vips, w)

	rep := s.Report()
	if rep.Role != "master" || rep.NoLinksSince == nil || time.Since(*rep.NoLinksSince) > time.Minute {
		t.Fatalf("fresh master reports no links since %v", rep.NoLinksSince)
	}
	if res := Evaluate(rep, 2, "registered in Redis", 3*time.Second, time.Now()); !res.OK {
		t.Fatalf("check fails a fresh master: %s", res.Reason)
	}
	// Past the grace it does fail.
	if res := Evaluate(rep, 2, "registered in Redis", 3*time.Second, time.Now().Add(5*time.Second)); res.OK {
		t.Fatalf("check passes a master without links past the grace: %s", res.Reason)
	}
}
