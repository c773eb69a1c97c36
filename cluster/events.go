package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
)

// Event is a plain, non-retained publish crossing nodes (SPEC §12): its
// topic, payload and QoS, and the MQTT 5 properties as the broker encodes
// them (opaque here).
type Event struct {
	Topic   string
	Payload []byte
	QoS     byte
	Props   []byte
}

// ErrEvent is a message on the events subject that is not an Event.
var ErrEvent = errors.New("cluster: malformed event")

// DefaultEventSubject is the core NATS subject events cross on.
const DefaultEventSubject = "mote.pub"

// originHeader names the node an event came from: it does not deliver
// its own events twice.
const originHeader = "Mote-Origin"

// eventVersion is the first byte of every event message.
const eventVersion = 1

// Events carries plain publishes between nodes on core NATS: at most
// once, in order per publishing node, not stored (a node that is down
// misses them, as an MQTT subscriber that is not connected does).
type Events struct {
	nc      *nats.Conn
	subject string
	origin  string
	sub     *nats.Subscription
}

// NewEvents publishes and receives events on subject (default
// DefaultEventSubject) as node origin, which must be unique in the
// cluster.
func NewEvents(nc *nats.Conn, subject, origin string) *Events {
	if subject == "" {
		subject = DefaultEventSubject
	}
	return &Events{nc: nc, subject: subject, origin: origin}
}

// Publish sends e to the other nodes. It does not wait for them; it
// fails only if the connection is closed or e is too large.
func (ev *Events) Publish(e Event) error {
	m := nats.NewMsg(ev.subject)
	m.Header.Set(originHeader, ev.origin)
	m.Data = encodeEvent(e)
	if err := ev.nc.PublishMsg(m); err != nil {
		return fmt.Errorf("cluster: publish event %.200q: %w", e.Topic, err)
	}
	return nil
}

// Receive calls fn with every event another node publishes, on the
// connection's delivery goroutine, in order per node; fn must return
// quickly (hand the event to the broker's door). The event's Payload and
// Props are its own (not reused). A malformed message is
// handed to bad (if set) and dropped. Close stops it.
func (ev *Events) Receive(fn func(origin string, e Event), bad func(error)) error {
	if ev.sub != nil {
		return errors.New("cluster: events already received")
	}
	sub, err := ev.nc.Subscribe(ev.subject, func(m *nats.Msg) {
		origin := m.Header.Get(originHeader)
		if origin == ev.origin {
			return
		}
		e, err := decodeEvent(m.Data)
		if err != nil {
			if bad != nil {
				bad(fmt.Errorf("from node %.100q: %w", origin, err))
			}
			return
		}
		fn(origin, e)
	})
	if err != nil {
		return fmt.Errorf("cluster: receive events on %s: %w", ev.subject, err)
	}
	ev.sub = sub
	return nil
}

// Close stops receiving: fn is not called for messages that arrive
// after it (a call already running finishes; the connection's Close
// waits for it).
func (ev *Events) Close() error {
	if ev.sub == nil {
		return nil
	}
	return ev.sub.Unsubscribe()
}

// encodeEvent: version, QoS, then topic, payload and properties, each
// after its length (uvarint).
func encodeEvent(e Event) []byte {
	b := make([]byte, 0, 2+3*binary.MaxVarintLen32+len(e.Topic)+len(e.Payload)+len(e.Props))
	b = append(b, eventVersion, e.QoS)
	for _, f := range [][]byte{[]byte(e.Topic), e.Payload, e.Props} {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

func decodeEvent(b []byte) (Event, error) {
	if len(b) < 2 || b[0] != eventVersion || b[1] > 2 {
		return Event{}, fmt.Errorf("%w: head", ErrEvent)
	}
	e := Event{QoS: b[1]}
	b = b[2:]
	var fields [3][]byte
	for i := range fields {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return Event{}, fmt.Errorf("%w: field %d length", ErrEvent, i)
		}
		fields[i] = b[k : k+int(n) : k+int(n)]
		b = b[k+int(n):]
	}
	if len(b) > 0 || len(fields[0]) == 0 {
		return Event{}, fmt.Errorf("%w: %d bytes after the fields, topic of %d", ErrEvent, len(b), len(fields[0]))
	}
	e.Topic, e.Payload, e.Props = string(fields[0]), fields[1], fields[2]
	return e, nil
}
