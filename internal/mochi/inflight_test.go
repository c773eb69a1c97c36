// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2022 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/stretchr/testify/require"
)

func TestInflightSet(t *testing.T) {
	cl, _, _ := newTestClient()

	r := cl.State.Inflight.Set(packets.Packet{PacketID: 1})
	require.True(t, r)
	require.NotNil(t, cl.State.Inflight.internal[1])
	require.NotEqual(t, 0, cl.State.Inflight.internal[1].PacketID)

	r = cl.State.Inflight.Set(packets.Packet{PacketID: 1})
	require.False(t, r)
}

func TestInflightGet(t *testing.T) {
	cl, _, _ := newTestClient()
	cl.State.Inflight.Set(packets.Packet{PacketID: 2})

	msg, ok := cl.State.Inflight.Get(2)
	require.True(t, ok)
	require.NotEqual(t, 0, msg.PacketID)
}

func TestInflightGetAllAndImmediate(t *testing.T) {
	cl, _, _ := newTestClient()
	cl.State.Inflight.Set(packets.Packet{PacketID: 1, Created: 1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 2, Created: 2})
	cl.State.Inflight.Set(packets.Packet{PacketID: 3, Created: 3, Expiry: -1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 4, Created: 4, Expiry: -1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 5, Created: 5})

	require.Equal(t, []packets.Packet{
		{PacketID: 1, Created: 1},
		{PacketID: 2, Created: 2},
		{PacketID: 3, Created: 3, Expiry: -1},
		{PacketID: 4, Created: 4, Expiry: -1},
		{PacketID: 5, Created: 5},
	}, cl.State.Inflight.GetAll(false))

	require.Equal(t, []packets.Packet{
		{PacketID: 3, Created: 3, Expiry: -1},
		{PacketID: 4, Created: 4, Expiry: -1},
	}, cl.State.Inflight.GetAll(true))
}

func TestInflightLen(t *testing.T) {
	cl, _, _ := newTestClient()
	cl.State.Inflight.Set(packets.Packet{PacketID: 2})
	require.Equal(t, 1, cl.State.Inflight.Len())
}

func TestInflightClone(t *testing.T) {
	cl, _, _ := newTestClient()
	cl.State.Inflight.Set(packets.Packet{PacketID: 2})
	require.Equal(t, 1, cl.State.Inflight.Len())

	cloned := cl.State.Inflight.Clone()
	require.NotNil(t, cloned)
	require.NotSame(t, cloned, cl.State.Inflight)
}

func TestInflightDelete(t *testing.T) {
	cl, _, _ := newTestClient()

	cl.State.Inflight.Set(packets.Packet{PacketID: 3})
	require.NotNil(t, cl.State.Inflight.internal[3])

	r := cl.State.Inflight.Delete(3)
	require.True(t, r)
	require.Equal(t, uint16(0), cl.State.Inflight.internal[3].PacketID)

	_, ok := cl.State.Inflight.Get(3)
	require.False(t, ok)

	r = cl.State.Inflight.Delete(3)
	require.False(t, r)
}

func TestResetReceiveQuota(t *testing.T) {
	i := NewInflights()
	require.Equal(t, int32(0), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.receiveQuota))
	i.ResetReceiveQuota(6)
	require.Equal(t, int32(6), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(6), atomic.LoadInt32(&i.receiveQuota))
}

func TestReceiveQuota(t *testing.T) {
	i := NewInflights()
	i.receiveQuota = 4
	i.maximumReceiveQuota = 5
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(4), atomic.LoadInt32(&i.receiveQuota))

	// Return 1
	i.IncreaseReceiveQuota()
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(5), atomic.LoadInt32(&i.receiveQuota))

	// Try to go over max limit
	i.IncreaseReceiveQuota()
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(5), atomic.LoadInt32(&i.receiveQuota))

	// Reset to max 1
	i.ResetReceiveQuota(1)
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(1), atomic.LoadInt32(&i.receiveQuota))

	// Take 1
	i.DecreaseReceiveQuota()
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.receiveQuota))

	// Try to go below zero
	i.DecreaseReceiveQuota()
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.receiveQuota))
}

func TestResetSendQuota(t *testing.T) {
	i := NewInflights()
	require.Equal(t, int32(0), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.sendQuota))
	i.ResetSendQuota(6)
	require.Equal(t, int32(6), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(6), atomic.LoadInt32(&i.sendQuota))
}

func TestSendQuota(t *testing.T) {
	i := NewInflights()
	i.sendQuota = 4
	i.maximumSendQuota = 5
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(4), atomic.LoadInt32(&i.sendQuota))

	// Return 1
	i.IncreaseSendQuota()
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(5), atomic.LoadInt32(&i.sendQuota))

	// Try to go over max limit
	i.IncreaseSendQuota()
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(5), atomic.LoadInt32(&i.sendQuota))

	// Reset to max 1
	i.ResetSendQuota(1)
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(1), atomic.LoadInt32(&i.sendQuota))

	// Take 1
	i.DecreaseSendQuota()
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.sendQuota))

	// Try to go below zero
	i.DecreaseSendQuota()
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.sendQuota))
}

func TestNextImmediate(t *testing.T) {
	cl, _, _ := newTestClient()
	cl.State.Inflight.Set(packets.Packet{PacketID: 1, Created: 1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 2, Created: 2})
	cl.State.Inflight.Set(packets.Packet{PacketID: 3, Created: 3, Expiry: -1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 4, Created: 4, Expiry: -1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 5, Created: 5})

	pk, ok := cl.State.Inflight.NextImmediate()
	require.True(t, ok)
	require.Equal(t, packets.Packet{PacketID: 3, Created: 3, Expiry: -1}, pk)

	r := cl.State.Inflight.Delete(3)
	require.True(t, r)

	pk, ok = cl.State.Inflight.NextImmediate()
	require.True(t, ok)
	require.Equal(t, packets.Packet{PacketID: 4, Created: 4, Expiry: -1}, pk)

	r = cl.State.Inflight.Delete(4)
	require.True(t, r)

	_, ok = cl.State.Inflight.NextImmediate()
	require.False(t, ok)
}

// TestReadLockedOnceWithWriters: a reader of the in-flight map (mochi's
// read goroutine after an acknowledgement: NextImmediate) or of the
// client map (a listener's close: GetByListener) while another goroutine
// writes it (Mote's writer putting deliveries in flight; clients coming
// and going). Each took its read lock twice, the second time behind a
// writer that came in between and waited for the first: a deadlock
// (broker TestTakeoverWhilePublishersWait, about 1 run in 150: the
// client's reader, the writer and the event loop hung). Before change 60
// each case hangs within a few hundred rounds.
func TestReadLockedOnceWithWriters(t *testing.T) {
	inflight := NewInflights()
	inflight.Set(packets.Packet{PacketID: 1, Expiry: -1})
	clients := NewClients()
	clients.Add(&Client{ID: "c", State: ClientState{opened: true}, Net: ClientConnection{Listener: "tcp1"}})
	tests := []struct {
		name  string
		read  func()
		write func(n int)
	}{
		{"Inflight.NextImmediate", func() { inflight.NextImmediate() }, func(n int) {
			id := uint16(2 + n%100)
			inflight.Set(packets.Packet{PacketID: id})
			inflight.Delete(id)
		}},
		{"Clients.GetByListener", func() { clients.GetByListener("tcp1") }, func(n int) {
			clients.Add(&Client{ID: "w", Net: ClientConnection{Listener: "tcp1"}})
			clients.Delete("w")
		}},
	}
	const rounds = 20000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan struct{})
			go func() {
				defer close(done)
				for range rounds {
					tt.read()
				}
			}()
			wrote := make(chan struct{})
			go func() {
				defer close(wrote)
				for n := range rounds {
					tt.write(n)
				}
			}()
			for _, ch := range []chan struct{}{done, wrote} {
				select {
				case <-ch:
				case <-time.After(10 * time.Second):
					t.Fatal("a reader deadlocked with a writer of the map")
				}
			}
		})
	}
}

// TestInflightDropDeliveries (change 63): DeliveryBytes sums a cost over
// the deliveries in flight (PUBLISH and PUBREL entries) and counts them;
// DropDeliveries deletes them, keeps the PUBREC entries (the client's own
// QoS 2 publishes), and reports how many it deleted.
func TestInflightDropDeliveries(t *testing.T) {
	for _, tc := range []struct {
		name       string
		types      []byte // one entry each, packet ids 1, 2, …
		publishes  int
		bytes      int
		left       int
		leftNilMap bool
	}{
		{name: "none", leftNilMap: true},
		{name: "publishes only", types: []byte{packets.Publish, packets.Publish}, publishes: 2, bytes: 2 * 12, leftNilMap: true},
		{name: "with QoS 2 flows", types: []byte{packets.Publish, packets.Pubrel, packets.Pubrec, packets.Publish}, publishes: 3, bytes: 3 * 12, left: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i := NewInflights()
			for k, typ := range tc.types {
				i.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: uint16(k + 1), TopicName: "a/b", Payload: []byte("payload!!")})
			}
			bytes, n := i.DeliveryBytes(func(pk *packets.Packet) int { return len(pk.TopicName) + len(pk.Payload) })
			require.Equal(t, tc.bytes, bytes)
			require.Equal(t, tc.publishes, n)
			require.Equal(t, tc.publishes, i.DropDeliveries())
			require.Equal(t, tc.left, i.Len())
			for _, pk := range i.GetAll(false) {
				require.Equal(t, packets.Pubrec, pk.FixedHeader.Type)
			}
			if tc.leftNilMap {
				require.Nil(t, i.internal)
			}
			require.Equal(t, 0, i.DropDeliveries())
		})
	}
}

// TestInflightDropDeliveriesReleased (change 64): the packet ids of the
// PUBREL entries dropped are kept, in use (Used: NextPacketID skips them)
// and moved with the session (Clone), until TakeReleased hands them out
// once; a PUBLISH or PUBREC entry's id is not kept.
func TestInflightDropDeliveriesReleased(t *testing.T) {
	i := NewInflights()
	for k, typ := range []byte{packets.Publish, packets.Pubrel, packets.Pubrec, packets.Pubrel} {
		i.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: typ, Qos: 2}, PacketID: uint16(k + 1)})
	}
	require.Equal(t, 3, i.DropDeliveries())
	require.Equal(t, 2, i.Released())
	for id, used := range map[uint16]bool{1: false, 2: true, 3: true, 4: true, 5: false} {
		require.Equal(t, used, i.Used(id), "id %d", id)
	}
	c := i.Clone()
	require.ElementsMatch(t, []uint16{2, 4}, c.TakeReleased())
	require.Empty(t, c.TakeReleased())
	require.False(t, c.Used(2))
	require.Equal(t, 2, i.Released()) // the clone's are its own
}

// TestInflightTakeBack (change 90): moveOut keeps the ids it moved on the
// old Inflight. A delivery the old connection set in its emptied map
// after the move is not moved, whether it is still there (TakeBack
// deletes it) or clearTakenOverInflights (ClearInflights) deleted it
// first; the moved ones are, and the old client takes none of their ids
// again (Used). Before, "gone from the old map" was read as "moved": the
// cleared delivery was taken for one the new client sends.
func TestInflightTakeBack(t *testing.T) {
	for _, tc := range []struct {
		name    string
		clear   bool   // the old client's map cleared after the new Set
		id      uint16 // taken back
		deleted bool
		moved   bool
	}{
		{name: "set after the move, still there", id: 4, deleted: true},
		{name: "set after the move, cleared", clear: true, id: 4},
		{name: "moved", id: 2, moved: true},
		{name: "moved, the old map cleared", clear: true, id: 3, moved: true},
		{name: "never set", id: 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old, _, _ := newTestClient()
			for id := uint16(1); id <= 3; id++ {
				old.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id})
			}
			moved := old.State.Inflight.moveOut()
			require.Equal(t, 3, moved.Len())
			require.Nil(t, moved.ids, "the new client keeps no moved ids")
			id, err := old.NextPacketID()
			require.NoError(t, err)
			require.Equal(t, uint32(4), id, "the moved ids are the new client's")
			old.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: uint16(id)})
			if tc.clear {
				old.ClearInflights()
			}
			deleted, mv := old.State.Inflight.TakeBack(tc.id)
			require.Equal(t, tc.deleted, deleted, "deleted")
			require.Equal(t, tc.moved, mv, "moved")
			require.Equal(t, 3, moved.Len(), "the new client's map is its own")
		})
	}
}

// TestInflightMoveOutReleased: moveOut moves the ids to release with the
// messages (change 64) and keeps only the moved entries' ids (change 90);
// an Inflight with nothing moves nothing and keeps nothing.
func TestInflightMoveOutReleased(t *testing.T) {
	i := NewInflights()
	require.Nil(t, i.moveOut())
	require.Nil(t, i.ids)
	for k, typ := range []byte{packets.Pubrel, packets.Publish} {
		i.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: typ, Qos: 2}, PacketID: uint16(k + 1)})
	}
	require.Equal(t, 2, i.DropDeliveries())
	i.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec, Qos: 2}, PacketID: 7})
	c := i.moveOut()
	require.Equal(t, []uint16{1}, c.TakeReleased())
	require.Equal(t, 0, i.Released())
	require.True(t, i.Used(7))
	require.False(t, i.Used(1))
	_, moved := i.TakeBack(7)
	require.True(t, moved)
}
