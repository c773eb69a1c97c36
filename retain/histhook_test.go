package retain

import "time"

// setWalkHook has f told how long each hold of h.mu by a walk took (nil:
// nothing told). Apart from the benchmarks so that they build without
// the hook too (measured against the store before it: a file of its own
// there).
func setWalkHook(h *histSizes, f func(held time.Duration)) {
	if f == nil {
		h.walked = nil
		return
	}
	h.walked = func(_ int, _ string, held time.Duration) { f(held) }
}
