package broker

import "testing"

// TestClearSmall: every element is zeroed, at every length around
// clearLoopMax, and nothing past the slice's length.
func TestClearSmall(t *testing.T) {
	for n := 0; n <= 2*clearLoopMax+1; n++ {
		ps := make([]*pubMeta, n, n+2)
		full := ps[:n+2]
		for i := range full {
			full[i] = &pubMeta{}
		}
		clearSmall(ps)
		for i, p := range full {
			if (p == nil) != (i < n) {
				t.Fatalf("length %d: element %d is %v", n, i, p)
			}
		}
	}
}
