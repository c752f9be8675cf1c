// Package grafana holds the chatrelay Grafana dashboard (chatrelay.json),
// which `relay render-lab --grafana` provisions for the lab's Grafana.
// Its test checks every PromQL expression in it against the metrics live
// binaries export.
package grafana

import _ "embed"

// Dashboard is chatrelay.json.
//
//go:embed chatrelay.json
var Dashboard []byte
