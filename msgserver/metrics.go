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
	parkedSessions  prometheus.Gauge
	messages        *prometheus.CounterVec
	local, relayed  prometheus.Counter
	offline         prometheus.Counter
	relayLinkUp     prometheus.Gauge
	reconnects      prometheus.Counter
	unacked         prometheus.Gauge
	resentTotal     prometheus.Counter
	nackedTotal     prometheus.Counter
	redisErrors     prometheus.Counter
	clientErrors    *prometheus.CounterVec
	disconnects     *prometheus.CounterVec
	duplicates      prometheus.Counter
	deliveryLatency prometheus.Histogram
	tlsFailures     prometheus.Counter
}

// NewMetrics registers the message server's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		sessions: f.NewGauge(prometheus.GaugeOpts{
			Name: "msgserver_sessions",
			Help: "Logged-in client sessions on this server.",
		}),
		parkedSessions: f.NewGauge(prometheus.GaugeOpts{
			Name: "msgserver_parked_sessions",
			Help: "Client connections idle long enough to wait in the poller, with no goroutine or read buffer of their own.",
		}),
		messages: f.NewCounterVec(prometheus.CounterOpts{
			Name: "msgserver_messages_total",
			Help: "Chat messages accepted from senders on this server, by how they reached the recipient.",
		}, []string{"path"}),
		relayLinkUp: f.NewGauge(prometheus.GaugeOpts{
			Name: "msgserver_relay_link_up",
			Help: "1 if the link to the relay is up, else 0.",
		}),
		reconnects: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_relay_reconnects_total",
			Help: "Times the relay link went down and was redialled.",
		}),
		unacked: f.NewGauge(prometheus.GaugeOpts{
			Name: "msgserver_unacked_frames",
			Help: "Forwarded messages awaiting their end-to-end ack (kept for resending).",
		}),
		resentTotal: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_resent_frames_total",
			Help: "Forwarded messages sent again after an ack timeout or a no-route NACK.",
		}),
		nackedTotal: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_nacks_total",
			Help: "No-route NACKs received from the relay.",
		}),
		redisErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_redis_errors_total",
			Help: "Redis commands that failed (presence, registry, inbox).",
		}),
		clientErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "msgserver_client_errors_total",
			Help: "Error replies sent to clients, by error code.",
		}, []string{"code"}),
		disconnects: f.NewCounterVec(prometheus.CounterOpts{
			Name: "msgserver_disconnects_total",
			Help: "Client connections closed by the server, by reason code.",
		}, []string{"reason"}),
		duplicates: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_duplicates_dropped_total",
			Help: "Resent messages dropped because they had already been delivered.",
		}),
		deliveryLatency: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "msgserver_delivery_latency_seconds",
			Help:    "Time from accepting a message to knowing the recipient has it (local write, end-to-end ack, or offline store).",
			Buckets: prometheus.ExponentialBuckets(50e-6, 4, 10),
		}),
		tlsFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "msgserver_tls_handshake_failures_total",
			Help: "Client connections to the TLS port that failed their handshake (plaintext, wrong CA, timeout); each is logged at debug level only.",
		}),
	}
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

func (m *Metrics) linkUp() {
	if m != nil {
		m.relayLinkUp.Set(1)
	}
}

func (m *Metrics) linkDown() {
	if m != nil {
		m.relayLinkUp.Set(0)
		m.reconnects.Inc()
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

func (m *Metrics) disconnect(reason string) {
	if m != nil {
		m.disconnects.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) duplicate() {
	if m != nil {
		m.duplicates.Inc()
	}
}

func (m *Metrics) tlsHandshakeFailed() {
	if m != nil {
		m.tlsFailures.Inc()
	}
}
