package packets

// mote: a fuzz target over every decoder a client's bytes reach.

import "testing"

// FuzzMoteDecode: no body of any packet type, MQTT 3.1.1 or 5, makes its
// decoder panic (the properties' duplicate, range and length checks of
// changes 25 and 30 included); a decoded MQTT 5 packet's Subscription
// Identifiers are never 0.
func FuzzMoteDecode(f *testing.F) {
	f.Add(byte(Connect), byte(5), []byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x06, 0, 60, 5, 0x11, 0, 0, 0, 9, 0, 1, 'c', 0, 0, 1, 't', 0, 0})
	f.Add(byte(Publish), byte(5), []byte{0, 1, 'a', 0, 1, 6, 0x26, 0, 1, 'k', 0, 0, 'x'})
	f.Add(byte(Subscribe), byte(5), []byte{0, 1, 2, 0x0B, 1, 0, 1, 'a', 1})
	f.Add(byte(Puback), byte(5), []byte{0, 1, 0x10, 4, 0x1F, 0, 1, 'r'})
	f.Add(byte(Disconnect), byte(5), []byte{0x04, 5, 0x11, 0, 0, 0, 1})
	f.Add(byte(Auth), byte(5), []byte{0x18, 4, 0x15, 0, 1, 'm'})
	f.Add(byte(Unsubscribe), byte(5), []byte{0, 1, 0, 0, 1, 'a'})
	f.Fuzz(func(t *testing.T, typ, v byte, body []byte) {
		pk := Packet{ProtocolVersion: 4 + v%2, FixedHeader: FixedHeader{Type: 1 + typ%15, Remaining: len(body)}}
		if pk.FixedHeader.Type == Publish {
			pk.FixedHeader.Qos = v >> 1 % 3
		}
		if pk.FixedHeader.Type == Subscribe || pk.FixedHeader.Type == Unsubscribe || pk.FixedHeader.Type == Pubrel {
			pk.FixedHeader.Qos = 1
		}
		var err error
		switch pk.FixedHeader.Type {
		case Connect:
			err = pk.ConnectDecode(body)
		case Connack:
			err = pk.ConnackDecode(body)
		case Publish:
			err = pk.PublishDecode(body)
		case Puback:
			err = pk.PubackDecode(body)
		case Pubrec:
			err = pk.PubrecDecode(body)
		case Pubrel:
			err = pk.PubrelDecode(body)
		case Pubcomp:
			err = pk.PubcompDecode(body)
		case Subscribe:
			err = pk.SubscribeDecode(body)
		case Suback:
			err = pk.SubackDecode(body)
		case Unsubscribe:
			err = pk.UnsubscribeDecode(body)
		case Unsuback:
			err = pk.UnsubackDecode(body)
		case Disconnect:
			err = pk.DisconnectDecode(body)
		case Auth:
			err = pk.AuthDecode(body)
		default:
			return
		}
		if err == nil && pk.FixedHeader.Type != Publish {
			for _, id := range pk.Properties.SubscriptionIdentifier {
				if id == 0 {
					t.Fatalf("subscription identifier 0 accepted in packet type %d", pk.FixedHeader.Type)
				}
			}
		}
	})
}
