package translate

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// TestManyOverlapsBounded: a rule set where every rule of one half
// overlaps every rule of the other ("a<i>/+" and "+/b<j>": a<i>/b<j>
// matches both) is refused with an error of bounded size, made with
// bounded memory. It listed every pair: at MaxRules, 4 million problems,
// an error of 793 MB (printed whole by `mote broker`), 3.5 GB allocated
// and 22 s.
func TestManyOverlapsBounded(t *testing.T) {
	var rules []Rule
	for i := range MaxRules / 2 {
		rules = append(rules, rule(fmt.Sprintf("a%d/+", i), fmt.Sprintf("x%d/+", i)))
		rules = append(rules, rule(fmt.Sprintf("+/b%d", i), fmt.Sprintf("y%d/+", i)))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := New(rules)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrRule) {
		t.Fatalf("New: %v", err)
	}
	msg := err.Error()
	if len(msg) > 64<<10 {
		t.Errorf("an error of %d bytes", len(msg))
	}
	if !strings.Contains(msg, `translate[0] (from "a0/+" to "x0/+") and translate[1] (from "+/b0" to "y0/+"): ambiguous`) {
		t.Errorf("the first problem is not named: %.300s", msg)
	}
	if !strings.Contains(msg, "more problems") {
		t.Errorf("the error does not say that problems are left out: %.300s", msg[max(0, len(msg)-300):])
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
		t.Errorf("%d MiB allocated", grew>>20)
	}
}
