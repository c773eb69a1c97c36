package mqtt

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// countHook counts the calls of the publish path's hook methods it
// provides (change 91's tests).
type countHook struct {
	HookBase
	id    string
	prov  []byte
	calls map[string]int
	acl   bool
}

func (h *countHook) ID() string { return h.id }
func (h *countHook) Provides(b byte) bool {
	return bytes.IndexByte(h.prov, b) >= 0
}
func (h *countHook) OnPacketRead(*Client, *packets.Packet) error {
	h.calls["read"]++
	return nil
}
func (h *countHook) OnPublish(*Client, *packets.Packet) error {
	h.calls["publish"]++
	return nil
}
func (h *countHook) OnPacketProcessed(*Client, *packets.Packet, error) { h.calls["processed"]++ }
func (h *countHook) OnACLCheck(*Client, string, bool) bool {
	h.calls["acl"]++
	return h.acl
}

// TestMoteHooksOne: the chains on the publish path call the one hook that
// provides a method without asking each hook (change 91), every hook
// that provides it when several do, none that does not; OnACLCheck is
// false with no hook providing it, as the loop over none was.
func TestMoteHooksOne(t *testing.T) {
	all := []byte{OnPacketRead, OnPublish, OnPacketProcessed, OnACLCheck}
	for _, tc := range []struct {
		name    string
		provs   [][]byte
		want    []map[string]int
		wantACL bool
	}{
		{"one hook", [][]byte{all}, []map[string]int{{"read": 1, "publish": 1, "processed": 1, "acl": 1}}, false},
		{"two hooks, both", [][]byte{all, all}, []map[string]int{
			{"read": 1, "publish": 1, "processed": 1, "acl": 1},
			{"read": 1, "publish": 1, "processed": 1, "acl": 1}}, false},
		{"two hooks, one each", [][]byte{{OnPacketRead, OnACLCheck}, {OnPublish, OnPacketProcessed}}, []map[string]int{
			{"read": 1, "acl": 1},
			{"publish": 1, "processed": 1}}, false},
		{"a second hook providing nothing", [][]byte{all, nil}, []map[string]int{
			{"read": 1, "publish": 1, "processed": 1, "acl": 1}, {}}, false},
		{"no hook provides them", [][]byte{nil}, []map[string]int{{}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Hooks{Log: logger}
			var hooks []*countHook
			for i, p := range tc.provs {
				ch := &countHook{id: string(rune('a' + i)), prov: p, calls: map[string]int{}}
				hooks = append(hooks, ch)
				if err := h.Add(ch, nil); err != nil {
					t.Fatal(err)
				}
			}
			cl, pk := new(Client), &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}}
			_ = h.OnPacketRead(cl, pk)
			_ = h.OnPublish(cl, pk)
			h.OnPacketProcessed(cl, pk, nil)
			if got := h.OnACLCheck(cl, "t", true); got != tc.wantACL {
				t.Errorf("OnACLCheck %v, want %v", got, tc.wantACL)
			}
			for i, ch := range hooks {
				if len(ch.calls) != len(tc.want[i]) {
					t.Errorf("hook %s: calls %v, want %v", ch.id, ch.calls, tc.want[i])
				}
				for k, n := range tc.want[i] {
					if ch.calls[k] != n {
						t.Errorf("hook %s: calls %v, want %v", ch.id, ch.calls, tc.want[i])
					}
				}
			}
		})
	}
	// With no hook at all, as before: nothing called, ACL false.
	h := &Hooks{Log: logger}
	if h.OnACLCheck(new(Client), "t", true) || h.OnPublish(new(Client), new(packets.Packet)) != nil {
		t.Error("a chain with no hooks")
	}
}

// headerHook is ProcessedHeaderOnly: its OnPublish changes the packet's
// retain flag, id and reason code (as no hook should, to see that mochi
// keeps them) and has mochi ignore it; it records what OnPacketProcessed
// sees (ptrHook).
type headerHook struct {
	ptrHook
}

func (h *headerHook) ProcessedHeaderOnly() {}
func (h *headerHook) OnPublish(_ *Client, pk *packets.Packet) error {
	pk.FixedHeader.Retain, pk.PacketID, pk.ReasonCode, pk.Ignore = true, 99, 5, true
	return nil
}

// TestMoteProcessedHeaderOnly: with only ProcessedHeaderOnly hooks
// providing OnPacketProcessed, it sees a PUBLISH's FixedHeader, PacketID
// and ReasonCode as read, though OnPublish changed them (change 92;
// TestMotePacketsByPointerSeenAsBefore: the whole packet for any other
// hook).
func TestMoteProcessedHeaderOnly(t *testing.T) {
	s := New(&Options{Logger: logger})
	h := &headerHook{ptrHook{id: "hdr"}}
	if err := s.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	if s.hooks.ProcessedPacketFull() {
		t.Fatal("a ProcessedHeaderOnly hook alone: the whole packet kept")
	}
	r, w := net.Pipe()
	defer r.Close()
	cl := s.NewClient(r, "testing", "hdr-client", false)
	cl.Properties.ProtocolVersion = 5
	cl.State.Inflight.ResetReceiveQuota(10)
	var raw bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("one"), ProtocolVersion: 5}
	if err := pk.PublishEncode(&raw); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = w.Write(raw.Bytes())
		_ = w.Close()
	}()
	if err := cl.Read(s.receivePacket); !errors.Is(err, io.EOF) {
		t.Fatalf("Read: %v, want EOF", err)
	}
	if len(h.processed) != 1 {
		t.Fatalf("%d processed, want 1", len(h.processed))
	}
	if p := h.processed[0]; p.FixedHeader.Retain || p.PacketID != 0 || p.ReasonCode != 0 || p.FixedHeader.Type != packets.Publish {
		t.Errorf("OnPacketProcessed saw retain %v id %d reason %d; want false, 0, 0 as read", p.FixedHeader.Retain, p.PacketID, p.ReasonCode)
	}
	h2 := &Hooks{Log: logger}
	if err := h2.Add(&ptrHook{id: "any"}, nil); err != nil {
		t.Fatal(err)
	}
	if !h2.ProcessedPacketFull() {
		t.Error("a hook not ProcessedHeaderOnly: the whole packet not kept")
	}
}

// checkedHook is a countHook that declares it checks publishes itself
// (PublishesChecked), as Mote's hook does.
type checkedHook struct {
	countHook
}

func (h *checkedHook) PublishesChecked() {}

// TestMotePublishesChecked: processPublish does not ask the OnACLCheck
// chain about a publish when a hook providing it is PublishesChecked
// (change 96: the chain would answer true); it asks as before when none
// is, or when the one that is does not provide OnACLCheck, and a refusal
// still drops the publish before OnPublish. Each row fails with the
// change's condition dropped (the first: "acl" 1), or made to ignore
// Provides (the third: the publish goes through).
func TestMotePublishesChecked(t *testing.T) {
	pubACL := []byte{OnPublish, OnACLCheck}
	for _, tc := range []struct {
		name    string
		hooks   func() []Hook
		checked bool
		want    []map[string]int
	}{
		{"checked hook providing OnACLCheck: not asked", func() []Hook {
			return []Hook{&checkedHook{countHook{id: "a", prov: pubACL, calls: map[string]int{}}}}
		}, true, []map[string]int{{"publish": 1}}},
		{"plain hook refusing: asked, dropped", func() []Hook {
			return []Hook{&countHook{id: "a", prov: pubACL, calls: map[string]int{}}}
		}, false, []map[string]int{{"acl": 1}}},
		{"checked hook without OnACLCheck, another refusing: asked, dropped", func() []Hook {
			return []Hook{
				&checkedHook{countHook{id: "a", prov: []byte{OnPublish}, calls: map[string]int{}}},
				&countHook{id: "b", prov: []byte{OnACLCheck}, calls: map[string]int{}},
			}
		}, false, []map[string]int{{}, {"acl": 1}}},
		{"plain hook allowing: asked, published", func() []Hook {
			return []Hook{&countHook{id: "a", prov: pubACL, calls: map[string]int{}, acl: true}}
		}, false, []map[string]int{{"acl": 1, "publish": 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(&Options{Logger: logger})
			hooks := tc.hooks()
			for _, h := range hooks {
				if err := s.AddHook(h, nil); err != nil {
					t.Fatal(err)
				}
			}
			if got := s.hooks.PublishesChecked(); got != tc.checked {
				t.Errorf("PublishesChecked %v, want %v", got, tc.checked)
			}
			cl, _, _ := newTestClient()
			cl.State.Inflight.ResetReceiveQuota(10)
			pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("x")}
			if err := s.processPublish(cl, pk); err != nil {
				t.Fatal(err)
			}
			for i, h := range hooks {
				calls := h.(interface{ counted() map[string]int }).counted()
				if len(calls) != len(tc.want[i]) {
					t.Errorf("hook %d: calls %v, want %v", i, calls, tc.want[i])
				}
				for k, n := range tc.want[i] {
					if calls[k] != n {
						t.Errorf("hook %d: calls %v, want %v", i, calls, tc.want[i])
					}
				}
			}
		})
	}
}

func (h *countHook) counted() map[string]int { return h.calls }
