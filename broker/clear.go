package broker

// clearSmall is clear(s) for the few elements a batch's lists hold: clear
// of a slice holding pointers is a call to the runtime's
// memclrHasPointers and its write-barrier check, ~50 instructions even for
// one element (bench/README.md, branch h-tlat4; tree has the same). A
// longer slice is cleared by clear. The loop is not a range loop, which
// the compiler would turn back into clear.
func clearSmall[T any](s []T) {
	if len(s) > clearLoopMax {
		clear(s)
		return
	}
	var zero T
	for i := 0; i < len(s); i++ {
		s[i] = zero
	}
}

// clearLoopMax is the longest slice clearSmall clears element by element.
const clearLoopMax = 8
