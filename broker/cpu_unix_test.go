//go:build unix

package broker

import (
	"syscall"
	"time"
)

// processCPU is the CPU time this process has used (user and system):
// what a benchmark's work costs, less at the mercy of other processes on
// a shared machine than its wall time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
