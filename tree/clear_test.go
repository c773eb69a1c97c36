package tree

import "testing"

// TestClearSmall: every element is zeroed, at every length around
// clearLoopMax, and nothing past the slice's length.
func TestClearSmall(t *testing.T) {
	for n := 0; n <= 2*clearLoopMax+1; n++ {
		rows := make([]Row, n, n+2)
		full := rows[:n+2]
		for i := range full {
			full[i] = Row{Topic: "t", Retain: true}
		}
		ClearSmall(rows)
		for i, r := range full {
			if cleared := r == (Row{}); cleared != (i < n) {
				t.Fatalf("length %d: row %d is %+v", n, i, r)
			}
		}
	}
}
