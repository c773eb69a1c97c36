package broker

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// checkPlist fails unless l holds want, in order, by at and appendPtrs.
func checkPlist(t *testing.T, op int, l *plist[int], want []int) {
	t.Helper()
	if l.len() != len(want) {
		t.Fatalf("op %d: len %d, want %d", op, l.len(), len(want))
	}
	if len(want) == 0 {
		if l != nil {
			t.Fatalf("op %d: an empty list is not nil", op)
		}
		return
	}
	var got []int
	for _, p := range l.appendPtrs(nil) {
		got = append(got, *p)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("op %d: walk %v, want %v", op, got, want)
	}
	for i, w := range want {
		if *l.at(i) != w {
			t.Fatalf("op %d: at(%d) = %d, want %d", op, i, *l.at(i), w)
		}
	}
	if l.n > plistWidth && l.n <= 1<<(plistBits*l.depth) {
		t.Fatalf("op %d: %d elements in %d levels: one too many", op, l.n, l.depth+1)
	}
}

// TestPlist: random appends, sets and removals against a slice, through
// the sizes where the tree gains and loses levels (32, 1024); every
// version a change left behind still holds what it held (readers may be
// walking it).
func TestPlist(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	var l *plist[int]
	var want []int
	type version struct {
		l    *plist[int]
		want []int
	}
	var kept []version
	for op := range 12_000 {
		grow := op < 4000 || (op >= 9000 && op < 10500)
		switch {
		case len(want) == 0 || (grow && r.IntN(10) < 8) || (!grow && r.IntN(10) < 2):
			l = l.with(op)
			want = append(want, op)
		case r.IntN(3) == 0:
			i := r.IntN(len(want))
			l = l.set(i, -op)
			want[i] = -op
		default:
			i := r.IntN(len(want))
			l = l.without(i)
			want[i] = want[len(want)-1]
			want = want[:len(want)-1]
		}
		if op%97 == 0 {
			checkPlist(t, op, l, want)
			kept = append(kept, version{l, slices.Clone(want)})
		}
	}
	for _, v := range kept {
		checkPlist(t, -1, v.l, v.want)
	}
	maxLen := 0
	for _, v := range kept {
		maxLen = max(maxLen, len(v.want))
	}
	if maxLen <= 1<<(2*plistBits) {
		t.Fatalf("the list never grew past %d: three levels untested", maxLen)
	}
	for op := 0; len(want) > 0; op++ {
		i := r.IntN(len(want))
		l = l.without(i)
		want[i] = want[len(want)-1]
		want = want[:len(want)-1]
		if op%31 == 0 {
			checkPlist(t, op, l, want)
		}
	}
	checkPlist(t, -2, l, want)
}
