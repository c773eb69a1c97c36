package broker

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math/rand"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/bench/rawmqtt"
	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// inflightHeld is what Info.Inflight should count, from the structures
// that hold the messages it counts: every filed client's in-flight map
// (deliveries, their PUBRELs, the client's QoS 2 PUBRECs and PUBCOMPs),
// each connection's idSpaces (a displaced delivery, inbound PUBRECs,
// resolved lates' PUBRECs not yet absorbed) and keptInbound (PUBRECs,
// lates' PUBRECs). Exact only at quiescence: nothing read or written.
func inflightHeld(b *Broker) (n int64, parts map[string]int64) {
	parts = map[string]int64{}
	for _, cl := range b.server.Clients.GetAll() {
		parts["maps"] += int64(cl.State.Inflight.Len())
	}
	b.conns.Range(func(_, v any) bool {
		o, ok := v.(*conn).outOf()
		if !ok {
			return true
		}
		o.ids.mu.Lock()
		parts["inbound"] += int64(len(o.ids.inbound))
		if o.ids.displaced != nil {
			parts["displaced"]++
		}
		for _, l := range o.ids.late {
			parts["late"] += lateHeld(l)
		}
		o.ids.mu.Unlock()
		return true
	})
	b.keptIn.mu.Lock()
	for _, e := range b.keptIn.by {
		parts["kept"] += int64(len(e.pks))
		for _, l := range e.late {
			parts["kept late"] += lateHeld(l)
		}
	}
	b.keptIn.mu.Unlock()
	for _, v := range parts {
		n += v
	}
	return n, parts
}

// lateHeld is 1 if l holds a PUBREC taken from the old client's map.
func lateHeld(l *lateRec) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rec != nil {
		return 1
	}
	return 0
}

// clientLog records every mochi client a CONNECT made (OnSessionEstablish),
// so an audit can find maps that no filed client holds.
type clientLog struct {
	mqtt.HookBase
	mu  sync.Mutex
	all []*mqtt.Client
}

func (*clientLog) ID() string { return "client-log" }
func (*clientLog) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablish
}
func (h *clientLog) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	h.mu.Lock()
	h.all = append(h.all, cl)
	h.mu.Unlock()
}

// orphans lists the in-flight entries of clients not filed for their id.
func (h *clientLog) orphans(b *Broker) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, cl := range h.all {
		if cur, ok := b.server.Clients.Get(cl.ID); ok && cur == cl {
			continue
		}
		for _, pk := range cl.State.Inflight.GetAll(false) {
			out = append(out, fmt.Sprintf("%s (%p, v%d clean %v ends %v, taken over %v, answered %v, cause %v): type %d id %d qos %d topic %q",
				cl.ID, cl, cl.Properties.ProtocolVersion, cl.Properties.Clean, cl.SessionEndsWithConnection(), cl.IsTakenOver(), cl.Answered(), cl.StopCause(),
				pk.FixedHeader.Type, pk.PacketID, pk.FixedHeader.Qos, pk.TopicName))
		}
	}
	return out
}

// auditInflight compares Info.Inflight with inflightHeld at quiescence
// and reports the difference, with the entries of clients not filed.
func auditInflight(t *testing.T, b *Broker, log *clientLog) {
	t.Helper()
	want, parts := inflightHeld(b)
	got := atomic.LoadInt64(&b.server.Info.Inflight)
	if got != want {
		t.Errorf("Info.Inflight %d, held %d %v; entries of clients not filed: %v", got, want, parts, log.orphans(b))
	}
}

// Packet builders for the churn below.

func churnConnect(v byte, id string, clean bool, expiry uint32) []byte {
	flags := byte(0)
	if clean {
		flags |= 2
	}
	b := append(rawmqtt.AppendString(nil, "MQTT"), v, flags, 0, 60)
	if v == 5 {
		b = append(b, 5, 0x11)
		b = binary.BigEndian.AppendUint32(b, expiry)
	}
	return rawmqtt.Packet(0x10, rawmqtt.AppendString(b, id))
}

func churnPublish(v byte, topic string, payload []byte, qos byte, id uint16) []byte {
	b := rawmqtt.AppendString(nil, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	if v == 5 {
		b = append(b, 0)
	}
	return rawmqtt.Packet(0x30|qos<<1, append(b, payload...))
}

func churnSubscribe(v byte, id uint16, filter string, qos byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	if v == 5 {
		b = append(b, 0)
	}
	return rawmqtt.Packet(0x82, append(rawmqtt.AppendString(b, filter), qos))
}

// churnOnce runs a scaled-down bench/f34attack churn: workers connect as
// one of ids persistent client ids (MQTT 5 and 3.1.1, a third with Clean
// Start), subscribe at QoS 1 and 2 to a topic a publisher floods, publish
// at QoS 1 in the same first write (split at a random byte for a fifth),
// and close after a random few milliseconds, acknowledging nothing.
func churnOnce(t *testing.T, b *Broker, seed int64, ids, total int) {
	t.Helper()
	pc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.Write(churnConnect(5, "audit-pub", true, 0))
	go func() { _, _ = bufio.NewReader(pc).WriteTo(discard{}) }()
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		payload := make([]byte, 200)
		for id := uint16(1); ; id = id%60000 + 1 {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := pc.Write(churnPublish(5, "a/x", payload, byte(id%2), id)); err != nil {
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(seed*100 + int64(w)))
			for {
				i := int(next.Add(1))
				if i > total {
					return
				}
				v := byte(5)
				if rnd.Intn(4) == 0 {
					v = 4
				}
				id := "audit-" + strconv.Itoa(rnd.Intn(ids))
				c, err := net.Dial("tcp", b.TCPAddr())
				if err != nil {
					t.Error(err)
					return
				}
				c.SetDeadline(time.Now().Add(testTimeout))
				var p []byte
				p = append(p, churnConnect(v, id, rnd.Intn(3) == 0, 60)...)
				p = append(p, churnSubscribe(v, 1, "a/#", 1)...)
				p = append(p, churnSubscribe(v, 2, "a/#", 2)...)
				p = append(p, churnPublish(v, "big/"+id, make([]byte, 100+rnd.Intn(2000)), 1, 5)...)
				p = append(p, churnSubscribe(v, 6, "a/#", byte(rnd.Intn(3)))...)
				if rnd.Intn(5) == 0 {
					k := rnd.Intn(len(p))
					c.Write(p[:k])
					c.Write(p[k:])
				} else {
					c.Write(p)
				}
				c.SetReadDeadline(time.Now().Add(time.Duration(rnd.Intn(4000)) * time.Microsecond))
				_, _ = bufio.NewReader(c).WriteTo(discard{})
				c.Close()
			}
		}(w)
	}
	wg.Wait()
	close(stop)
	<-pubDone
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// quiesce waits until no MQTT connection is left and every writer has
// done its finishing duties.
func quiesce(t *testing.T, b *Broker) {
	t.Helper()
	waitUntil(t, "the connections gone", func() bool {
		n := 0
		b.conns.Range(func(_, _ any) bool { n++; return true })
		return n == 0 && atomic.LoadInt64(&b.server.Info.ClientsConnected) == 0
	})
	done := make(chan struct{})
	go func() { b.writers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("writers not done")
	}
	settle(t, b)
}

// TestInflightAuditChurn runs a scaled-down bench/f34attack churn (D2)
// and audits Info.Inflight after each round, at quiescence: it must equal
// what the broker's structures hold (inflightHeld). Before holdOffline
// held nothing for sessions that end with their connection, rounds left
// 1 to 4 more in the count than held, each in the map of a 3.1.1 clean
// session's client mochi had removed (3 of 3 runs of 30 rounds failed by
// round 5; TestInflightHeldForRemovedSession is the deterministic case).
func TestInflightAuditChurn(t *testing.T) {
	rounds := 3
	if s := os.Getenv("AUDIT_ROUNDS"); s != "" { // more, to hunt
		rounds, _ = strconv.Atoi(s)
	}
	b := start(t, Options{})
	log := new(clientLog)
	if err := b.server.AddHook(log, nil); err != nil {
		t.Fatal(err)
	}
	for r := range rounds {
		churnOnce(t, b, int64(r), 20, 600)
		quiesce(t, b)
		auditInflight(t, b, log)
		if t.Failed() {
			t.Fatalf("round %d", r)
		}
	}
}
