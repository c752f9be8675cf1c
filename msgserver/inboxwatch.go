package msgserver

import (
	"context"
	"sync"

	"github.com/chatrelay/chatrelay/wire"
)

// inboxWatch notices offline messages stored from this server for a user
// while that user's login is in progress here. The login takes the inbox in
// the same round trip as its presence claim, before the session is in the
// local map; a local sender that finds the user claimed but not yet mapped
// stores the message offline, and without the watch it would wait in the
// inbox until the next login.
//
// It also holds the Forwards that arrive for the user meanwhile, from
// senders on other servers who found the user's new presence: they are
// delivered to the new session when the login publishes it, rather than
// answered "not here" and stored offline.
type inboxWatch struct {
	stored   bool           // a store was started while watched (under inboxWatches.mu)
	inflight sync.WaitGroup // those stores still running
	held     []heldForward  // Forwards waiting for the login (under inboxWatches.mu)
	closed   bool           // the login took held: no more are held
}

// heldForward is a Forward waiting for a login in progress.
type heldForward struct {
	c  *linkConn
	f  wire.Forward
	it item
}

// maxHeld bounds the Forwards one login holds; more are answered "not here".
const maxHeld = 1024

// What hold did.
const (
	holdNone  = iota // no login of the user in progress here
	holdHeld         // held for the login
	holdRetry        // the login has published its session: deliver to it
)

// hold keeps f for the login of user in progress here, if there is one.
func (ws *inboxWatches) hold(user string, h heldForward) int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	list := ws.m[user]
	if len(list) == 0 {
		return holdNone
	}
	w := list[len(list)-1]
	switch {
	case w.closed:
		return holdRetry
	case len(w.held) >= maxHeld:
		return holdNone
	}
	w.held = append(w.held, h)
	return holdHeld
}

// takeHeld ends holding for w and returns what it held.
func (ws *inboxWatches) takeHeld(w *inboxWatch) []heldForward {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w.closed = true
	h := w.held
	w.held = nil
	return h
}

// inboxWatches are the watches of the logins in progress here, by user.
type inboxWatches struct {
	mu sync.Mutex
	m  map[string][]*inboxWatch
}

// watch starts watching user's inbox for stores from this server.
func (ws *inboxWatches) watch(user string) *inboxWatch {
	w := &inboxWatch{}
	ws.mu.Lock()
	if ws.m == nil {
		ws.m = make(map[string][]*inboxWatch)
	}
	ws.m[user] = append(ws.m[user], w)
	ws.mu.Unlock()
	return w
}

// unwatch stops w and reports whether a store started meanwhile; if so,
// w.inflight.Wait() returns once those stores are done.
func (ws *inboxWatches) unwatch(user string, w *inboxWatch) (stored bool) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	list := ws.m[user]
	for i, x := range list {
		if x == w {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(ws.m, user)
	} else {
		ws.m[user] = list
	}
	return w.stored
}

// noteStore marks every watch on user and returns the function that ends
// the store.
func (ws *inboxWatches) noteStore(user string) (done func()) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	list := ws.m[user]
	if len(list) == 0 {
		return func() {}
	}
	list = append([]*inboxWatch(nil), list...)
	for _, w := range list {
		w.stored = true
		w.inflight.Add(1)
	}
	return func() {
		for _, w := range list {
			w.inflight.Done()
		}
	}
}

// storeOffline appends an entry (offline.go) to user's offline inbox, under the
// watch of any login of user in progress here.
func (s *Server) storeOffline(ctx context.Context, user string, line []byte) error {
	defer s.watches.noteStore(user)()
	return s.store.PushInbox(ctx, user, line)
}
