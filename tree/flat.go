package tree

import (
	"strings"

	"github.com/mote-mqtt/mote/wire"
)

// flatOp is Op for the common tree publish in one pass, without a tree of
// nodes: a JSON object of scalars (wire.FlatJSON) published to a topic T
// without wildcards, not .replace, not under '$'. Each member k becomes
// the row T/k, as the general path's explode makes it. It reports false
// for anything else, and for anything the general path would refuse (a
// limit of rows, nodes or topics, a reserved or too long topic): then the
// caller takes the general path (decodeOp), which gives its Op or its
// error as ever. So flatOp changes no answer, only its cost
// (TestFlatOpSameAsDecode, FuzzFlatOp).
//
// Its rows' topics and values are pieces of one string: one allocation a
// publish, where the general path made two (the payload's copy and the
// topics').
func (ps *Parser) flatOp(p wire.Publish, payload []byte, retain bool, qos byte) (Op, bool) {
	t := p.Topic
	if p.Codec != wire.CodecJSON || p.Replace || t == "" || t[0] == '$' || wire.HasWildcard(t) {
		return Op{}, false
	}
	var buf [wire.FlatMax]wire.FlatMember
	ms, ok := ps.dec.FlatJSON(payload, buf[:0])
	if !ok || len(ms) > ps.lim.MaxRows {
		return Op{}, false
	}
	size := 0
	for _, m := range ms {
		n := len(t) + 1 + int(m.KeyEnd-m.KeyStart)
		if n > wire.MaxTopicLen {
			return Op{}, false
		}
		size += n + int(m.ValEnd-m.ValStart)
	}
	var b strings.Builder
	b.Grow(size)
	for _, m := range ms {
		b.WriteString(t)
		b.WriteByte('/')
		b.Write(payload[m.KeyStart:m.KeyEnd])
	}
	for _, m := range ms {
		b.Write(payload[m.ValStart:m.ValEnd])
	}
	all := b.String()
	check := ps.lim.MaxTopicLen > 0 || ps.lim.MaxTopicLevels > 0
	rows := ps.rows.take(len(ms))
	from, at := 0, 0
	for _, m := range ms {
		at += len(t) + 1 + int(m.KeyEnd-m.KeyStart)
	}
	for _, m := range ms {
		end := from + len(t) + 1 + int(m.KeyEnd-m.KeyStart)
		topic := all[from:end]
		from = end
		if check && ps.lim.CheckTopic(topic) != nil {
			ps.Recycle(rows)
			return Op{}, false
		}
		var v wire.Value
		if m.Kind != wire.None {
			n := int(m.ValEnd - m.ValStart)
			v = wire.Value{Kind: m.Kind, Data: all[at : at+n]}
			at += n
		}
		rows = append(rows, Row{Topic: topic, Value: v, Retain: retain})
	}
	return Op{Rows: rows, QoS: qos, MaxRows: ps.lim.MaxRows, Protect: true}, true
}
