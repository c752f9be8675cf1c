package msgserver_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a test starts must end by its cleanup.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
