// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// Inflight is a map of InflightMessage keyed on packet id.
type Inflight struct {
	sync.RWMutex
	internal            map[uint16]packets.Packet // internal contains the inflight packets
	receiveQuota        int32                     // remaining inbound qos quota for flow control
	sendQuota           int32                     // remaining outbound qos quota for flow control
	maximumReceiveQuota int32                     // maximum allowed receive quota
	maximumSendQuota    int32                     // maximum allowed send quota
	// mote: the packet ids i keeps beside its map, nil while there are
	// none: a pointer, not two slices, so that every client's Inflight is
	// 64 bytes, not 80 (changes 88, 90), and Used asks one nil pointer
	// for both.
	ids *inflightIDs
}

// mote: inflightIDs is what an Inflight keeps beside its map (changes 64,
// 88, 90), made only for a client that has some.
type inflightIDs struct {
	// released: ids of QoS 2 deliveries DropDeliveries dropped, to be
	// released (change 64).
	released []uint16
	// moved: the ids of the entries moveOut moved to the client that
	// took the session over, sorted (change 90): the old connection's
	// writer asks (TakeBack) whether a delivery it took in flight just as
	// its client stopped went with them. At most what the map held (the
	// client's Receive Maximum of deliveries, and its own QoS 2 publishes
	// waiting for PUBREL), 2 bytes each, made at the takeover only; the
	// old client is dropped with them.
	moved []uint16
}

// mote: rel is the ids to be released (change 88). Under i's lock.
func (i *Inflight) rel() []uint16 {
	if i.ids == nil {
		return nil
	}
	return i.ids.released
}

// mote: setReleased sets the ids to be released (change 90: beside the
// moved ids, in ids). Under i's lock.
func (i *Inflight) setReleased(r []uint16) {
	switch {
	case i.ids != nil:
		i.ids.released = r
		if r == nil && i.ids.moved == nil {
			i.ids = nil
		}
	case r != nil:
		i.ids = &inflightIDs{released: r}
	}
}

// NewInflights returns a new instance of an Inflight packets map.
func NewInflights() *Inflight {
	return &Inflight{} // mote: its map made by the first Set (change 62)
}

// Set adds or updates an inflight packet by packet id.
func (i *Inflight) Set(m packets.Packet) bool {
	i.Lock()
	defer i.Unlock()

	_, ok := i.internal[m.PacketID]
	if i.internal == nil {
		i.internal = map[uint16]packets.Packet{}
	}
	i.internal[m.PacketID] = m
	return !ok
}

// Get returns an inflight packet by packet id.
func (i *Inflight) Get(id uint16) (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()

	if m, ok := i.internal[id]; ok {
		return m, true
	}

	return packets.Packet{}, false
}

// Len returns the size of the inflight messages map.
func (i *Inflight) Len() int {
	i.RLock()
	defer i.RUnlock()
	return len(i.internal)
}

// Clone returns a new instance of Inflight with the same message data.
// This is used when transferring inflights from a taken-over session.
func (i *Inflight) Clone() *Inflight {
	c := NewInflights()
	i.RLock()
	defer i.RUnlock()
	if len(i.internal) > 0 {
		c.internal = make(map[uint16]packets.Packet, len(i.internal))
	}
	if r := i.rel(); len(r) > 0 { // mote: the session's, as its messages (change 64)
		c.setReleased(slices.Clone(r))
	}
	for k, v := range i.internal {
		c.internal[k] = v
	}
	return c
}

// mote: moveOut returns i's messages (and ids to release, change 64) in
// a new Inflight, and leaves i empty, in one step under i's lock (change
// 74): a takeover moves the old client's messages, and what the old
// connection's reader or writer sets or deletes afterwards is in (or
// missing from) the old client's map alone. Upstream cloned the map and
// cleared it later, and what the old connection did between was cleared
// uncopied, or undone for a message the new client held. Nil if i holds
// nothing to move (no allocation for a session resumed empty).
//
// mote: i keeps the ids of the entries it moved (change 90), for TakeBack:
// "gone from i's map" is not "moved", as clearTakenOverInflights deletes
// what the old connection set in i's map after the move. Used counts them
// in use, so the old connection takes none of them again.
func (i *Inflight) moveOut() *Inflight {
	i.Lock()
	defer i.Unlock()
	if len(i.internal) == 0 && len(i.rel()) == 0 {
		return nil
	}
	c := NewInflights()
	c.internal, i.internal = i.internal, nil
	c.setReleased(i.rel())
	var moved []uint16
	if len(c.internal) > 0 {
		moved = make([]uint16, 0, len(c.internal))
		for id := range c.internal {
			moved = append(moved, id)
		}
		slices.Sort(moved)
	}
	i.ids = nil
	if moved != nil {
		i.ids = &inflightIDs{moved: moved}
	}
	return c
}

// mote: TakeBack deletes the entry of packet id, which the caller set,
// from i's map, in one step under i's lock (change 90): deleted, it was
// there (not moved); not, moved reports whether a takeover's moveOut took
// it to the client that took the session over (that client has it, and
// sends it again), rather than somebody deleting it after (nobody has
// it).
func (i *Inflight) TakeBack(id uint16) (deleted, moved bool) {
	i.Lock()
	defer i.Unlock()
	if _, ok := i.internal[id]; ok {
		delete(i.internal, id)
		return true, false
	}
	if i.ids == nil {
		return false, false
	}
	_, moved = slices.BinarySearch(i.ids.moved, id)
	return false, moved
}

// GetAll returns all the inflight messages.
func (i *Inflight) GetAll(immediate bool) []packets.Packet {
	i.RLock()
	defer i.RUnlock()

	m := []packets.Packet{}
	for _, v := range i.internal {
		if !immediate || (immediate && v.Expiry < 0) {
			m = append(m, v)
		}
	}

	sort.Slice(m, func(i, j int) bool {
		return uint16(m[i].Created) < uint16(m[j].Created)
	})

	return m
}

// mote: expired returns, in GetAll's order, the messages
// ClearExpiredInflights deletes (change 67), copying no other.
func (i *Inflight) expired(now, maximumExpiry int64) []packets.Packet {
	i.RLock()
	defer i.RUnlock()

	var m []packets.Packet
	for _, tk := range i.internal {
		expired := tk.ProtocolVersion == 5 && tk.Expiry > 0 && tk.Expiry < now // [MQTT-3.3.2-5]

		// If the maximum message expiry interval is set (greater than 0), and the message
		// retention period exceeds the maximum expiry, the message will be forcibly removed.
		enforced := maximumExpiry > 0 && now-tk.Created > maximumExpiry

		if expired || enforced {
			m = append(m, tk)
		}
	}

	if len(m) > 1 {
		sort.Slice(m, func(i, j int) bool {
			return uint16(m[i].Created) < uint16(m[j].Created)
		})
	}

	return m
}

// NextImmediate returns the next inflight packet which is indicated to be sent immediately.
// This typically occurs when the quota has been exhausted, and we need to wait until new quota
// is free to continue sending. It takes the read lock once, in GetAll
// (Mote change 60): a read lock taken again while held blocks behind a
// writer that came in between, which waits for the first: a deadlock.
func (i *Inflight) NextImmediate() (packets.Packet, bool) {
	m := i.GetAll(true)
	if len(m) > 0 {
		return m[0], true
	}

	return packets.Packet{}, false
}

// mote: delivery reports whether pk is the server's side of a delivery
// in flight: a PUBLISH not yet acknowledged, or the PUBREL of one the
// client received (PUBREC), not yet completed (change 63). A PUBREC
// entry is the client's own QoS 2 publish.
func delivery(pk *packets.Packet) bool {
	return pk.FixedHeader.Type == packets.Publish || pk.FixedHeader.Type == packets.Pubrel
}

// mote: DropDeliveries deletes every delivery in flight (PUBLISH and
// PUBREL entries; PUBREC entries stay) and returns how many it deleted,
// making the map anew for what is left (change 63): a Go map keeps the
// room of the entries deleted from it, about 24 KiB for the 1,024 a
// session away could hold, and the broker drops what a session away holds
// to keep within its bound. The packet ids of its PUBREL entries (QoS 2
// deliveries the client received and answered with PUBREC) are kept, 2
// bytes each, until TakeReleased: the client holds each id until it gets
// its PUBREL, and takes a PUBLISH with it for a duplicate
// [MQTT-4.3.3-10], so no new delivery takes one (Used) and the session's
// client gets a PUBREL for each when it resumes (change 64). A PUBREL is
// made only while the client is connected, so a session away keeps at
// most as many ids as it had entries in flight.
func (i *Inflight) DropDeliveries() int {
	i.Lock()
	defer i.Unlock()
	n := 0
	var kept map[uint16]packets.Packet
	for id, pk := range i.internal {
		if delivery(&pk) {
			n++
			if pk.FixedHeader.Type == packets.Pubrel {
				i.setReleased(append(i.rel(), id))
			}
			continue
		}
		if kept == nil {
			kept = map[uint16]packets.Packet{}
		}
		kept[id] = pk
	}
	if n > 0 {
		i.internal = kept
	}
	return n
}

// mote: TakeReleased returns the packet ids of the QoS 2 deliveries
// DropDeliveries dropped, in the order dropped, and forgets them (change
// 64): the session's client, back, is to get a PUBREL for each.
func (i *Inflight) TakeReleased() []uint16 {
	i.Lock()
	defer i.Unlock()
	r := i.rel()
	i.setReleased(nil)
	return r
}

// mote: Released is how many packet ids DropDeliveries kept to be
// released (change 64).
func (i *Inflight) Released() int {
	i.RLock()
	defer i.RUnlock()
	return len(i.rel())
}

// mote: Used reports whether packet id is in use: in flight, or a QoS 2
// delivery's dropped and not yet released (change 64), or, on a client
// taken over, one of the entries moveOut moved to the client that took
// the session (change 90: a delivery the old connection took in flight
// after the move never has a moved one's id, so TakeBack tells them
// apart). NextPacketID skips those.
func (i *Inflight) Used(id uint16) bool {
	i.RLock()
	defer i.RUnlock()
	if _, ok := i.internal[id]; ok {
		return true
	}
	if i.ids == nil {
		return false
	}
	if _, moved := slices.BinarySearch(i.ids.moved, id); moved { // mote: the new client's (change 90)
		return true
	}
	return slices.Contains(i.ids.released, id)
}

// mote: DeliveryBytes sums cost over the deliveries in flight (PUBLISH
// and PUBREL entries), and counts them, without copying them out (change
// 63): GetAll copies and sorts 800-byte packets, 800 KiB for 1,024.
func (i *Inflight) DeliveryBytes(cost func(pk *packets.Packet) int) (bytes, n int) {
	i.RLock()
	defer i.RUnlock()
	for _, pk := range i.internal {
		if delivery(&pk) {
			bytes += cost(&pk)
			n++
		}
	}
	return bytes, n
}

// Delete removes an in-flight message from the map. Returns true if the message existed.
func (i *Inflight) Delete(id uint16) bool {
	i.Lock()
	defer i.Unlock()

	_, ok := i.internal[id]
	delete(i.internal, id)

	return ok
}

// TakeRecieveQuota reduces the receive quota by 1.
func (i *Inflight) DecreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) > 0 {
		atomic.AddInt32(&i.receiveQuota, -1)
	}
}

// TakeRecieveQuota increases the receive quota by 1.
func (i *Inflight) IncreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) < atomic.LoadInt32(&i.maximumReceiveQuota) {
		atomic.AddInt32(&i.receiveQuota, 1)
	}
}

// ResetReceiveQuota resets the receive quota to the maximum allowed value.
func (i *Inflight) ResetReceiveQuota(n int32) {
	atomic.StoreInt32(&i.receiveQuota, n)
	atomic.StoreInt32(&i.maximumReceiveQuota, n)
}

// DecreaseSendQuota reduces the send quota by 1.
func (i *Inflight) DecreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) > 0 {
		atomic.AddInt32(&i.sendQuota, -1)
	}
}

// IncreaseSendQuota increases the send quota by 1.
func (i *Inflight) IncreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) < atomic.LoadInt32(&i.maximumSendQuota) {
		atomic.AddInt32(&i.sendQuota, 1)
	}
}

// ResetSendQuota resets the send quota to the maximum allowed value.
func (i *Inflight) ResetSendQuota(n int32) {
	atomic.StoreInt32(&i.sendQuota, n)
	atomic.StoreInt32(&i.maximumSendQuota, n)
}
