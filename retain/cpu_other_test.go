//go:build !unix

package retain

import (
	"testing"
	"time"
)

// processCPU is unknown here: the benchmark reports wall time instead.
func processCPU(b *testing.B) time.Duration {
	b.Skip("process CPU time is read on unix only")
	return 0
}
