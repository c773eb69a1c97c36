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
	// A row's topic is T/k, k holding no '/': one level more than T, and
	// at most the limit CheckTopic and explode's row keep.
	if ps.lim.MaxTopicLevels > 0 && strings.Count(t, "/")+2 > ps.lim.MaxTopicLevels {
		return Op{}, false
	}
	maxLen := ps.lim.maxTopicLen()
	size := 0
	for _, m := range ms {
		k := int(m.KeyEnd - m.KeyStart)
		if len(t)+1+k > maxLen {
			return Op{}, false
		}
		size += len(t) + 1 + k + int(m.ValEnd-m.ValStart)
	}
	// Each row's topic, then its value.
	var b strings.Builder
	b.Grow(size)
	for _, m := range ms {
		b.WriteString(t)
		b.WriteByte('/')
		b.Write(payload[m.KeyStart:m.KeyEnd])
		b.Write(payload[m.ValStart:m.ValEnd])
	}
	all := b.String()
	rows := ps.rows.take(len(ms))
	at := 0
	for _, m := range ms {
		end := at + len(t) + 1 + int(m.KeyEnd-m.KeyStart)
		r := Row{Topic: all[at:end], Retain: retain}
		at = end + int(m.ValEnd-m.ValStart)
		if m.Kind != wire.None {
			r.Value = wire.Value{Kind: m.Kind, Data: all[end:at]}
		}
		rows = append(rows, r)
	}
	return Op{Rows: rows, QoS: qos, MaxRows: ps.lim.MaxRows, Protect: true}, true
}
