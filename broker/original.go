package broker

import (
	"fmt"
	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"strings"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// The original Mote broker's dialect (SPEC §7), spoken on one listener
// (Options.Original) and nowhere else: /a/b is a legal plain MQTT topic.
// Its clients (cyates559/mote-broker's own, the mote-native app) speak
// MQTT 3.1.1 packets with these meanings, which are rewritten here into
// Mote's native forms, so everything after is the ordinary path: one
// door, one ACL check, the same limits.
//
//   - CONNECT with protocol name "mote" and level 0 (what mote-native
//     sends): read as MQTT 3.1.1 (netConn.rewriteConnect). MQTT 5 is
//     refused (CONNACK 0x84): the dialect has no properties to carry.
//   - SUBSCRIBE "/F": $sync/F; SUBSCRIBE "F": $tree/F (the original sent
//     every subscription its deltas as trees; the leading "/" only added
//     the snapshot). Both are filed in property form, so their messages
//     go out on F itself, as the original sent them, and the newest of
//     the two replaces the other (the original kept one per filter).
//     UNSUBSCRIBE "F" ends either. Leaves are strings (wire.CodecOriginal).
//     A filter under $SYS (which the original did not have) stays plain,
//     so a dialect client can read its error reports.
//   - Deltas go out at the subscription's granted QoS: the original never
//     downgraded, and mote-native drops a QoS 0 PUBLISH (it has no packet
//     id, which the app expects on every PUBLISH).
//   - A retained PUBLISH to "T/" is a tree publish to $tree/T: string
//     leaves become rows as if each had been published plainly (typed by
//     SPEC §1); an empty string deletes. The top-level key "/" is the
//     original's flag, never a row: "+" (with T ending in +) deletes the
//     rows under T the tree does not name, as .replace does.
//   - A retained PUBLISH to a topic with wildcards is $set to that filter.
//     A non-retained one is refused (the original failed on it).
//
// Principal.original marks a client of that listener (mqttPrincipal):
// its publishes, wills included, are read in the dialect (prepareOriginal).

// originalListener and originalWSListener are the original dialect's
// listener ids (TCP, and WebSocket at originalWSPath).
const (
	originalListener   = "original"
	originalWSListener = "original-ws"
	originalWSPath     = "/mote/"
)

// isOriginal says whether listener id speaks the original dialect.
func isOriginal(id string) bool { return id == originalListener || id == originalWSListener }

// originalKeepalive is the keep-alive, in seconds, of a client of the
// dialect: mote-native names protocol "mote" and sends its keep-alive in
// milliseconds (20000, and it pings every 20.5 s), which as seconds would
// leave a dead connection open for 8 hours and trip max_keepalive; a
// CONNECT naming MQTT keeps MQTT's seconds.
func originalKeepalive(cl *mqtt.Client) uint16 {
	if nc, ok := cl.Net.Conn.(*netConn); ok && nc.moteName {
		return uint16((int(cl.State.Keepalive) + 999) / 1000)
	}
	return cl.State.Keepalive
}

// originalOption marks the internal filter of a dialect subscription
// ("$sync.prop.original/F", filters.go): no client can send it.
const originalOption = "original"

// moteConnect and mqttConnect are the first 7 bytes of a CONNECT body:
// protocol name (with its length) and level, as mote-native sends them
// and as MQTT 3.1.1 has them.
var (
	moteConnect = [7]byte{0, 4, 'm', 'o', 't', 'e', 0}
	mqttConnect = [7]byte{0, 4, 'M', 'Q', 'T', 'T', 4}
)

// rewriteConnect rewrites byte at (offset in the CONNECT body, < 7) of a
// connection to the original listener as it goes by: a CONNECT naming
// protocol "mote" level 0 becomes MQTT 3.1.1. Bytes are rewritten one by
// one, as they arrive; a name that stops matching "mote" part way is
// invalid either way, and mochi refuses it (CONNACK 0x01).
func (c *netConn) rewriteConnect(at int, b *byte) {
	if at == 0 {
		c.moteName = true
	}
	if !c.moteName || *b != moteConnect[at] {
		c.moteName = false
		return
	}
	*b = mqttConnect[at]
}

// originalFilter reads a SUBSCRIBE filter of a dialect client: "/F" asks
// for a snapshot and deltas ($sync/F), "F" for deltas ($tree/F).
func originalFilter(f string) (wire.Subscription, error) {
	if isSys(f) {
		// The original had no $SYS: these stay plain MQTT subscriptions,
		// so a dialect client can read its error reports (SPEC §5).
		return parseFilter(f, wire.Subscription{})
	}
	mode := wire.Tree
	if rest, ok := strings.CutPrefix(f, "/"); ok {
		mode, f = wire.Sync, rest
	}
	return parseFilter(f, wire.Subscription{Mode: mode, Codec: wire.CodecOriginal})
}

// deltaQoS is the QoS of a delta for subscription s whose folded rows came
// at rowQoS at most: capped by the granted QoS (SPEC §2), or the granted
// QoS itself for a dialect subscription (see above).
func deltaQoS(s *tree.Sub, rowQoS byte) byte {
	if s.Codec == wire.CodecOriginal {
		return s.QoS
	}
	return min(rowQoS, s.QoS)
}

// errOriginalWildcard refuses a non-retained publish to a filter.
var errOriginalWildcard = fmt.Errorf("%w: a publish to a topic with wildcards must be retained (it sets every existing row matching it)", wire.ErrFilter)

// prepareOriginal reads a publish of a dialect client (p.original) whose
// topic makes it a tree publish or a $set, with every check prepare makes
// (checkOp); handled is false for any other publish, which is plain.
func (b *Broker) prepareOriginal(p Principal, m *Message) (r prepared, handled bool, err error) {
	topic := m.Topic
	switch {
	case m.Retain && strings.HasSuffix(topic, "/"):
		r, err = b.originalTree(p, m, strings.TrimSuffix(topic, "/"))
		return r, true, err
	case wire.HasWildcard(topic) && !m.Retain:
		return prepared{}, true, errOriginalWildcard
	case wire.HasWildcard(topic):
		if err := b.checkOriginalTopic(topic); err != nil {
			return prepared{}, true, err
		}
		op, err := b.parser.Op(wire.Publish{Op: wire.PubSet, Topic: topic}, m.Payload, true, m.QoS)
		if err != nil {
			return prepared{}, true, err
		}
		r, err = b.checkOp(p, op)
		return r, true, err
	}
	return prepared{}, false, nil
}

// checkOriginalTopic checks the filter of a dialect tree publish or $set.
func (b *Broker) checkOriginalTopic(t string) error {
	if err := wire.ValidateFilter(t); err != nil {
		return err
	}
	if err := b.opts.Limits.CheckTopic(t); err != nil {
		return err
	}
	if reserved(t) {
		return wire.ErrReservedf("%.200q: a tree publish or $set cannot reach the broker's topics", t)
	}
	return nil
}

// originalTree is a dialect tree publish to T: the JSON tree decoded
// within the limits, its top-level "/" flag taken out, exploded as
// $tree/T (or $tree.replace/T), each string leaf typed as a plain payload.
func (b *Broker) originalTree(p Principal, m *Message, t string) (prepared, error) {
	if err := b.checkOriginalTopic(t); err != nil {
		return prepared{}, err
	}
	root, err := b.parser.Decode(wire.CodecJSON, m.Payload)
	if err != nil {
		return prepared{}, err
	}
	replace := false
	if root.Obj {
		kids := root.Kids[:0]
		for _, k := range root.Kids {
			if k.Key == "/" {
				// The original's flag: "+" replaces, when T ends in +
				// (protocols/flatten_message.py); anything else is dropped.
				replace = k.Value.Kind == wire.String && k.Value.Data == "+" && strings.HasSuffix("/"+t, "/+")
				continue
			}
			kids = append(kids, k)
		}
		root.Kids = kids
		root.Value = wire.Value{} // its JSON text held the flag
	}
	op, err := b.parser.TreeOp(wire.Publish{Op: wire.PubTree, Topic: t, Replace: replace}, &root, true, m.QoS)
	if err != nil {
		return prepared{}, err
	}
	for i := range op.Rows {
		v := &op.Rows[i].Value
		switch {
		case v.Kind != wire.String:
		case v.Data == "":
			*v = wire.Value{} // a retained empty payload deletes (SPEC §1)
		default:
			*v = b.parser.TypePlain([]byte(v.Data))
		}
	}
	return b.checkOp(p, op)
}
