package broker

import (
	"unsafe"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// A small plain PUBLISH read from one of the broker's listeners is one
// allocation, not two: mochi reads its body into memory the netConn gives
// (PublishBody, mochi change 56), made together with the message the door
// makes of it (prepare); the topic and payload mochi decodes point into
// the body, so the message holds its own bytes. The body and the message
// live and die together: a payload kept longer than its message (a
// retained row, a history entry) keeps the message's bytes too, which is
// why a retained PUBLISH is not given one. Only the connection's read
// goroutine touches netConn.pre and preBody: mochi asks PublishBody there,
// and calls OnPublish for a client's PUBLISH only from processPacket on
// that goroutine (the broker injects no packets for MQTT clients). A
// PUBLISH mochi drops before OnPublish (a wildcard in its topic, a
// receive quota exceeded) leaves its message in pre until the next
// PUBLISH clears it (any PUBLISH, given a body or not: a topic alias
// may point its topic into the dropped one's body): at most 512 bytes a
// connection. A topic alias's topic keeps its PUBLISH's allocation (at
// most 512 bytes here) as long as the alias names it: maxTopicAliases of
// them a connection, as the body mochi made itself was kept before.

// messageBody48 … messageBody368 are a message (144 bytes on 64-bit) and
// the memory of a PUBLISH body of up to 48, 96, 176 and 368 bytes: 192,
// 240, 320 and 512 bytes in all, each a size class of Go's allocator, so
// no byte of the allocation is wasted.
type (
	messageBody48 struct {
		message
		body [48]byte
	}
	messageBody96 struct {
		message
		body [96]byte
	}
	messageBody176 struct {
		message
		body [176]byte
	}
	messageBody368 struct {
		message
		body [368]byte
	}
)

// maxPublishBody is the largest PUBLISH body PublishBody gives memory for.
const maxPublishBody = 368

// PublishBody gives the memory of a PUBLISH body of fh.Remaining bytes, a
// message made with it, for mochi to read the body into (mochi change
// 56); nil for a body over maxPublishBody, one too short to hold a topic,
// and a retained one (its payload may outlive the message). It is called
// on the connection's read goroutine.
func (c *netConn) PublishBody(fh *packets.FixedHeader) []byte {
	n := fh.Remaining
	// A body given earlier is not this PUBLISH's: its message must not be
	// taken for this one (an MQTT 5 alias can point this PUBLISH's topic
	// into that body when mochi dropped its PUBLISH before OnPublish).
	c.pre, c.preBody = nil, nil
	if fh.Retain || n < 3 || n > maxPublishBody {
		return nil
	}
	var body []byte
	switch {
	case n <= 48:
		x := new(messageBody48)
		c.pre, body = &x.message, x.body[:n:n]
	case n <= 96:
		x := new(messageBody96)
		c.pre, body = &x.message, x.body[:n:n]
	case n <= 176:
		x := new(messageBody176)
		c.pre, body = &x.message, x.body[:n:n]
	default:
		x := new(messageBody368)
		c.pre, body = &x.message, x.body[:n:n]
	}
	c.preBody = &body[0]
	return body
}

// takeMessage is the message made with the body of the PUBLISH whose
// decoded topic is topic, once, or nil: the topic of a body PublishBody
// gave starts at its third byte (after its length). A topic from
// elsewhere (an MQTT 5 topic alias) gets nil, and the message is dropped.
func (c *netConn) takeMessage(topic string) *message {
	m, body := c.pre, c.preBody
	c.pre, c.preBody = nil, nil
	if m == nil || len(topic) == 0 || unsafe.StringData(topic) != (*byte)(unsafe.Add(unsafe.Pointer(body), 2)) {
		return nil
	}
	return m
}
