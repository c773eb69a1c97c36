package mqtt

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/stretchr/testify/require"
)

// rtWillHook counts the wills mochi hands its hooks (OnWill).
type rtWillHook struct {
	HookBase
	wills atomic.Int32
}

func (*rtWillHook) ID() string           { return "rt-will" }
func (*rtWillHook) Provides(b byte) bool { return b == OnWill }
func (h *rtWillHook) OnWill(_ *Client, w Will) (Will, error) {
	h.wills.Add(1)
	return w, nil
}

// TestRTPropsNilPaths: the red team of changes 82 and 83. A client
// parsed from a real CONNECT with and without properties and a will
// (MQTT 3.1.1, MQTT 5 without properties, with a Session Expiry
// Interval, a delayed will) goes through every path that reads them:
// validateConnect, a DISCONNECT raising an interval of 0 (a Protocol
// Error), sendLWT (a hook gets the will once, none when there is none),
// a delayed will sent by the event loop (sendDelayedLWT: the will cleared,
// not sent again), endSession after a DISCONNECT (the will cleared), a
// DISCONNECT's Session Expiry Interval 0 and clearExpiredClients (an MQTT
// 5 session expires at once, a 3.1.1 one is kept). Nothing panics on a
// nil, a nil is read as none, and no path makes properties a client did
// not send.
func TestRTPropsNilPaths(t *testing.T) {
	expiry := packets.Properties{SessionExpiryInterval: 30, SessionExpiryIntervalFlag: true}
	for _, c := range []struct {
		name  string
		v     byte
		props packets.Properties
		will  bool
		delay uint32 // the will's Will Delay Interval
		kept  bool   // the client keeps CONNECT properties
	}{
		{name: "3.1.1", v: 4},
		{name: "3.1.1 will", v: 4, will: true},
		{name: "5 none", v: 5},
		{name: "5 none, will", v: 5, will: true},
		{name: "5 none, will delayed", v: 5, will: true, delay: 10},
		{name: "5 expiry", v: 5, props: expiry, kept: true},
		{name: "5 expiry, will", v: 5, props: expiry, will: true, kept: true},
		{name: "5 expiry, will delayed", v: 5, props: expiry, will: true, delay: 10, kept: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newServer()
			h := new(rtWillHook)
			require.NoError(t, s.AddHook(h, nil))
			pk := packets.Packet{
				FixedHeader:     packets.FixedHeader{Type: packets.Connect},
				ProtocolVersion: c.v,
				Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "rt", Keepalive: 30},
				Properties:      c.props,
			}
			if c.will {
				pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "rt/will", []byte("gone")
				pk.Connect.WillProperties.WillDelayInterval = c.delay
			}
			cl := s.NewClient(nil, "tcp", "", false)
			cl.ParseConnect("tcp", pk)
			require.Equal(t, c.kept, cl.Properties.Props != nil, "properties kept")
			require.Equal(t, c.will, cl.Properties.Will != nil, "will kept")
			require.Equal(t, packets.CodeSuccess, s.validateConnect(cl, pk))

			if c.v == 5 { // raising an interval of 0 is a Protocol Error [MQTT-3.14.2-2]
				err := s.processDisconnect(cl, packets.Packet{Properties: packets.Properties{SessionExpiryInterval: 5, SessionExpiryIntervalFlag: true}})
				require.Equal(t, c.props.SessionExpiryInterval == 0, err == packets.ErrProtocolViolationZeroNonZeroExpiry, "%v", err)
			}

			// A will goes to the hooks once; none, none.
			s.sendLWT(cl)
			want := int32(0)
			if c.will {
				want = 1
			}
			require.Equal(t, want, h.wills.Load(), "OnWill calls")
			effective := c.delay // ParseConnect caps it by a Session Expiry Interval sent
			if c.props.SessionExpiryIntervalFlag {
				effective = min(effective, c.props.SessionExpiryInterval)
			}
			if c.will && effective > 0 {
				_, ok := s.loop.willDelayed.Get("rt")
				require.True(t, ok, "a delayed will waits")
				s.sendDelayedLWT(time.Now().Unix() + int64(effective) + 1) // the event loop, once it is due
				require.Nil(t, cl.Properties.Will, "a delayed will sent is cleared")
			}
			s.sendLWT(cl) // a second end: the will was sent
			require.Equal(t, want, h.wills.Load(), "OnWill calls after the will went")

			// A DISCONNECT: the will is cleared, the interval set to 0
			// without making properties; an MQTT 5 session then expires.
			require.NoError(t, s.processDisconnect(cl, packets.Packet{Properties: packets.Properties{SessionExpiryIntervalFlag: true}}))
			s.endSession(cl, "tcp", nil)
			require.Nil(t, cl.Properties.Will, "a DISCONNECT clears the will")
			require.Equal(t, c.kept, cl.Properties.Props != nil, "a DISCONNECT makes no properties")
			v, set := cl.sessionExpiry()
			require.Equal(t, uint32(0), v)
			require.True(t, set, "the DISCONNECT's interval is kept")
			s.Clients.Add(cl) // as if filed still (endSession removed a session ending with its connection)
			s.clearExpiredClients(time.Now().Unix() + 1)
			_, filed := s.Clients.Get("rt")
			require.Equal(t, c.v != 5, filed, "an MQTT 5 session with an interval of 0 expires; 3.1.1's waits the maximum")
		})
	}
}
