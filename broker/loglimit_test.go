package broker

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// logLines are the JSON lines of a logBuf, decoded.
func logLines(t *testing.T, all string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(all), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// suppressedIn sums the suppressed= counts of lines.
func suppressedIn(lines []map[string]any) (n int64, countLines int) {
	for _, l := range lines {
		if v, ok := l["suppressed"].(float64); ok {
			n += int64(v)
			countLines++
		}
	}
	return n, countLines
}

// TestLogBudget: a logBudget keeps within its bounds, keeps the first
// line of each kind, and says how many it left out, on a clock of its
// own (no sleeps): every line asked for is either written or counted.
func TestLogBudget(t *testing.T) {
	cases := []struct {
		name     string
		perConn  int
		total    int
		conns    int // connections asking
		each     int // lines each asks for, of kind 0x97 quota, then one 0x90 topic
		steps    int // intervals the asks are spread over
		wantMax  int // lines written (counts excluded), at most
		wantKept int // lines written, at least
	}{
		{"one connection", 10, 100, 1, 10_000, 1, 11, 11},
		{"one connection, three intervals", 10, 100, 1, 9_000, 3, 31, 31}, // the first 0x90 once
		{"many connections", 10, 100, 1_000, 50, 1, 100 + 2, 2},
		{"no bound", -1, -1, 3, 50, 1, 153, 153},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lb := &logBuf{}
			now := time.Unix(1_000_000, 0)
			budget := newLogBudget(zerolog.New(lb), LogLimit{PerClient: c.perConn, Total: c.total, Interval: 10 * time.Second})
			budget.now = func() time.Time { return now }
			quotas := make([]logQuota, c.conns)
			written := 0
			asked := 0
			for step := 0; step < c.steps; step++ {
				for i := range quotas {
					for k := 0; k < c.each/c.steps; k++ {
						asked++
						if budget.allow(&quotas[i], fmt.Sprint("c", i), codeKind(packets.ErrQuotaExceeded)) {
							written++
						}
					}
					asked++
					if budget.allow(&quotas[i], fmt.Sprint("c", i), codeKind(packets.ErrTopicNameInvalid)) {
						written++
					}
				}
				now = now.Add(10 * time.Second)
			}
			for i := range quotas {
				budget.closed(&quotas[i], fmt.Sprint("c", i))
			}
			budget.flush()
			lines := logLines(t, lb.String())
			n, counts := suppressedIn(lines)
			if written > c.wantMax || written < c.wantKept {
				t.Errorf("%d lines written of %d asked, want %d to %d", written, asked, c.wantKept, c.wantMax)
			}
			if int64(written)+n != int64(asked) || budget.skipped.Load() != n {
				t.Errorf("%d written + %d counted (%d in the metric) != %d asked", written, n, budget.skipped.Load(), asked)
			}
			if c.total >= 0 && counts > (c.total+1)*c.steps {
				t.Errorf("%d lines of counts, want at most %d", counts, (c.total+1)*c.steps)
			}
		})
	}
}

// TestLogBudgetKinds: past its quota a connection's first line of a new
// kind is still written; past the broker-wide bound the first line of
// each kind in the interval is.
func TestLogBudgetKinds(t *testing.T) {
	budget := newLogBudget(zerolog.Nop(), LogLimit{PerClient: 2, Total: 3, Interval: time.Hour})
	var a, b logQuota
	steps := []struct {
		q    *logQuota
		kind logKind
		want bool
	}{
		{&a, codeKind(packets.ErrQuotaExceeded), true},
		{&a, codeKind(packets.ErrQuotaExceeded), true},
		{&a, codeKind(packets.ErrQuotaExceeded), false},   // a's quota spent
		{&a, codeKind(packets.ErrTopicNameInvalid), true}, // a's first of its kind; the total is spent now
		{&b, codeKind(packets.ErrQuotaExceeded), false},   // not b's first, but the total's spent and quota was written
		{&b, codeKind(packets.ErrPayloadFormatInvalid), true},
		{&b, codeKind(packets.ErrPayloadFormatInvalid), false},
	}
	for i, s := range steps {
		if got := budget.allow(s.q, "x", s.kind); got != s.want {
			t.Errorf("step %d (%#x): allow %v, want %v", i, s.kind, got, s.want)
		}
	}
}

// TestLogBudgetConcurrent: connections asking at once stay within the
// broker-wide bound (run with -race).
func TestLogBudgetConcurrent(t *testing.T) {
	budget := newLogBudget(zerolog.Nop(), LogLimit{PerClient: 5, Total: 50, Interval: time.Hour})
	var wg sync.WaitGroup
	var mu sync.Mutex
	written := 0
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var q logQuota
			n := 0
			for k := 0; k < 1_000; k++ {
				if budget.allow(&q, "c", codeKind(packets.ErrQuotaExceeded)) {
					n++
				}
			}
			budget.closed(&q, "c")
			mu.Lock()
			written += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	if written > 50 || written < 5 {
		t.Errorf("%d lines written, want 5 to 50", written)
	}
}

// refusedFlood connects to addr as id (MQTT 5) and sends n PUBLISHes at
// QoS 1 that the broker refuses, alternately for their user properties
// (over max_user_properties 2: 0x97) and for their topic ($sync/…:
// 0x90), then a PINGREQ; it returns how many PUBACKs of each reason code
// came before the PINGRESP (the barrier: packets are handled in order).
// The broker's acks are read while the packets are written.
func refusedFlood(t *testing.T, addr, id string, n int) map[byte]int {
	nc := hxDial(t, addr)
	defer nc.Close()
	r := bufio.NewReader(nc)
	if _, err := nc.Write(connectPacket(5, id)); err != nil {
		t.Error(err)
		return nil
	}
	if h, _, err := readPacketBody(r); err != nil || h>>4 != 2 {
		t.Errorf("%s: no CONNACK: %#x %v", id, h, err)
		return nil
	}
	over := hxProps(hxUser("a", "1"), hxUser("b", "2"), hxUser("c", "3"))
	var flood []byte
	for i := 0; i < n; i++ {
		pid := uint16(i%65_000 + 1)
		if i%2 == 0 {
			flood = append(flood, hxPublish("lf/over", 1, pid, over, "x")...)
		} else {
			flood = append(flood, hxPublish("$sync/lf", 1, pid, hxProps(), "x")...)
		}
	}
	flood = append(flood, 0xC0, 0)
	wrote := make(chan error, 1)
	go func() { _, err := nc.Write(flood); wrote <- err }() // ends with the write, or when nc closes
	defer func() { nc.Close(); <-wrote }()
	codes := map[byte]int{}
	for {
		h, body, err := readPacketBody(r)
		if err != nil {
			t.Errorf("%s: %v after %v", id, err, codes)
			return codes
		}
		if h == 0xD0 {
			return codes
		}
		if h != 0x40 || len(body) < 3 {
			t.Errorf("%s: %#x % x, want PUBACK", id, h, body)
			return codes
		}
		codes[body[2]]++
	}
}

// TestRefusedLogBounded: a client sending 10,000 refused PUBLISHes (over
// max_user_properties, to $sync/…) writes a bounded number of log lines,
// counted through the broker's logger: per_client lines and the first of
// each kind, then one line with the count of those left out when the
// connection closes; every refusal is either logged or counted. So do
// 40 clients sending 250 each, together, within the broker-wide total.
// Before, each refused packet wrote a Warn line (the red team: 48.8 MB of
// log in 8 s from one client).
func TestRefusedLogBounded(t *testing.T) {
	cases := []struct {
		name     string
		clients  int
		each     int
		maxLines int // lines of refusals, at most
	}{
		// 10 per client and the first line of each kind (0x97 and 0x90:
		// one is among the 10).
		{"one client", 1, 10_000, 11},
		// 100 in all, and the first of each kind once more.
		{"40 clients", 40, 250, 100 + 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// An interval longer than the test: the bound does not depend on
			// how fast the machine is.
			b, logs := startLogged(t, Options{MaxUserProperties: 2, RefusalLog: LogLimit{Interval: time.Hour}})
			var wg sync.WaitGroup
			codes := make([]map[byte]int, c.clients)
			for i := range c.clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					codes[i] = refusedFlood(t, b.TCPAddr(), fmt.Sprintf("lf%d", i), c.each)
				}()
			}
			wg.Wait()
			for i, got := range codes {
				if got[0x97] != c.each/2 || got[0x90] != c.each/2 || len(got) != 2 {
					t.Fatalf("client %d: PUBACK codes %v, want %d of 0x97 and of 0x90", i, got, c.each/2)
				}
			}
			quota := b.meter.refused[refusedQuota].Load()
			b.Close() // every connection closed: their counts are written
			lines := logLines(t, logs.String())
			var refusals, userOver, topic int
			for _, l := range lines {
				switch msg, _ := l["message"].(string); {
				case strings.HasPrefix(msg, "packet refused: too many user properties"):
					refusals++
					userOver++
				case msg == "refused":
					refusals++
					topic++
				}
			}
			n, counts := suppressedIn(lines)
			total := c.clients * c.each
			t.Logf("%d refused packets: %d lines of refusals, %d counted in %d lines, %d log bytes in all", total, refusals, n, counts, len(logs.String()))
			if refusals > c.maxLines || userOver == 0 || topic == 0 {
				t.Errorf("%d lines of refusals (%d of user properties, %d of topics) for %d refused packets, want at most %d and one of each kind",
					refusals, userOver, topic, total, c.maxLines)
			}
			if int64(refusals)+n != int64(total) || counts == 0 || counts > c.clients+1 {
				t.Errorf("%d lines + %d counted in %d lines, want %d refusals in all, counted in 1 to %d lines", refusals, n, counts, total, c.clients+1)
			}
			if got := b.logs.skipped.Load(); got != n {
				t.Errorf("mote_log_lines_suppressed_total %d, want %d", got, n)
			}
			if quota != int64(total/2) {
				t.Errorf("mote_refusals_total{reason=quota} %d, want %d", quota, total/2)
			}
			if len(logs.String()) > 64<<10 {
				t.Errorf("%d bytes of log, want at most 64 KiB", len(logs.String()))
			}
		})
	}
}

// TestLogBudgetTick: when an interval ends, the tick writes the count of
// a connection that asks no more and stays open, and the broker-wide
// count, once each.
func TestLogBudgetTick(t *testing.T) {
	lb := &logBuf{}
	now := time.Unix(1_000_000, 0)
	budget := newLogBudget(zerolog.New(lb), LogLimit{PerClient: 2, Total: 3, Interval: 10 * time.Second})
	budget.now = func() time.Time { return now }
	var a logQuota
	for range 5 {
		budget.allow(&a, "a", codeKind(packets.ErrQuotaExceeded)) // 2 written, 3 left out
	}
	for range 4 {
		budget.allow(nil, "", codeKind(packets.ErrQuotaExceeded)) // 1 written (the total), 3 left out
	}
	budget.tick()
	if n, _ := suppressedIn(logLines(t, lb.String())); n != 0 {
		t.Fatalf("counts written before the interval ended: %d", n)
	}
	now = now.Add(10 * time.Second)
	budget.tick()
	budget.tick()
	lines := logLines(t, lb.String())
	var byClient []string
	for _, l := range lines {
		if v, ok := l["suppressed"].(float64); ok {
			byClient = append(byClient, fmt.Sprintf("%v=%v", l["client"], v))
		}
	}
	if got := strings.Join(byClient, " "); got != "<nil>=3 a=3" {
		t.Errorf("counts %q, want the broker-wide 3, then a's 3", got)
	}
	budget.closed(&a, "a")
	if n, c := suppressedIn(logLines(t, lb.String())); n != 6 || c != 2 {
		t.Errorf("after the close: %d counted in %d lines, want 6 in 2", n, c)
	}
}
