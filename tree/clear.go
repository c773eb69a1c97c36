package tree

// ClearSmall is clear(s) for the few elements a batch's lists hold (the
// tree's and the broker loop's): clear of a slice holding pointers is a
// call to the runtime's memclrHasPointers and its write-barrier check,
// ~50 instructions even for one element, and a tree publish's round trip
// cleared seven such slices of one or two (bench/README.md, branch
// h-tlat4). A longer slice is cleared by clear. The loop is not a range
// loop, which the compiler would turn back into clear.
func ClearSmall[T any](s []T) {
	if len(s) > clearLoopMax {
		clear(s)
		return
	}
	var zero T
	for i := 0; i < len(s); i++ {
		s[i] = zero
	}
}

// clearLoopMax is the longest slice ClearSmall clears element by element.
const clearLoopMax = 8
