package mqtt

import (
	"testing"
	"unsafe"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/stretchr/testify/require"
)

// TestConnectPropsKeptWhenSent: a CONNECT without properties leaves the
// client's Props nil, read as the zero properties; one with some keeps
// them, Receive Maximum capped as before; a DISCONNECT's Session Expiry
// Interval 0 on a client without properties is flagged as it was on the
// zero properties (mote change 82).
func TestConnectPropsKeptWhenSent(t *testing.T) {
	for _, c := range []struct {
		name      string
		version   byte
		id        string
		props     packets.Properties
		kept      bool
		recvMax   uint16
		aliasMax  uint16
		assigned  bool
		maxPacket uint32
	}{
		{name: "mqtt 3.1.1", version: 4, id: "a"},
		{name: "mqtt 5, none", version: 5, id: "a"},
		{name: "mqtt 3.1.1, no id", version: 4, kept: true, assigned: true},
		{name: "mqtt 5, some", version: 5, id: "a", kept: true,
			props:   packets.Properties{ReceiveMaximum: 50, TopicAliasMaximum: 3, MaximumPacketSize: 99, SessionExpiryInterval: 7, SessionExpiryIntervalFlag: true},
			recvMax: 5, aliasMax: 3, maxPacket: 99}, // newTestClient's MaximumInflight is 5
		{name: "mqtt 5, user only", version: 5, id: "a", kept: true,
			props: packets.Properties{User: []packets.UserProperty{{Key: "k", Val: "v"}}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl, _, _ := newTestClient()
			cl.ParseConnect("tcp1", packets.Packet{ProtocolVersion: c.version, Connect: packets.ConnectParams{ClientIdentifier: c.id}, Properties: c.props})
			require.Equal(t, c.kept, cl.Properties.Props != nil)
			require.Equal(t, c.recvMax, cl.Properties.ReceiveMaximum())
			require.Equal(t, c.aliasMax, cl.Properties.TopicAliasMaximum())
			require.Equal(t, c.maxPacket, cl.Properties.MaximumPacketSize())
			require.Equal(t, c.props.SessionExpiryInterval, cl.Properties.SessionExpiryInterval())
			require.Equal(t, c.aliasMax > 0, cl.State.TopicAliases.Outbound != nil)
			require.Equal(t, int32(c.recvMax), cl.State.Inflight.maximumSendQuota)
			if c.assigned {
				require.Equal(t, cl.ID, cl.Properties.Props.AssignedClientID)
			}
			if c.props.User != nil {
				require.Equal(t, c.props.User, cl.Properties.Props.User)
			}

			v, set := cl.sessionExpiry()
			require.Equal(t, c.props.SessionExpiryInterval, v)
			require.Equal(t, c.props.SessionExpiryIntervalFlag, set)
			cl.setSessionExpiry(0) // a DISCONNECT's [MQTT-3.14.2-2]
			v, set = cl.sessionExpiry()
			require.Equal(t, uint32(0), v)
			require.True(t, set)
			require.Equal(t, c.kept, cl.Properties.Props != nil, "a DISCONNECT makes no properties")
		})
	}
}

// TestClientSizeClass: without its CONNECT properties and its will
// inline, Client fits the 320-byte size class, under 512 bytes so without
// a malloc header (640 with both, 384 with the will; mote changes 82, 83).
func TestClientSizeClass(t *testing.T) {
	for _, c := range []struct {
		name      string
		size, max uintptr
	}{
		{"Client", unsafe.Sizeof(Client{}), 320},
		{"Inflight", unsafe.Sizeof(Inflight{}), 64},           // 72, the 80 class, with its released ids a slice (change 88); the moved ids share their pointer (change 90)
		{"Subscriptions", unsafe.Sizeof(Subscriptions{}), 48}, // 32 before its only subscription was held without a map (change 89)
	} {
		if c.size > c.max {
			t.Errorf("%s is %d bytes, want at most %d", c.name, c.size, c.max)
		}
	}
}
