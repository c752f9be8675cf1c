package msgserver

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/chatrelay/chatrelay/health"
	"github.com/chatrelay/chatrelay/internal/netx"
	"github.com/chatrelay/chatrelay/internal/poller"
	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/wire"
)

// Server is a running message server.
type Server struct {
	started   time.Time
	cfg       Config
	log       *slog.Logger
	m         *Metrics
	store     *store.Store
	watches   inboxWatches // logins in progress here (see inboxWatch)
	logins    *loginBatcher
	auth      *verifier // nil: logins are not authenticated
	releases  *releaser
	lateReads *lateReader
	relays    []*relayLink   // one per relay address (VIP); none when no relay is configured
	ledger    *ledger        // messages forwarded through the relays until acked; nil without relay
	poller    *poller.Poller // parked idle sessions; nil when parking is off
	idle      *idleWheel     // the idle timeouts of parked sessions
	ips       *ipLimits      // connections and logins per source address
	web       webServer      // the web port, if served (web.go)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // background loops and session goroutines

	mu        sync.Mutex
	sessions  map[string]*session // logged-in user -> its session
	conns     map[*session]struct{}
	listeners map[net.Listener]struct{}
	draining  bool
	drain     *drainState   // set by Drain (admin.go); draining is set with it
	drained   chan struct{} // closed when a drain ends (Drained)
	// redisWasDown is set when a Redis call failed; the next successful
	// heartbeat rewrites every local user's presence.
	redisWasDown bool

	routes  routeCache
	lookups singleflight.Group // presence lookups in progress, by user (chat.go)
	gate    forwardGate        // Forwards taken and in progress (acks.go)
	keeper  *keeper            // keeps events for sessions with acks in Redis (acks.go)
	acker   *acker             // removes acked events in batches (acks.go)
	// reroutes runs the re-routing of messages per recipient, in order.
	reroutes serialRunner
	idBase   [8]byte
	idSeq    atomic.Uint64
	redisOK  atomic.Bool
	offline  offlineUse // what the offline storage cap knows of Redis

	// loginClaimed, if set (tests), runs after a login's presence claim,
	// before its session is published.
	loginClaimed func(user string)
	// onForwardHeld, if set (tests), runs when a Forward is held for a login
	// in progress.
	onForwardHeld atomic.Pointer[func(user string)] // set while serving: atomic
}

// New checks cfg and starts the server's background work: the relay link,
// presence refresh and registry heartbeats. Call Serve to accept clients.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("message server config: %w", err)
	}
	maxSessions := cfg.MaxSessions
	var fds uint64
	cfg.MaxSessions, fds = connLimit(maxSessions, cfg.FDHeadroom)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		started:   time.Now(),
		cfg:       cfg,
		log:       cfg.Logger.With("server", cfg.ID),
		m:         cfg.Metrics,
		ctx:       ctx,
		cancel:    cancel,
		sessions:  make(map[string]*session),
		conns:     make(map[*session]struct{}),
		listeners: make(map[net.Listener]struct{}),
		drained:   make(chan struct{}),
		routes:    routeCache{ttl: cfg.RouteCacheTTL, m: make(map[string]routeEntry)},
		gate:      forwardGate{dedup: newDedup(cfg.DedupWindow), inflight: make(map[wire.ID]struct{})},
	}
	s.keeper = newKeeper(s)
	s.ips = newIPLimits(&s.cfg)
	s.log.Info("client limits", "connections", cfg.MaxSessions, "max_sessions", maxSessions,
		"fd_limit", fds, "fd_headroom", cfg.FDHeadroom, "per_ip", cfg.MaxConnsPerIP, "exempt", cfg.PerIPExempt)
	s.m.setConnLimit(cfg.MaxSessions)
	if cfg.Metrics != nil {
		cfg.Redis.AddHook(store.TimingHook(cfg.Metrics.redisCommand))
	}
	s.store = store.New(cfg.Redis, store.Config{
		PresenceTTL: cfg.PresenceTTL,
		RegistryTTL: cfg.RegistryTTL,
		InboxMax:    cfg.InboxMax,
		InboxTTL:    cfg.InboxTTL,
		OnError:     s.m.redisError,
	})
	if _, err := rand.Read(s.idBase[:]); err != nil {
		cancel()
		return nil, fmt.Errorf("seed message ids: %w", err)
	}
	s.redisOK.Store(true)
	if cfg.AuthKey != nil {
		s.auth = newVerifier(cfg.AuthKey, cfg.AuthLeeway, cfg.AuthAudience, cfg.AuthIssuer)
		s.log.Info("logins need a signed token", "alg", cfg.AuthKey.Algorithm())
	} else {
		s.log.Warn("clients are not authenticated: anyone who reaches the client port can log in under any name (no auth key)")
	}
	s.idle = newIdleWheel()
	if cfg.ParkIdleAfter > 0 {
		p, err := poller.New()
		if err != nil {
			s.log.Warn("idle sessions keep their goroutines: no poller", "err", err)
		} else {
			s.poller = p
		}
	}
	s.logins = newLoginBatcher(s.store, cfg.RedisTimeout, s.m.redisError)
	s.releases = newReleaser(s.store, s.log, cfg.RedisTimeout)
	s.acker = newAcker(s.store, cfg.RedisTimeout)
	s.lateReads = newLateReader(s)
	s.wg.Add(5)
	go func() {
		defer s.wg.Done()
		s.lateReads.run(ctx)
	}()
	go func() {
		defer s.wg.Done()
		s.acker.run(ctx)
	}()
	go func() {
		defer s.wg.Done()
		s.logins.run(ctx)
	}()
	go func() {
		defer s.wg.Done()
		s.keeper.run(ctx)
	}()
	go func() {
		defer s.wg.Done()
		s.releases.run(ctx)
	}()
	if addrs := s.cfg.relayAddrs(); len(addrs) > 0 {
		s.ledger = newLedger(&s.cfg, s.m)
		for i, a := range addrs {
			l := newRelayLink(&s.cfg, i, a, s.log)
			s.relays = append(s.relays, l)
			s.m.linkKnown(a)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serveRelay(ctx, l)
			}()
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			every := max(cfg.PingInterval/2, 10*time.Millisecond)
			if len(s.relays) > 1 && s.cfg.StallAfter > 0 {
				every = max(min(every, s.cfg.StallAfter/2), time.Millisecond) // to notice a stalled link soon
			}
			s.ledger.run(ctx, every)
		}()
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.maintain(ctx)
	}()
	go func() {
		defer s.wg.Done()
		releaseMemory(ctx, s.log, s.Parked)
	}()
	if cfg.OfflineMaxBytes > 0 {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.watchOfflineStorage(ctx)
		}()
	}
	return s, nil
}

// Serve accepts client connections on ln until Shutdown or Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining || s.ctx.Err() != nil {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	s.log.Info("accepting clients", "addr", ln.Addr().String(), "tls", s.cfg.TLS != nil)
	stopping := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.draining || s.ctx.Err() != nil
	}
	for {
		conn, err := netx.Accept(ln, s.log, stopping)
		if conn == nil {
			return err
		}
		if s.cfg.TLS != nil {
			s.handshake(conn) // admits it once the handshake is done, on a goroutine of its own (tls.go)
			continue
		}
		s.admit(conn, nil)
	}
}

// admit makes a session of a new connection (after its TLS handshake, on a
// TLS port) and runs it, or refuses it, telling the client why: the server
// is at its connection limit, or shutting down, or the connection's source
// address has its most connections. ip is the connection's source when it
// was counted already (before a TLS handshake), else nil.
func (s *Server) admit(conn net.Conn, ip *ipSource) {
	sess := newSession(s, conn)
	if reason, ok := s.count(sess, ip); !ok {
		sess.close(reason) // tells the client, closes the connection; the session never runs
		return
	}
	go sess.run() // the session's finish calls s.wg.Done
}

// count counts a new session in, or says why it is refused; a source
// counted already is given back if the session is refused.
func (s *Server) count(sess *session, ip *ipSource) (closeReason, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	refuse := func(r closeReason) (closeReason, bool) {
		s.ips.close(ip)
		return r, false
	}
	if len(s.conns) >= s.cfg.MaxSessions {
		return refuse(closeRefusedFull)
	}
	if s.draining {
		return refuse(closeRefusedDraining)
	}
	if ip == nil {
		var ok bool
		if ip, ok = s.ips.open(sess.conn.RemoteAddr()); !ok {
			return closeRefusedPerIP, false
		}
	}
	sess.ip = ip
	s.conns[sess] = struct{}{}
	s.m.setConns(len(s.conns))
	s.wg.Add(1)
	return 0, true
}

// endSession forgets a finished session and releases its presence.
func (s *Server) endSession(sess *session) {
	s.mu.Lock()
	delete(s.conns, sess)
	s.m.setConns(len(s.conns))
	name := sess.name
	mine := name != "" && s.sessions[name] == sess
	if mine {
		delete(s.sessions, name)
	}
	s.m.setSessions(len(s.sessions))
	s.mu.Unlock()
	s.ips.close(sess.ip)
	if !mine {
		return
	}
	// Also while draining: a session that ends before Shutdown's snapshot
	// is not in it. A release that does not run in time expires by its TTL.
	s.releases.add(name, store.Location{Server: s.cfg.ID, Session: sess.id})
}

// local returns the session of a user logged in here, or nil.
func (s *Server) local(user string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[user]
}

// login binds the session to a name, once the name, and its token when the
// server checks tokens, are good: presence first (so the user is
// reachable), then the local map, then the takeover of any older session,
// then the reply and the offline inbox. The presence claim and the inbox
// take share one Redis round trip with the other logins in progress.
func (s *Server) login(sess *session, r request) *clientError {
	if sess.name != "" {
		return errorf(CodeAlreadyIn, "already logged in as %q; log out first", sess.name)
	}
	name, e := normalizeName(r.Name, s.cfg.MaxNameLen)
	if e != nil {
		return e
	}
	r.Name = name // the one form presence, inboxes, sessions and tokens know
	if e := s.authenticate(sess, r.Name, r.Token); e != nil {
		return e
	}
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining {
		return errorf(CodeShuttingDown, "server shutting down; connect to another")
	}
	loc := store.Location{Server: s.cfg.ID, Session: sess.id}
	// Until the session is in the local map, a local sender may find the
	// user claimed but not here and store its message offline, after the
	// inbox was taken: the watch notices, and the inbox is read again.
	watch := s.watches.watch(r.Name)
	token := s.newID().String() // names the inbox take (store/take.go)
	c := s.logins.claim(r.Name, loc, token, r.Acks)
	if c.Err != nil {
		return s.loginFailed(r.Name, watch, c.Err)
	}
	if s.loginClaimed != nil {
		s.loginClaimed(r.Name)
	}
	sess.name = r.Name
	sess.acks.Store(r.Acks)
	if r.Acks {
		sess.ackable.Store(newAckable(s.maxAckable()))
	} else {
		sess.ackable.Store(nil)
	}
	sess.receipts.Store(r.Receipts)
	inbox := s.inboxEvents(r.Name, c.Inbox)
	// The reply and the offline messages are queued in the same critical
	// section that publishes the session: deliveries find sessions under
	// this lock, so no live event can overtake them, and whoever sees the
	// reply (Shutdown, say) finds the session in the map.
	// They are written after the lock is released (batch), so logins do
	// not take turns at a write syscall.
	var batch sendq.Batch
	s.mu.Lock()
	s.loginReply(&batch, sess, r.Name)
	if r.Acks {
		s.startPaging(&batch, sess, inbox)
	} else {
		for _, e := range inbox {
			_ = sess.queue(&batch, e.appendLine)
		}
	}
	prev := s.sessions[r.Name]
	s.sessions[r.Name] = sess
	s.m.setSessions(len(s.sessions))
	// Forwards that came for the user while the login was in progress go
	// to the session now, before any that find it in the map.
	s.forwardHeld(&batch, sess, watch)
	s.mu.Unlock()
	batch.Flush()
	storedMeanwhile := s.watches.unwatch(r.Name, watch)
	s.routes.forget(r.Name)

	if prev != nil && prev != sess {
		prev.close(closeKickedLocal)
	} else if c.Had && c.Old.Server != s.cfg.ID && len(s.relays) > 0 {
		s.kickElsewhere(r.Name, c.Old)
	}
	if s.log.Enabled(s.ctx, slog.LevelDebug) { // the arguments would cost allocations per login
		s.log.Debug("login", "user", r.Name, "session", sess.id, "remote", sess.remote())
	}
	s.readInboxLate(sess, r.Name, r.Acks, inbox)
	switch {
	case c.InboxErr != nil && !r.Acks:
		s.retakeInbox(sess, r.Name, token, c.InboxErr)
	case c.InboxErr != nil && !storedMeanwhile:
		s.inboxNotRead(r.Name, c.InboxErr) // kept, not taken: it comes at the next login
		return nil
	}
	if storedMeanwhile {
		s.readInboxAgain(sess, r.Name, r.Acks, watch, inbox)
	}
	return nil
}

// The cold paths of login are functions of their own: inlined, their
// locals would make every login's stack frame larger, and the session's
// goroutine would grow its stack (a copy) at each login.

// loginFailed ends a login whose presence claim failed.
func (s *Server) loginFailed(user string, watch *inboxWatch, err error) *clientError {
	var b sendq.Batch
	for _, h := range s.watches.takeHeld(watch) {
		s.answerForward(h.c, h.f, wire.AckNotHere)
	}
	b.Flush()
	s.watches.unwatch(user, watch)
	s.log.Warn("login failed: presence store unavailable", "user", user, "err", err)
	return errorf(CodeUnavailable, "cannot log in now: presence store unavailable, try again shortly")
}

// loginReply queues the reply to a login that succeeded.
func (s *Server) loginReply(batch *sendq.Batch, sess *session, user string) {
	sess.sendReply(batch, reply{Reply: "login", OK: true, Name: user, Session: sess.id, Server: s.cfg.ID})
}

// forwardHeld sends sess the Forwards held for its login (s.mu is held).
func (s *Server) forwardHeld(batch *sendq.Batch, sess *session, watch *inboxWatch) {
	held := s.watches.takeHeld(watch)
	for i := range held {
		h := &held[i]
		s.forwardTo(batch, sess, h.c, h.f, &h.it)
	}
}

// kickElsewhere tells the server where user was logged in before (old)
// that the login is now here.
func (s *Server) kickElsewhere(user string, old store.Location) {
	k := wire.Kick{Origin: s.cfg.ID, Dest: old.Server, User: user, Session: old.Session}
	s.sendRelay(func(b []byte) []byte { return wire.AppendKick(b, k) })
}

func (s *Server) inboxNotRead(user string, err error) {
	s.log.Warn("offline inbox not read; it stays for the next login", "user", user, "err", err)
}

// readInboxAgain reads the inbox of a login once more when a message was
// stored offline from this server while the login was in progress (its
// watch saw it), and sends what the login's read did not have.
func (s *Server) readInboxAgain(sess *session, user string, acks bool, watch *inboxWatch, inbox []inboxEvent) {
	watch.inflight.Wait()
	tctx, tcancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
	defer tcancel()
	if acks && sess.pager.Load().skipLive() {
		return // paging: the next page reads the inbox again
	}
	var lines []string
	var err error
	if acks {
		lines, err = s.store.ReadInbox(tctx, user)
	} else {
		lines, err = s.store.TakeInbox(tctx, user, s.newID().String())
	}
	if err != nil {
		s.inboxNotRead(user, err)
		return
	}
	sent := make(map[string]bool, len(inbox))
	for _, e := range inbox {
		sent[e.ev.ID] = true
	}
	var b sendq.Batch // one write for the whole inbox
	s.queueInbox(&b, sess, user, lines, !acks, func(e *inboxEvent) bool {
		return e.ev.ID != "" && sent[e.ev.ID] // read with the claim: sent already
	})
	b.Flush()
}

// retakeInbox runs a login's inbox take again under the same token: the
// take may have run in Redis with its reply lost (a timeout), and the same
// take returns what it took (store/take.go) instead of leaving it under
// the take's key until that expires.
func (s *Server) retakeInbox(sess *session, user, token string, first error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
	defer cancel()
	lines, err := s.store.TakeInbox(ctx, user, token)
	if err != nil {
		s.log.Warn("offline inbox not read, twice; what the take moved waits under its key for a minute, the rest for the next login", "user", user, "first", first, "err", err)
		return
	}
	var b sendq.Batch
	s.queueInbox(&b, sess, user, lines, true, nil)
	b.Flush()
}

// authenticate checks a login's token, when the server checks tokens,
// against the name as validated. It runs before the login touches anything:
// a refused login claims no presence, kicks no one and reads no inbox. The
// client is told only that authentication failed; the log and
// msgserver_auth_failures_total say why.
func (s *Server) authenticate(sess *session, name, token string) *clientError {
	if s.auth == nil {
		return nil
	}
	ae := s.auth.verify(token, name)
	if ae == nil {
		return nil
	}
	s.m.authFailure(ae.reason)
	s.log.Debug("login refused", "user", name, "session", sess.id, "remote", sess.remote(), "reason", ae.reason, "err", truncate(ae.err.Error(), 200))
	return errorf(CodeAuthFailed, "authentication failed: a valid, unexpired token for this name is required")
}

// logout ends the session's login; the connection stays open.
func (s *Server) logout(sess *session) *clientError {
	if sess.name == "" {
		return errorf(CodeNotLoggedIn, "not logged in")
	}
	name := sess.name
	s.mu.Lock()
	if s.sessions[name] == sess {
		delete(s.sessions, name)
	}
	s.m.setSessions(len(s.sessions))
	s.mu.Unlock()
	sess.name = ""
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
	defer cancel()
	if err := s.store.Release(ctx, name, store.Location{Server: s.cfg.ID, Session: sess.id}); err != nil {
		s.log.Warn("release presence failed", "user", name, "err", err)
	}
	sess.sendReply(nil, reply{Reply: "logout", OK: true, Name: name})
	return nil
}

// onKick closes a local session that lost its login to another server.
func (s *Server) onKick(k wire.Kick) {
	s.mu.Lock()
	sess := s.sessions[k.User]
	if sess == nil || sess.id != k.Session {
		s.mu.Unlock()
		return
	}
	delete(s.sessions, k.User)
	s.m.setSessions(len(s.sessions))
	s.mu.Unlock()
	s.log.Debug("session taken over from another server", "user", k.User, "by", k.Origin)
	sess.close(closeKickedRemote)
}

// serveRelay is the reader of the relay link: it takes each event the link
// yields and acts on it on this goroutine (relaylink.go says why it pulls).
// Session writes, replies and acks queued while handling one read of the
// link wait in b, which next flushes before it reads again.
func (s *Server) serveRelay(ctx context.Context, l *relayLink) {
	var b sendq.Batch
	defer b.Flush()
	for {
		ev, err := l.next(ctx, &b)
		if err != nil {
			return // ctx has ended
		}
		switch ev.kind {
		case linkUp:
			resent := s.ledger.up(ev.conn)
			s.m.linkUp(l.addr)
			s.log.Info("relay link up", "addr", l.addr, "relay", ev.conn.relayID, "remote", ev.conn.remote, "resent", resent)
		case linkDown:
			moved := s.ledger.down(ev.conn)
			s.m.linkDown(l.addr)
			if ctx.Err() == nil {
				s.log.Warn("relay link down, reconnecting", "addr", l.addr, "relay", ev.conn.relayID, "err", ev.err, "resent_over_other_link", moved)
			}
		case gotForward:
			s.onForward(ev.fwd, ev.conn, &b)
		case gotAck:
			if d, o := s.ledger.acked(ev.ack, ev.at); d != nil {
				d.forwarded(o, &b)
			}
		case gotNack:
			gaveUp, first := s.ledger.nacked(ev.conn, ev.ack, ev.at)
			if gaveUp != nil {
				gaveUp.forwarded(outGaveUp, nil)
			}
			if first != nil {
				s.reroutes.run(s, first.ev.To, first.rerouteAfterNack)
			}
		case gotKick:
			s.onKick(ev.kick)
		}
	}
}

// newID returns a message id unique across servers and restarts: a random
// per-process prefix and a counter.
func (s *Server) newID() wire.ID {
	var id wire.ID
	copy(id[:8], s.idBase[:])
	binary.BigEndian.PutUint64(id[8:], s.idSeq.Add(1))
	return id
}

// maintain refreshes presence and the registry until ctx ends.
func (s *Server) maintain(ctx context.Context) {
	presenceEvery := s.cfg.PresenceTTL / 3
	registryEvery := s.cfg.RegistryTTL / 3
	s.heartbeat(ctx)
	tp := time.NewTicker(presenceEvery)
	defer tp.Stop()
	tr := time.NewTicker(registryEvery)
	defer tr.Stop()
	for {
		select {
		case <-tr.C:
			s.heartbeat(ctx)
		case <-tp.C:
			s.refreshPresence(ctx)
			s.routes.sweep(time.Now())
		case <-ctx.Done():
			return
		}
	}
}

// heartbeat writes the registry entry and tracks whether Redis answers.
func (s *Server) heartbeat(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
	defer cancel()
	var err error
	if s.isDraining() {
		err = s.store.Deregister(cctx, s.cfg.ID) // out of the registry: clients pick another server
	} else {
		err = s.store.Register(cctx, s.cfg.ID, s.cfg.AdvertiseAddr)
	}
	s.setRedisState(err)
	if err == nil && ctx.Err() == nil {
		// Redis is back after an outage (maybe restarted empty): put every
		// local user back at once rather than at the next refresh.
		s.mu.Lock()
		lost := len(s.sessions) > 0 && s.redisWasDown
		s.redisWasDown = false
		s.mu.Unlock()
		if lost {
			s.refreshPresence(ctx)
		}
	}
}

func (s *Server) setRedisState(err error) {
	if ctx := s.ctx; ctx.Err() != nil {
		return
	}
	if err != nil {
		if s.redisOK.Swap(false) {
			s.log.Error("Redis failing: logins fail until it answers, local delivery continues", "err", err)
		}
		s.mu.Lock()
		s.redisWasDown = true
		s.mu.Unlock()
		return
	}
	if !s.redisOK.Swap(true) {
		s.log.Info("Redis reachable again")
	}
}

// refreshPresence renews every local user's record in one pipeline and
// closes sessions whose user has logged in elsewhere meanwhile (a kick
// that was lost with the relay link).
func (s *Server) refreshPresence(ctx context.Context) {
	s.mu.Lock()
	users := make([]store.Record, 0, len(s.sessions))
	for name, sess := range s.sessions {
		users = append(users, store.Record{User: name, At: store.Location{Server: s.cfg.ID, Session: sess.id}})
	}
	s.mu.Unlock()
	if len(users) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout+time.Duration(len(users))*time.Microsecond)
	defer cancel()
	lost, err := s.store.RefreshAll(cctx, users)
	if err != nil {
		s.setRedisState(err)
		return
	}
	if len(lost) == 0 {
		return
	}
	ids := make(map[string]string, len(users))
	for _, u := range users {
		ids[u.User] = u.At.Session
	}
	for _, name := range lost {
		s.onKick(wire.Kick{Origin: "presence", User: name, Session: ids[name]})
	}
}

// sendRelay queues a frame on one live relay link (the first that is up);
// with none up it is lost: for the kicks it carries, the presence refresh
// catches up.
func (s *Server) sendRelay(fn func([]byte) []byte) {
	for _, l := range s.relays {
		if l.send(fn) {
			return
		}
	}
}

// Links returns the state of each relay link, in the order of the relay
// addresses (empty when no relay is configured). Unacked is the ledger's,
// over every link, on each.
func (s *Server) Links() []health.Link {
	if len(s.relays) == 0 {
		return nil
	}
	unacked := s.ledger.unacked()
	links := make([]health.Link, 0, len(s.relays))
	for _, r := range s.relays {
		l := r.status()
		l.Unacked = unacked
		links = append(links, l)
	}
	return links
}

// RedisOK reports whether the last Redis call from the background loops worked.
func (s *Server) RedisOK() bool { return s.redisOK.Load() }

// Parked returns how many connections wait in the poller, idle, with no
// goroutine of their own.
func (s *Server) Parked() int {
	n := int(s.web.parked.Load()) // WebSocket sessions park outside the poller
	if s.poller == nil {
		return n
	}
	return n + s.poller.Waiting()
}

// Sessions returns the number of logged-in sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Shutdown stops accepting, lets forwarded messages finish (until ctx
// ends), tells every client the server is going away, flushes, removes this
// server's presence and registry entries, and stops.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()

	// Let messages already handed to the relay get their acks, so their
	// senders hear the outcome before they are disconnected.
	if s.ledger != nil {
		t := time.NewTicker(10 * time.Millisecond)
		for s.ledger.unacked() > 0 && ctx.Err() == nil {
			select {
			case <-t.C:
			case <-ctx.Done():
			}
		}
		t.Stop()
	}

	s.mu.Lock()
	users := make(map[string]store.Location, len(s.sessions))
	for name, sess := range s.sessions {
		users[name] = store.Location{Server: s.cfg.ID, Session: sess.id}
	}
	conns := make([]*session, 0, len(s.conns))
	for sess := range s.conns {
		conns = append(conns, sess)
	}
	s.mu.Unlock()
	for _, sess := range conns {
		sess.close(closeShutdown)
	}
	// Let the sessions end (bounded), so that every release they queued is
	// done here, before Close stops the releaser.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		left := len(s.conns)
		s.mu.Unlock()
		if left == 0 {
			break
		}
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.RedisTimeout+time.Second)
	defer cancel()
	s.releases.flush(rctx)
	var errs []error
	if err := s.store.ReleaseAll(rctx, users); err != nil {
		errs = append(errs, err)
	}
	if err := s.store.Deregister(rctx, s.cfg.ID); err != nil {
		errs = append(errs, err)
	}
	s.log.Info("shut down", "sessions", len(users))
	s.Close()
	return errors.Join(errs...)
}

// Close stops everything at once: listeners, sessions, the relay link.
func (s *Server) Close() error {
	s.mu.Lock()
	s.draining = true
	for ln := range s.listeners {
		ln.Close()
	}
	for sess := range s.conns {
		sess.close(closeServerClosed)
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.web.close()
	s.idle.close()
	if s.poller != nil {
		_ = s.poller.Close() // every session has finished: nothing waits in it
	}
	if s.ledger != nil {
		for _, d := range s.ledger.abandon() {
			d.forwarded(outClosed, nil)
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Report is the message server's /healthz document: serving while it
// accepts clients; the relay link and Redis state are shown beside it.
func (s *Server) Report() health.Report {
	s.mu.Lock()
	draining := s.draining
	n := len(s.sessions)
	drain := s.drain
	s.mu.Unlock()
	rep := health.Report{
		Service:   "msgserver",
		ID:        s.cfg.ID,
		Serving:   !draining,
		Redis:     "ok",
		Sessions:  &n,
		Links:     s.Links(),
		StartedAt: s.started,
	}
	for _, l := range rep.Links {
		if l.Up {
			rep.LinksUp++
		}
	}
	if draining {
		rep.Reason = "shutting down"
	}
	if drain != nil {
		rep.Reason = fmt.Sprintf("draining: %d sessions left, until %s", n, drain.deadline.UTC().Format(time.RFC3339))
	}
	if !s.RedisOK() {
		rep.Redis = "unreachable"
	}
	return rep
}
