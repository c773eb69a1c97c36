package mqtt

import (
	"bytes"
	"io"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/stretchr/testify/require"
)

// qosWatch records, at OnQosPublish, whether the acknowledgement was in the
// client's in-flight map, and counts OnQosComplete.
type qosWatch struct {
	HookBase
	inMap     []bool
	completes int
}

func (h *qosWatch) ID() string { return "qos-watch" }

func (h *qosWatch) Provides(b byte) bool {
	return bytes.Contains([]byte{OnQosPublish, OnQosComplete}, []byte{b})
}

func (h *qosWatch) OnQosPublish(cl *Client, pk packets.Packet, sent int64, resends int) {
	_, ok := cl.State.Inflight.Get(pk.PacketID)
	h.inMap = append(h.inMap, ok)
}

func (h *qosWatch) OnQosComplete(cl *Client, pk packets.Packet) { h.completes++ }

// TestQoS1AckNotInflight (mochi change 48): a client's QoS 1 publish is
// acknowledged without its PUBACK passing through the in-flight map (a
// ~900-byte entry allocated a publish, and two locks); the hooks are
// called as before, the PUBACK written, the receive quota given back, the
// map and Info.Inflight left as they were. A QoS 2 publish's PUBREC still
// waits in the map for its PUBREL. Upstream put the PUBACK in the map
// (inMap true) and took it out after the write.
func TestQoS1AckNotInflight(t *testing.T) {
	for _, c := range []struct {
		name      string
		pk        byte // a TPacketData case
		ackType   byte
		ack       byte
		inMap     bool
		completes int
		left      int // entries in the map after
	}{
		{"QoS 1", packets.TPublishQos1, packets.Puback, packets.TPuback, false, 1, 0},
		{"QoS 2", packets.TPublishQos2, packets.Pubrec, packets.TPubrec, true, 0, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newServer()
			h := new(qosWatch)
			require.NoError(t, s.AddHook(h, nil))
			_ = s.Serve()
			defer s.Close()
			cl, r, w := newTestClient()
			s.Clients.Add(cl)
			quota := cl.State.Inflight.receiveQuota
			go func() {
				err := s.processPacket(cl, pkp(*packets.TPacketData[packets.Publish].Get(c.pk).Packet))
				require.NoError(t, err)
				_ = w.Close()
			}()
			buf, err := io.ReadAll(r)
			require.NoError(t, err)
			require.Equal(t, packets.TPacketData[c.ackType].Get(c.ack).RawBytes, buf)
			require.Equal(t, []bool{c.inMap}, h.inMap)
			require.Equal(t, c.completes, h.completes)
			require.Equal(t, c.left, cl.State.Inflight.Len())
			require.Equal(t, int64(c.left), s.Info.Inflight)
			if c.completes > 0 {
				require.Equal(t, quota, cl.State.Inflight.receiveQuota)
			}
		})
	}
}
