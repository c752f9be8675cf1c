// Package health is the state model both binaries report on their admin
// address: per-link state, the /healthz JSON document and /metrics. The
// check keepalived runs on that document is the relay's (relay/check.go).
package health

import (
	"encoding/json"
	"strconv"
	"time"
)

// Seconds is a duration that encodes in JSON as seconds with a fraction,
// the unit operators and Prometheus use.
type Seconds time.Duration

// MarshalJSON encodes the duration as a number of seconds.
func (s Seconds) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, time.Duration(s).Seconds(), 'f', 6, 64), nil
}

// UnmarshalJSON decodes a number of seconds.
func (s *Seconds) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*s = Seconds(time.Duration(f * float64(time.Second)))
	return nil
}

// Duration returns s as a time.Duration.
func (s Seconds) Duration() time.Duration { return time.Duration(s) }

// Link is the state of one relay link, seen from either end.
type Link struct {
	// Peer is the other end: the message server's id on the relay, the
	// relay's on a message server. The JSON keeps the name operators know.
	Peer string `json:"server"`
	Up   bool   `json:"up"`
	// Since is when the link last went up or down.
	Since  time.Time `json:"since"`
	Remote string    `json:"remote,omitempty"`
	// LastHeartbeatAge is the time since any frame was last received.
	LastHeartbeatAge Seconds `json:"last_heartbeat_age_seconds"`
	RTT              Seconds `json:"rtt_seconds"`
	FramesIn         uint64  `json:"frames_in"`
	FramesOut        uint64  `json:"frames_out"`
	BytesIn          uint64  `json:"bytes_in"`
	BytesOut         uint64  `json:"bytes_out"`
	// QueueBytes is what is queued for the link and not yet written.
	QueueBytes int `json:"queue_bytes"`
	// Links is, on a relay, how many links the server holds to it: two
	// while both VIPs sit on this relay.
	Links int `json:"links,omitempty"`
	// Unacked is, on a message server, how many forwarded messages await
	// their end-to-end ack (they are resent after a reconnect).
	Unacked int `json:"unacked,omitempty"`
}
