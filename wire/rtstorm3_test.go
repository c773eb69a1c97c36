package wire

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestDuplicateKeysEveryPosition: a duplicate key is refused wherever it
// comes in an object — next to its twin, after an ascending run (which
// h-storm3 checks without an index), out of order, past the 16-key scan,
// spelt with escapes or in another encoding of the same text — in JSON
// (tree objects and leaf objects inside arrays), CBOR and MessagePack,
// with and without a Scratch; objects without one are taken. The
// results are main's (run on main's wire package: the same).
func TestDuplicateKeysEveryPosition(t *testing.T) {
	run := func(n int) string { // n ascending keys k00..k(n-1), as members
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, `"k%02d":%d,`, i, i)
		}
		return b.String()
	}
	jsonCases := []struct {
		name, doc string
		dup       bool
	}{
		{"adjacent", `{"a":1,"a":2}`, true},
		{"after ascending run", `{"a":1,"b":2,"c":3,"b":4}`, true},
		{"first after ascending run", `{"a":1,"b":2,"c":3,"a":4}`, true},
		{"unsorted then dup", `{"b":1,"a":2,"b":3}`, true},
		{"unsorted then ascending then dup", `{"b":1,"a":2,"c":3,"d":4,"c":5}`, true},
		{"escape equals plain", `{"a":1,"\u0061":2}`, true},
		{"escape first, ascending", `{"\u0061":1,"b":2,"a":3}`, true},
		{"escaped slash", `{"x\/y":1,"x/y":2}`, true},
		{"last of 20 ascending", "{" + run(20) + `"k19":1}`, true},
		{"first of 20 ascending", "{" + run(20) + `"k00":1}`, true},
		{"out of order after 20 then dup", "{" + run(20) + `"a":1,"k05":2}`, true},
		{"dup at 17th", "{" + run(16) + `"k03":1}`, true},
		{"leaf object in array", `{"x":[{"a":1,"b":2,"a":3}]}`, true},
		{"leaf object in array, escape", `{"x":[{"b":1,"\u0062":2}]}`, true},
		{"leaf object, 20 ascending then dup", `{"x":[{` + run(20) + `"k10":0}]}`, true},
		{"nested dup deep", `{"a":{"b":{"c":1,"c":2}}}`, true},
		{"descending, all different", `{"c":1,"b":2,"a":3}`, false},
		{"case differs", `{"a":1,"A":2}`, false},
		{"nested keys repeat outer", `{"a":{"b":1},"b":{"a":2}}`, false},
		{"leaf nested keys repeat outer", `{"x":[{"a":{"b":1},"b":2}]}`, false},
		{"40 ascending", "{" + run(40) + `"z":0}`, false},
		{"prefix keys", `{"a":1,"ab":2,"a\u0000":3}`, false},
	}
	d, err := NewDecoder(DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	var sc Scratch
	for _, c := range jsonCases {
		t.Run("JSON/"+c.name, func(t *testing.T) {
			for _, with := range []bool{false, true} {
				var err error
				if with {
					_, err = d.DecodeWith(CodecJSON, []byte(c.doc), &sc)
				} else {
					_, err = d.Decode(CodecJSON, []byte(c.doc))
				}
				checkDup(t, c.doc, err, c.dup)
			}
		})
	}
	// CBOR: maps of text keys, each key in the encoding given.
	cborText := func(s string) []byte { return append([]byte{0x60 | byte(len(s))}, s...) }
	cborChunks := func(s string) []byte { // indefinite length, a chunk a byte
		b := []byte{0x7f}
		for i := range len(s) {
			b = append(b, cborText(s[i:i+1])...)
		}
		return append(b, 0xff)
	}
	cborText8 := func(s string) []byte { return append([]byte{0x78, byte(len(s))}, s...) }
	cborMap := func(keys ...[]byte) []byte {
		b := []byte{0xa0 | byte(len(keys))}
		for i, k := range keys {
			b = append(b, k...)
			b = append(b, byte(i%24)) // an unsigned int value
		}
		return b
	}
	mpStr := func(s string) []byte { return append([]byte{0xa0 | byte(len(s))}, s...) }
	mpStr8 := func(s string) []byte { return append([]byte{0xd9, byte(len(s))}, s...) }
	mpStr16 := func(s string) []byte { return append([]byte{0xda, 0, byte(len(s))}, s...) }
	mpMap := func(keys ...[]byte) []byte {
		b := []byte{0x80 | byte(len(keys))}
		for i, k := range keys {
			b = append(b, k...)
			b = append(b, byte(i%100))
		}
		return b
	}
	type bin struct {
		name string
		doc  []byte
		dup  bool
	}
	var binCases []struct {
		codec Codec
		bin
	}
	add := func(c Codec, cs ...bin) {
		for _, b := range cs {
			binCases = append(binCases, struct {
				codec Codec
				bin
			}{c, b})
		}
	}
	add(CodecCBOR,
		bin{"adjacent", cborMap(cborText("a"), cborText("a")), true},
		bin{"after run", cborMap(cborText("a"), cborText("b"), cborText("c"), cborText("a")), true},
		bin{"chunks equal plain", cborMap(cborText("ab"), cborChunks("ab")), true},
		bin{"text8 equal plain, after run", cborMap(cborText("a"), cborText("b"), cborText8("a")), true},
		bin{"chunks, after unsorted", cborMap(cborText("b"), cborText("a"), cborChunks("b")), true},
		bin{"all different", cborMap(cborText("b"), cborChunks("a"), cborText8("c")), false},
		bin{"in array (leaf)", append([]byte{0xa1, 0x61, 'x', 0x81}, cborMap(cborText("a"), cborText("b"), cborChunks("a"))...), true},
	)
	add(CodecMsgPack,
		bin{"adjacent", mpMap(mpStr("a"), mpStr("a")), true},
		bin{"after run", mpMap(mpStr("a"), mpStr("b"), mpStr("c"), mpStr("a")), true},
		bin{"str8 equal fixstr", mpMap(mpStr("a"), mpStr8("a")), true},
		bin{"str16 after run", mpMap(mpStr("a"), mpStr("b"), mpStr16("a")), true},
		bin{"all different", mpMap(mpStr("b"), mpStr8("a"), mpStr16("c")), false},
		bin{"in array (leaf)", append([]byte{0x81, 0xa1, 'x', 0x91}, mpMap(mpStr("a"), mpStr("b"), mpStr8("a"))...), true},
	)
	for _, c := range binCases {
		t.Run(fmt.Sprintf("%v/%s", c.codec, c.name), func(t *testing.T) {
			_, err := d.Decode(c.codec, c.doc)
			checkDup(t, fmt.Sprintf("% x", c.doc), err, c.dup)
		})
	}
}

// checkDup fails t unless err is a duplicate-key refusal exactly when dup.
func checkDup(t *testing.T, doc string, err error, dup bool) {
	t.Helper()
	got := err != nil && errors.Is(err, ErrPayload) && strings.Contains(err.Error(), "duplicate key")
	if got != dup || (!dup && err != nil) {
		t.Errorf("%s: err %v, want a duplicate: %v", doc, err, dup)
	}
}
