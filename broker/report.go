package broker

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// ErrorTopic is where a client's refused Mote requests are reported
// (SPEC §5): ErrorTopic + client id.
const ErrorTopic = "$SYS/mote/errors/"

// Report is the JSON published on ErrorTopic+<client-id> for every refused
// tree publish, $set or tree subscription.
type Report struct {
	Time   time.Time `json:"time"`
	Client string    `json:"client"`
	Op     string    `json:"op"`    // publish, subscribe or will
	Topic  string    `json:"topic"` // as the client sent it
	Code   byte      `json:"code"`  // MQTT 5 reason code
	Reason string    `json:"reason"`
	Error  string    `json:"error"`
	Path   string    `json:"path,omitempty"` // RFC 6901 pointer into the payload
}

// reasonCode maps a refusal to its MQTT 5 reason code (SPEC §5).
func reasonCode(op string, err error) packets.Code {
	switch {
	case errors.Is(err, tree.ErrDenied):
		return packets.ErrNotAuthorized // 0x87
	case errors.Is(err, errShutdown), errors.Is(err, retain.ErrClosed):
		return packets.ErrServerShuttingDown // 0x8B
	case op == "subscribe" && errors.Is(err, errTooLarge):
		return packets.ErrPacketTooLarge // 0x95
	case op == "subscribe":
		return packets.ErrTopicFilterInvalid // 0x8F
	case errors.Is(err, wire.ErrReserved), errors.Is(err, wire.ErrPrefix), errors.Is(err, wire.ErrFilter), errors.Is(err, errAlias):
		return packets.ErrTopicNameInvalid // 0x90
	}
	return packets.ErrPayloadFormatInvalid // 0x99
}

// refuse reports a refused request: one log line and a report on the
// client's error topic. c may be nil (the client is gone).
func (b *Broker) refuse(c *conn, op, topic string, err error) packets.Code {
	code := reasonCode(op, err)
	b.stats.Refused.Add(1)
	r := Report{Time: time.Now().UTC(), Op: op, Topic: topic, Code: code.Code, Reason: code.Reason, Error: err.Error()}
	var pe *wire.PathError
	if errors.As(err, &pe) {
		r.Path = pe.Path
	}
	ev := b.log.Warn().Str("op", op).Str("topic", topic).Uint8("code", code.Code).Err(err)
	if c != nil {
		r.Client = c.cl.ID
		ev = ev.Str("client", c.cl.ID).Str("remote", c.cl.Net.Remote)
	}
	ev.Msg("refused")
	if r.Client != "" {
		payload, _ := json.Marshal(r)
		b.inject(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: ErrorTopic + r.Client, Payload: payload})
	}
	return code
}

// refusePublish refuses a Mote publish whole. An MQTT 5 client sending at
// QoS 1 or 2 gets the reason code in its PUBACK or PUBREC, written here;
// everyone else gets an ordinary ack (QoS 1/2) and the report. Nothing is
// retained or delivered either way.
func (b *Broker) refusePublish(c *conn, pk packets.Packet, topic string, err error) (packets.Packet, error) {
	code := b.refuse(c, "publish", topic, err)
	if !c.v5 || pk.FixedHeader.Qos == 0 {
		return pk, packets.CodeSuccessIgnore
	}
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Puback},
		PacketID:    pk.PacketID,
		ReasonCode:  code.Code,
		Properties:  packets.Properties{ReasonString: err.Error()},
	}
	if pk.FixedHeader.Qos == 2 {
		ack.FixedHeader.Type = packets.Pubrec // a PUBREC >= 0x80 ends the QoS 2 flow
	}
	if werr := c.cl.WritePacket(ack); werr != nil {
		return pk, werr
	}
	return pk, packets.ErrRejectPacket
}
