package store_test

import (
	"context"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/testenv"
)

// loggedStore is a store on a fresh Redis whose commands are logged.
func loggedStore(t *testing.T) (*store.Store, *testenv.Redis, *testenv.CommandLog) {
	t.Helper()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	log := &testenv.CommandLog{Match: func(key string) bool { return strings.HasPrefix(key, "chatrelay:") }}
	rdb.AddHook(log)
	return store.New(rdb, store.Config{PresenceTTL: time.Minute, RegistryTTL: 6 * time.Second, InboxMax: 10, InboxTTL: time.Hour}), r, log
}

func pttl(t *testing.T, r *testenv.Redis, key string) int {
	t.Helper()
	v, err := r.Command("PTTL", key)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimPrefix(v, ":"))
	if err != nil {
		t.Fatalf("PTTL %s = %q", key, v)
	}
	return n
}

func lrange(t *testing.T, r *testenv.Redis, key string) []string {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	v, err := rdb.LRange(context.Background(), key, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A batch of logins: each claim gets the outcome the presence write and
// the take gave it alone, whatever the others hold. Inboxes with messages
// are taken (into the take's key, with its TTL), empty ones are not
// touched, presence held by another server (live or stale) is taken over
// and reported, a session with acks reads its inbox without taking it, a
// presence key that cannot be written leaves the inbox for a later login,
// and an inbox key that cannot be read fails only that inbox.
func TestClaimLoginsOutcomes(t *testing.T) {
	st, r, _ := loggedStore(t)
	ctx := testenv.WithTimeout(t, 10*time.Second)
	push := func(user string, msgs ...string) {
		for _, m := range msgs {
			if err := st.PushInbox(ctx, user, []byte(m)); err != nil {
				t.Fatal(err)
			}
		}
	}
	push("full", "m0", "m1")
	push("kept", "\x01k0", "{\"legacy\":1}", "\x01k1")
	push("wrongpresence", "w0")
	if _, err := r.Command("SET", "chatrelay:user:held", "msg-b s9"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Command("SET", "chatrelay:user:stale", "msg-gone s1", "PX", "100000000"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Command("RPUSH", "chatrelay:user:wrongpresence", "x"); err != nil { // a key of the wrong type
		t.Fatal(err)
	}
	if _, err := r.Command("SET", "chatrelay:inbox:wronginbox", "x"); err != nil {
		t.Fatal(err)
	}
	at := func(s string) store.Location { return store.Location{Server: "msg-a", Session: s} }
	claims := []*store.Claim{
		{User: "full", At: at("s1"), Token: "t1"},
		{User: "empty", At: at("s2"), Token: "t2"},
		{User: "held", At: at("s3"), Token: "t3"},
		{User: "stale", At: at("s4"), Token: "t4"},
		{User: "kept", At: at("s5"), Token: "t5", Keep: true},
		{User: "wrongpresence", At: at("s6"), Token: "t6"},
		{User: "wronginbox", At: at("s7"), Token: "t7"},
	}
	st.ClaimLogins(ctx, claims)
	for i, c := range claims[:5] {
		if c.Err != nil || c.InboxErr != nil {
			t.Fatalf("claim %s: %v, %v", c.User, c.Err, c.InboxErr)
		}
		key := "chatrelay:user:" + c.User
		if v, _ := r.Command("GET", key); v != "msg-a s"+strconv.Itoa(i+1) {
			t.Errorf("presence of %s = %q after the claim", c.User, v)
		}
		if ms := pttl(t, r, key); ms <= 50_000 || ms > 60_000 {
			t.Errorf("presence of %s has PTTL %d ms, want the presence TTL (1 min)", c.User, ms)
		}
	}
	if want := []string{"m0", "m1"}; !reflect.DeepEqual(claims[0].Inbox, want) {
		t.Errorf("full: inbox %q, want %q", claims[0].Inbox, want)
	}
	if v, _ := r.Command("EXISTS", "chatrelay:inbox:full"); v != ":0" {
		t.Errorf("full: inbox still exists after the take (%s)", v)
	}
	taken := store.TakenKeyForTest("chatrelay:inbox:full", "t1")
	if got := lrange(t, r, taken); !reflect.DeepEqual(got, []string{"m0", "m1"}) {
		t.Errorf("full: the take's key holds %q", got)
	}
	if ms := pttl(t, r, taken); ms <= 0 || ms > 60_000 {
		t.Errorf("full: the take's key has PTTL %d, want at most 60 s", ms)
	}
	if claims[0].Had {
		t.Errorf("full: Had with no earlier presence")
	}
	if c := claims[1]; c.Inbox != nil || c.Had {
		t.Errorf("empty: inbox %q, had %v", c.Inbox, c.Had)
	}
	if v, _ := r.Command("EXISTS", store.TakenKeyForTest("chatrelay:inbox:empty", "t2")); v != ":0" {
		t.Errorf("empty: a take's key was made for an empty inbox")
	}
	if c := claims[2]; !c.Had || c.Old != (store.Location{Server: "msg-b", Session: "s9"}) {
		t.Errorf("held: had %v old %+v, want msg-b s9", c.Had, c.Old)
	}
	if c := claims[3]; !c.Had || c.Old != (store.Location{Server: "msg-gone", Session: "s1"}) {
		t.Errorf("stale: had %v old %+v, want msg-gone s1", c.Had, c.Old)
	}
	if want := []string{"\x01k0", "{\"legacy\":1}", "\x01k1"}; !reflect.DeepEqual(claims[4].Inbox, want) {
		t.Errorf("kept: inbox %q, want %q", claims[4].Inbox, want)
	}
	if got, want := lrange(t, r, "chatrelay:inbox:kept"), []string{"\x01k0", "\x01k1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("kept: inbox after the read %q, want %q (kept, less the legacy entry)", got, want)
	}
	if c := claims[5]; c.Err == nil || c.Inbox != nil {
		t.Errorf("wrongpresence: err %v, inbox %q; want a failed claim that takes nothing", c.Err, c.Inbox)
	}
	if got := lrange(t, r, "chatrelay:inbox:wrongpresence"); !reflect.DeepEqual(got, []string{"w0"}) {
		t.Errorf("wrongpresence: inbox %q after a failed claim, want it kept", got)
	}
	if c := claims[6]; c.Err != nil || c.InboxErr == nil {
		t.Errorf("wronginbox: err %v, inbox err %v; want the presence claimed and the inbox failed", c.Err, c.InboxErr)
	}
}

// Logins cost plain commands in one round trip for users without offline
// messages; the take script runs (in a second round trip) only for those
// with some. A Redis that lost its scripts (restarted, SCRIPT FLUSH) is
// sent the script's text again.
func TestClaimLoginsRoundTrips(t *testing.T) {
	st, r, log := loggedStore(t)
	ctx := testenv.WithTimeout(t, 10*time.Second)
	var claims []*store.Claim
	for i := range 50 {
		claims = append(claims, &store.Claim{User: "u" + strconv.Itoa(i), At: store.Location{Server: "msg-a", Session: "s"}, Token: "t" + strconv.Itoa(i)})
	}
	st.ClaimLogins(ctx, claims)
	cmds, trips := log.Take()
	if trips != 1 || len(cmds) != 2*len(claims) {
		t.Fatalf("%d logins with empty inboxes: %d commands in %d round trips, want %d in 1: %q", len(claims), len(cmds), trips, 2*len(claims), cmds)
	}
	for _, c := range cmds {
		if !strings.HasPrefix(c, "set chatrelay:user:") && !strings.HasPrefix(c, "exists chatrelay:inbox:") {
			t.Fatalf("login sent %q; want only SET of presence and EXISTS of the inbox", c)
		}
	}

	if err := st.PushInbox(ctx, "u7", []byte("m")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Command("SCRIPT", "FLUSH"); err != nil {
		t.Fatal(err)
	}
	log.Take()
	for _, c := range claims {
		c.Token += "-2"
	}
	st.ClaimLogins(ctx, claims)
	if c := claims[7]; c.InboxErr != nil || !reflect.DeepEqual(c.Inbox, []string{"m"}) {
		t.Fatalf("u7 after SCRIPT FLUSH: inbox %q, %v; want [m]", c.Inbox, c.InboxErr)
	}
	cmds, trips = log.Take()
	// SET and EXISTS per login; EVALSHA (NOSCRIPT) and EVAL for u7 alone.
	if trips != 3 || len(cmds) != 2*len(claims)+2 {
		t.Fatalf("logins, one with an inbox, after SCRIPT FLUSH: %d commands in %d round trips, want %d in 3: %q", len(cmds), trips, 2*len(claims)+2, cmds)
	}
	if got := cmds[len(cmds)-2:]; got[0] != "evalsha chatrelay:inbox:u7" || got[1] != "eval chatrelay:inbox:u7" {
		t.Fatalf("the take after SCRIPT FLUSH sent %q; want evalsha then eval of u7's inbox", got)
	}
	for _, c := range claims {
		c.Token += "-3"
	}
	if err := st.PushInbox(ctx, "u9", []byte("m")); err != nil {
		t.Fatal(err)
	}
	log.Take()
	st.ClaimLogins(ctx, claims)
	if cmds, trips = log.Take(); trips != 2 || cmds[len(cmds)-1] != "evalsha chatrelay:inbox:u9" {
		t.Fatalf("with the script loaded again: %q in %d round trips; want EVALSHA for u9's inbox in a second", cmds, trips)
	}
}

// ReadInboxes takes (or, Keep, reads) many inboxes at once; empty ones
// cost one EXISTS each and no script.
func TestReadInboxes(t *testing.T) {
	st, r, log := loggedStore(t)
	ctx := testenv.WithTimeout(t, 10*time.Second)
	for _, m := range []string{"a0", "a1"} {
		if err := st.PushInbox(ctx, "ann", []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.PushInbox(ctx, "kim", []byte("\x01k")); err != nil {
		t.Fatal(err)
	}
	log.Take()
	reads := []*store.InboxRead{{User: "ann", Token: "r1"}, {User: "bob", Token: "r2"}, {User: "kim", Keep: true}}
	st.ReadInboxes(ctx, reads)
	if r0 := reads[0]; r0.Err != nil || !reflect.DeepEqual(r0.Lines, []string{"a0", "a1"}) {
		t.Errorf("ann: %q, %v", r0.Lines, r0.Err)
	}
	if r1 := reads[1]; r1.Err != nil || r1.Lines != nil {
		t.Errorf("bob: %q, %v", r1.Lines, r1.Err)
	}
	if r2 := reads[2]; r2.Err != nil || !reflect.DeepEqual(r2.Lines, []string{"\x01k"}) {
		t.Errorf("kim: %q, %v", r2.Lines, r2.Err)
	}
	if v, _ := r.Command("EXISTS", "chatrelay:inbox:ann"); v != ":0" {
		t.Errorf("ann's inbox not taken")
	}
	if got := lrange(t, r, "chatrelay:inbox:kim"); !reflect.DeepEqual(got, []string{"\x01k"}) {
		t.Errorf("kim's kept inbox is %q after a read", got)
	}
	cmds, _ := log.Take()
	scripts := 0
	for _, c := range cmds {
		if strings.HasPrefix(c, "eval") {
			scripts++
			if strings.HasSuffix(c, ":bob") {
				t.Errorf("a script ran for bob's empty inbox: %q", cmds)
			}
		}
	}
	if scripts < 2 {
		t.Errorf("commands %q: want a script for ann and kim", cmds)
	}
}

// The presence refresh extends records that name their session, recreates
// vanished ones, and reports (and leaves alone) records that name another
// session, in one script call for many users.
func TestRefreshAll(t *testing.T) {
	st, r, log := loggedStore(t)
	ctx := testenv.WithTimeout(t, 10*time.Second)
	at := store.Location{Server: "msg-a", Session: "s1"}
	for _, u := range []string{"mine", "other"} {
		if _, err := r.Command("SET", "chatrelay:user:"+u, "msg-a s1", "PX", "1000"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Command("SET", "chatrelay:user:other", "msg-b s2", "PX", "5000"); err != nil {
		t.Fatal(err)
	}
	log.Take()
	lost, err := st.RefreshAll(ctx, []store.Record{{User: "mine", At: at}, {User: "other", At: at}, {User: "gone", At: at}})
	if err != nil || !reflect.DeepEqual(lost, []string{"other"}) {
		t.Fatalf("RefreshAll = %q, %v; want [other]", lost, err)
	}
	if ms := pttl(t, r, "chatrelay:user:mine"); ms <= 50_000 {
		t.Errorf("mine: PTTL %d after refresh, want about a minute", ms)
	}
	if v, _ := r.Command("GET", "chatrelay:user:gone"); v != "msg-a s1" {
		t.Errorf("gone: %q after refresh, want it recreated", v)
	}
	if ms := pttl(t, r, "chatrelay:user:gone"); ms <= 50_000 {
		t.Errorf("gone: PTTL %d after refresh, want about a minute", ms)
	}
	if v, _ := r.Command("GET", "chatrelay:user:other"); v != "msg-b s2" {
		t.Errorf("other: %q after refresh, want it left to msg-b", v)
	}
	if ms := pttl(t, r, "chatrelay:user:other"); ms > 5000 {
		t.Errorf("other: PTTL %d after refresh; another server's record must not be extended", ms)
	}
	cmds, _ := log.Take()
	// One call (its EVALSHA, and an EVAL if the script was not loaded).
	if len(cmds) == 0 || len(cmds) > 2 || !strings.HasPrefix(cmds[len(cmds)-1], "eval") {
		t.Errorf("commands %q: want one script call for the three users", cmds)
	}

	// Release deletes only records that still name their session.
	if err := st.ReleaseAll(ctx, map[string]store.Location{"mine": at, "other": at}); err != nil {
		t.Fatal(err)
	}
	if v, _ := r.Command("EXISTS", "chatrelay:user:mine"); v != ":0" {
		t.Errorf("mine still present after release")
	}
	if v, _ := r.Command("GET", "chatrelay:user:other"); v != "msg-b s2" {
		t.Errorf("other: %q after release, want it left to msg-b", v)
	}
}
