//go:build unix

package bench

import (
	"fmt"
	"syscall"
)

// raiseFileLimit lifts this process's soft open-files limit to need (at
// most the hard limit); it is an error if that is not enough. The broker
// under test is a Go program: it lifts its own soft limit to the hard one
// when it starts.
func raiseFileLimit(need uint64) error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("bench: open files limit: %w", err)
	}
	if l.Cur < need {
		l.Cur = min(need, l.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return fmt.Errorf("bench: raise the open files limit to %d: %w", l.Cur, err)
		}
	}
	if l.Cur < need {
		return fmt.Errorf("bench: need %d open files; the hard limit is %d (ulimit -Hn)", need, l.Max)
	}
	return nil
}
