package testenv

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"
)

// AdminCall makes one admin API request (msgserver --admin), with a bearer
// token if given, and decodes the JSON answer.
func AdminCall(t testing.TB, method, url, token string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: HTTP %d, not JSON: %q", method, url, resp.StatusCode, b)
	}
	return resp.StatusCode, m
}
