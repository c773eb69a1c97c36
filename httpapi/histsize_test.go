package httpapi

import (
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/retain"
)

// hostileHistories are rows whose past values an encoder grows most
// (R3-hist, docs/redteam-rt.md), each ending with a short current value:
// an estimate from the current value (× 4/3) is many times short.
var hostileHistories = map[string][]string{
	"h/ctrl":   {strings.Repeat("\x01", 3000), strings.Repeat("\x1f", 3000), "x"},
	"h/quote":  {strings.Repeat(`"`, 3000), strings.Repeat(`\`, 3000), "x"},
	"h/bytes":  {strings.Repeat("\xff", 3000), strings.Repeat("\xfe\x00", 1500), "x"},
	"h/floats": {"[" + strings.Repeat("0.1,", 1000) + "0.1]", "[" + strings.Repeat("1e9,", 1000) + "1]", "1"},
	"h/gone":   {strings.Repeat("\x02", 3000), ""}, // deleted: no current row
	"h/" + strings.Repeat("\x01", 200) + "/" + strings.Repeat(`"`, 200): {"a", "b", "c"},
}

// historyGETs checks that every history answer of filters, in every
// codec, is at most AnswerSize's estimate for it.
func historyGETs(t *testing.T, e *env, filters []string) {
	t.Helper()
	for _, filter := range filters {
		for _, limit := range []int{0, 1, 2} {
			est, err := e.b.AnswerSize(testCtx(t), admin, filter, &broker.SubscribeOptions{Limit: limit})
			if err != nil {
				t.Fatal(err)
			}
			for _, accept := range []string{"application/json", "application/cbor", "application/msgpack"} {
				path := "/api/tree/" + escapeFilter(filter) + "?history=1"
				if limit > 0 {
					path += fmt.Sprintf("&limit=%d", limit)
				}
				resp, body := e.do(t, "GET", path, nil, "Accept", accept)
				if resp.StatusCode != 200 {
					t.Fatalf("%s %s: %d %.200s", accept, path, resp.StatusCode, body)
				}
				if int64(len(body)) > est {
					t.Errorf("%s history of %q (limit %d): %d bytes, estimate %d (%.2f×)", accept, filter, limit, len(body), est, float64(len(body))/float64(est))
				}
			}
		}
	}
}

// escapeFilter path-escapes each level of a filter (SPEC §10).
func escapeFilter(filter string) string {
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		levels[i] = pathEscape(l)
	}
	return strings.Join(levels, "/")
}

// pathEscape escapes every byte but unreserved ones.
func pathEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// TestHistoryAnswerSizeBound: a history answer (GET ?history=1) is at
// most AnswerSize's estimate, whatever its stored values (R3-hist): past
// values an encoder grows six times, deleted rows, values stored before
// a restart, values not yet committed, limits.
func TestHistoryAnswerSizeBound(t *testing.T) {
	rules := retain.Options{History: []retain.HistoryRule{{Filter: "h/#", Keep: 10}}}
	filters := []string{"h/#", "#", "h/+"}
	for topic := range hostileHistories {
		filters = append(filters, topic)
	}
	publishAll := func(t *testing.T, e *env) {
		for topic, values := range hostileHistories {
			for _, v := range values {
				e.publish(t, admin, topic, v)
			}
		}
	}
	t.Run("committed", func(t *testing.T) {
		st, err := retain.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		e := setup(t, broker.Options{Store: st, SyncRetain: true, Retain: rules}, Options{})
		publishAll(t, e)
		historyGETs(t, e, filters)
	})
	t.Run("pending", func(t *testing.T) {
		// Not committed when estimated (a commit every 10 s): the answer
		// waits for the commit, the estimate does not.
		st, err := retain.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		r := rules
		r.Interval = 10_000_000_000
		e := setup(t, broker.Options{Store: st, Retain: r}, Options{})
		publishAll(t, e)
		historyGETs(t, e, filters)
	})
	t.Run("restart", func(t *testing.T) {
		dir := t.TempDir()
		st, err := retain.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		first := setup(t, broker.Options{Store: st, SyncRetain: true, Retain: rules}, Options{})
		publishAll(t, first)
		first.s.Close()
		if err := first.b.Close(); err != nil {
			t.Fatal(err)
		}
		st, err = retain.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		e := setup(t, broker.Options{Store: st, Retain: rules}, Options{})
		for topic, values := range hostileHistories { // short current values now
			if values[len(values)-1] != "" {
				e.publish(t, admin, topic, "y")
			}
		}
		historyGETs(t, e, filters)
	})
}

// TestHistoryAnswerSizeTypical: the estimate of an ordinary history (a
// home's sensors: numbers, words and small objects, 25 values a row, a
// rule keeping 20 or 100) is not many times its answer.
func TestHistoryAnswerSizeTypical(t *testing.T) {
	for _, keep := range []int{20, 100} {
		t.Run(fmt.Sprint("keep ", keep), func(t *testing.T) {
			st, err := retain.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			e := setup(t, broker.Options{Store: st, SyncRetain: true, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "home/#", Keep: keep}}}}, Options{})
			for i := range 25 {
				for room := range 12 {
					r := fmt.Sprintf("home/room%d/", room)
					e.publish(t, admin, r+"temperature", fmt.Sprintf("%d.%d", 18+i%5, i%10))
					e.publish(t, admin, r+"humidity", fmt.Sprint(40+i))
					e.publish(t, admin, r+"light", fmt.Sprintf(`{"state":"ON","brightness":%d}`, 100+i))
					e.publish(t, admin, r+"status", []string{"online", "offline"}[i%2])
				}
			}
			for _, limit := range []int{0, 5} {
				est, err := e.b.AnswerSize(testCtx(t), admin, "home/#", &broker.SubscribeOptions{Limit: limit})
				if err != nil {
					t.Fatal(err)
				}
				for _, accept := range []string{"application/json", "application/cbor"} {
					path := "/api/tree/home/%23?history=1"
					if limit > 0 {
						path += fmt.Sprintf("&limit=%d", limit)
					}
					resp, body := e.do(t, "GET", path, nil, "Accept", accept)
					if resp.StatusCode != 200 {
						t.Fatalf("%d %.200s", resp.StatusCode, body)
					}
					ratio := float64(est) / float64(len(body))
					t.Logf("RATIO keep %d %s limit %d: answer %d bytes, estimate %d: %.2f×", keep, accept, limit, len(body), est, ratio)
					if ratio < 1 || ratio > 4 {
						t.Errorf("%s limit %d: estimate %.2f× the answer, want 1 to 4", accept, limit, ratio)
					}
				}
			}
		})
	}
}

// TestHistoryRefusedByEstimate: a history GET whose stored values do not
// fit the answer budget beside the answers held is refused as before
// (503, Retry-After, the reason) before it is read or built: its estimate
// counts its past values as the encoder writes them. Before, an estimate
// from the short current values let it in, and the answer was built (12
// MB of JSON) before its size was found not to fit.
func TestHistoryRefusedByEstimate(t *testing.T) {
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, broker.Options{Store: st, SyncRetain: true, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "h/#", Keep: 10}}}}, Options{MaxAnswerBytes: 4 << 20})
	for i := range 4 {
		topic := fmt.Sprint("h/", i)
		for j := range 5 {
			e.publish(t, admin, topic, strings.Repeat(string(rune(1+j)), 100_000))
		}
		e.publish(t, admin, topic, "x")
	}
	resp, body := e.do(t, "GET", "/api/tree/h/%23?history=1", nil)
	if resp.StatusCode != 200 || len(body) < 12_000_000 {
		t.Fatalf("alone: %s, %d bytes", resp.Status, len(body))
	}
	half := e.s.opts.MaxAnswerBytes / 2
	if !e.s.answers.take(half, false) { // answers being written
		t.Fatal("the budget is not empty")
	}
	defer e.s.answers.give(half)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	resp, body = e.do(t, "GET", "/api/tree/h/%23?history=1", nil)
	runtime.ReadMemStats(&after)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "large answers") {
		t.Fatalf("with the budget taken: %s %.200s", resp.Status, body)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("a refused GET allocated %d bytes: its answer was read and built", n)
	}
}
