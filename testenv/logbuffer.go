package testenv

import (
	"bytes"
	"sync"
)

// LogBuffer is where a server under test logs (slog.NewTextHandler(&buf,
// nil)) while the test reads what it wrote so far.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *LogBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// String is everything logged so far.
func (w *LogBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
