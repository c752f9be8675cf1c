package msgserver

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the message server's Prometheus metrics. A nil *Metrics
// records nothing.
type Metrics struct {
	sessions        prometheus.Gauge
	connections     prometheus.Gauge
	connLimit       prometheus.Gauge
	parkedSessions  prometheus.Gauge
	messages        *prometheus.CounterVec
	local, relayed  prometheus.Counter
	offline         prometheus.Counter
	relayLinkUp     *prometheus.GaugeVec
	reconnects      *prometheus.CounterVec
	unacked         prometheus.Gauge
	resentTotal     prometheus.Counter
	flowWaits       prometheus.Counter
	nackedTotal     prometheus.Counter
	stalledTotal    prometheus.Counter
	redisErrors     prometheus.Counter
	clientErrors    *prometheus.CounterVec
	authFailures    *prometheus.CounterVec
	disconnects     *prometheus.CounterVec
	duplicates      prometheus.Counter
	deliveryLatency prometheus.Histogram
	redisMemory     prometheus.Gauge
	offlineFull     prometheus.Gauge
	tlsFailures     prometheus.Counter
	logins          prometheus.Counter
	loginFailures   *prometheus.CounterVec
	redisLatency    *prometheus.HistogramVec
	ackedEvents     prometheus.Counter
	ackThrottles    prometheus.Counter
}

// NewMetrics registers the message server's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		sessions: f.NewGauge(prometheus.GaugeOpts{
			Name: "msgserver_sessions",
			Help: "Logged-in client sessions on this server.",
		}),
		connections: f.NewGauge(prometheus.GaugeOpts{
			Name: "msgserver_connections",
			Help: "Open client connections, logged in or not.",
		}),
		connLimit: f.NewGauge(prometheus.GaugeOpts{
			Name: "msgserver_connection_limit",
			Help: "Client connections taken before server_full: --max-sessions, or less if the descriptor limit is lower.",
		}),
		parkedSessions: f.NewGauge(prometheus.GaugeOpts{
			Name: "msgserver_parked_sessions",
			Help: "Client connections idle long enough to wait in the poller, with no goroutine or read buffer of their own.",
		}),
		messages: f.NewCounterVec(prometheus.CounterOpts{
			Name: "msgserver_messages_total",
			Help: "Chat messages accepted from senders on this server, by how they reached the recipient.",
		}, []string{"path"}),
		relayLinkUp: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "msgserver_relay_link_up",
			Help: "1 if the link to the relay address (a VIP; label addr) is up, else 0. A server given two VIPs has one series per VIP.",
		}, []string{"addr"}),
		reconnects: f.NewCounterVec(prometheus.CounterOpts{
			Name: "msgserver_relay_reconnects_total",
			Help: "Times the relay link to the address (label addr) went down and was redialled.",
		}, []string{"addr"}),
		unacked: f.NewGauge(prometheus.GaugeOpts{
			Name: "msgserver_unacked_frames",
			Help: "Forwarded messages awaiting their end-to-end ack (kept for resending).",
		}),
		flowWaits: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_flow_waits_total",
			Help: "Times a client's reader waited, its connection unread, for room in the window of forwarded messages (--send-window).",
		}),
		resentTotal: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_resent_frames_total",
			Help: "Forwarded messages sent again after an ack timeout or a no-route NACK.",
		}),
		nackedTotal: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_nacks_total",
			Help: "No-route NACKs received from the relay.",
		}),
		stalledTotal: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_relay_link_stalls_total",
			Help: "Times one of two relay links went silent with messages on it (--stall-after) and they were sent over the other link.",
		}),
		redisErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_redis_errors_total",
			Help: "Redis commands that failed (presence, registry, inbox).",
		}),
		clientErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "msgserver_client_errors_total",
			Help: "Error replies sent to clients, by error code.",
		}, []string{"code"}),
		authFailures: f.NewCounterVec(prometheus.CounterOpts{
			Name: "msgserver_auth_failures_total",
			Help: "Logins refused with auth_failed, by why (missing, malformed, algorithm, signature, expired, no_expiry, not_yet_valid, subject, audience, issuer, too_long, claims); the client is told only auth_failed.",
		}, []string{"reason"}),
		disconnects: f.NewCounterVec(prometheus.CounterOpts{
			Name: "msgserver_disconnects_total",
			Help: "Client connections closed by the server, by reason code.",
		}, []string{"reason"}),
		ackedEvents: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_acked_events_total",
			Help: "Events acked by clients with acks on (removed from their inboxes).",
		}),
		ackThrottles: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_ack_throttled_total",
			Help: "Acks after which a client waited: its acks had made Redis scan more than its budget of kept events.",
		}),
		duplicates: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_duplicates_dropped_total",
			Help: "Resent messages dropped because they had already been delivered.",
		}),
		deliveryLatency: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "msgserver_delivery_latency_seconds",
			Help:    "Time from accepting a message to knowing the recipient has it (local write, end-to-end ack, or offline store).",
			Buckets: prometheus.ExponentialBuckets(50e-6, 4, 10),
		}),
		redisMemory: f.NewGauge(prometheus.GaugeOpts{
			Name: "msgserver_redis_used_memory_bytes",
			Help: "Redis's used_memory as last read for the offline storage cap (read every second while the cap is on).",
		}),
		offlineFull: f.NewGauge(prometheus.GaugeOpts{
			Name: "msgserver_offline_full",
			Help: "1 while Redis uses more than --offline-max-bytes and offline messages are refused (offline_full), else 0.",
		}),
		tlsFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_tls_handshake_failures_total",
			Help: "Client connections to the TLS port that failed their handshake (plaintext, wrong CA, timeout); each is logged at debug level only.",
		}),
	}
	m.logins = f.NewCounter(prometheus.CounterOpts{
		Name: "msgserver_logins_total",
		Help: "Logins that succeeded.",
	})
	m.loginFailures = f.NewCounterVec(prometheus.CounterOpts{
		Name: "msgserver_login_failures_total",
		Help: "Logins refused, by the error code the client was sent (auth_failed, bad_name, presence_unavailable, rate_limited, shutting_down, ...).",
	}, []string{"code"})
	m.redisLatency = f.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "msgserver_redis_command_duration_seconds",
		Help:    "Time each Redis command took, failed ones included, by command (a pipeline counts once, as \"pipeline\").",
		Buckets: prometheus.ExponentialBuckets(100e-6, 4, 8),
	}, []string{"command"})
	m.local = m.messages.WithLabelValues("local")
	m.relayed = m.messages.WithLabelValues("relayed")
	m.offline = m.messages.WithLabelValues("offline")
	return m
}

func (m *Metrics) parked(delta int) {
	if m != nil {
		m.parkedSessions.Add(float64(delta))
	}
}

// setSessions is called with the server's lock held, so that concurrent
// logins and logouts set the gauge in the order they changed the count.
func (m *Metrics) setSessions(n int) {
	if m != nil {
		m.sessions.Set(float64(n))
	}
}

// setConns is called with the server's lock held, as setSessions is.
func (m *Metrics) setConns(n int) {
	if m != nil {
		m.connections.Set(float64(n))
	}
}

func (m *Metrics) setConnLimit(n int) {
	if m != nil {
		m.connLimit.Set(float64(n))
	}
}

func (m *Metrics) delivered(status string, accepted time.Time) {
	if m == nil {
		return
	}
	switch status {
	case StatusDelivered:
		m.local.Inc()
	case StatusRelayed:
		m.relayed.Inc()
	case StatusOffline:
		m.offline.Inc()
	}
	m.deliveryLatency.Observe(time.Since(accepted).Seconds())
}

func (m *Metrics) linkUp(addr string) {
	if m != nil {
		m.relayLinkUp.WithLabelValues(addr).Set(1)
	}
}

func (m *Metrics) linkDown(addr string) {
	if m != nil {
		m.relayLinkUp.WithLabelValues(addr).Set(0)
		m.reconnects.WithLabelValues(addr).Inc()
	}
}

// linkKnown makes the link's series exist (at 0) before it first comes up.
func (m *Metrics) linkKnown(addr string) {
	if m != nil {
		m.relayLinkUp.WithLabelValues(addr).Add(0)
		m.reconnects.WithLabelValues(addr)
	}
}

func (m *Metrics) stalled() {
	if m != nil {
		m.stalledTotal.Inc()
	}
}

func (m *Metrics) setUnacked(n int) {
	if m != nil {
		m.unacked.Set(float64(n))
	}
}

func (m *Metrics) resent(n int) {
	if m != nil {
		m.resentTotal.Add(float64(n))
	}
}

func (m *Metrics) flowWait() {
	if m != nil {
		m.flowWaits.Inc()
	}
}

func (m *Metrics) nacked() {
	if m != nil {
		m.nackedTotal.Inc()
	}
}

func (m *Metrics) redisError() {
	if m != nil {
		m.redisErrors.Inc()
	}
}

func (m *Metrics) clientError(code string) {
	if m != nil {
		m.clientErrors.WithLabelValues(code).Inc()
	}
}

func (m *Metrics) authFailure(reason string) {
	if m != nil {
		m.authFailures.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) disconnect(reason string) {
	if m != nil {
		m.disconnects.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) acked(n int) {
	if m != nil {
		m.ackedEvents.Add(float64(n))
	}
}

func (m *Metrics) ackThrottled() {
	if m != nil {
		m.ackThrottles.Inc()
	}
}

func (m *Metrics) duplicate() {
	if m != nil {
		m.duplicates.Inc()
	}
}

func (m *Metrics) setRedisMemory(bytes int64) {
	if m != nil {
		m.redisMemory.Set(float64(bytes))
	}
}

func (m *Metrics) setOfflineFull(full bool) {
	if m != nil {
		v := 0.0
		if full {
			v = 1
		}
		m.offlineFull.Set(v)
	}
}

func (m *Metrics) tlsHandshakeFailed() {
	if m != nil {
		m.tlsFailures.Inc()
	}
}

func (m *Metrics) login(e *clientError) {
	if m == nil {
		return
	}
	if e == nil {
		m.logins.Inc()
		return
	}
	m.loginFailures.WithLabelValues(e.code).Inc()
}

// redisCommand is the Redis timing hook's observer (store.TimingHook).
func (m *Metrics) redisCommand(command string, d time.Duration) {
	if m != nil {
		m.redisLatency.WithLabelValues(command).Observe(d.Seconds())
	}
}
