package tree

import (
	"reflect"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// flatParsers are Parsers whose limits the flat path must keep as the
// general one does: the defaults, and each limit small enough for a short
// payload to reach it.
func flatParsers(t testing.TB) []*Parser {
	t.Helper()
	var out []*Parser
	for _, lim := range []Limits{
		DefaultLimits(),
		{MaxPayload: 24, MaxRows: 100, MaxDepth: 32},
		{MaxPayload: 1 << 20, MaxRows: 2, MaxDepth: 32},
		{MaxPayload: 1 << 20, MaxRows: 100, MaxDepth: 32, MaxNodes: 3},
		{MaxPayload: 1 << 20, MaxRows: 100, MaxDepth: 1, MaxTopicLen: 12},
		{MaxPayload: 1 << 20, MaxRows: 100, MaxDepth: 32, MaxTopicLevels: 3},
	} {
		ps, err := NewParser(lim)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ps)
	}
	return out
}

// checkFlat runs the flat path and the general path on one publish: when
// the flat path answers, the general one must give the same Op. It
// reports whether the flat path answered.
func checkFlat(t testing.TB, ps *Parser, p wire.Publish, payload []byte, retain bool) bool {
	t.Helper()
	fast, ok := ps.flatOp(p, payload, retain, 1)
	want, err := ps.decodeOp(p, payload, retain, 1)
	if !ok {
		return false
	}
	if err != nil {
		t.Fatalf("%+v %q: flat path gave %d rows, general path %v", p, payload, len(fast.Rows), err)
	}
	if !reflect.DeepEqual(fast, want) {
		t.Fatalf("%+v %q:\nflat    %+v\ngeneral %+v", p, payload, fast, want)
	}
	return true
}

func TestFlatOpSameAsDecode(t *testing.T) {
	many := make([]string, wire.FlatMax+1)
	for i := range many {
		many[i] = `"k` + strings.Repeat("x", i) + `":1`
	}
	cases := []struct {
		topic   string
		payload string
		flat    bool // the default Parser takes the flat path
	}{
		{"lat", `{"t":1234567}`, true},
		{"lat", ` { "t" : -1.5e3 , "s":"on", "b":true,"f":false,"n":null } `, true},
		{"a//b", "{\"k\":\t0}\n", true},
		{"dev/1", `{"temp":21.5,"unit":"C","note":"a/b+#~"}`, true},
		{"lat", `{"` + strings.Join(many[:wire.FlatMax], `,`)[1:] + `}`, true},
		{"lat", `{"` + strings.Join(many, `,`)[1:] + `}`, false}, // too many members for the flat path
		{"lat", `{}`, false},
		{"lat", `{"t":{"u":1}}`, false},
		{"lat", `{"t":[1,2]}`, false},
		{"lat", `{"t":"\u00e9"}`, false},
		{"lat", `{"t":"é"}`, false},
		{"lat", `{"t":"a\"b"}`, false},
		{"lat", `{"é":1}`, false},
		{"lat", `{"a/b":1}`, false},
		{"lat", `{"/":1}`, false},
		{"lat", `{"":1}`, false},
		{"lat", `{"a+":1}`, false},
		{"lat", `{"a#":1}`, false},
		{"lat", `{"t":1,"t":2}`, false},
		{"lat", `{"t":1e400}`, false},
		{"lat", `{"t":01}`, false},
		{"lat", `{"t":1.}`, false},
		{"lat", `{"t":tru}`, false},
		{"lat", `{"t":truex}`, false},
		{"lat", `{"t":1}x`, false},
		{"lat", `{"t":1,}`, false},
		{"lat", `{"t":1`, false},
		{"lat", `{"t" 1}`, false},
		{"lat", `[1]`, false},
		{"lat", `1`, false},
		{"lat", ``, false},
		{"lat/+", `{"t":1}`, false},
		{"lat/#", `{"t":1}`, false},
		{"$SYS", `{"t":1}`, false},
		{"", `{"t":1}`, false},
		{strings.Repeat("x", wire.MaxTopicLen-1), `{"t":1}`, false},
	}
	for _, c := range cases {
		for i, ps := range flatParsers(t) {
			for _, retain := range []bool{false, true} {
				p := wire.Publish{Op: wire.PubTree, Codec: wire.CodecJSON, Topic: c.topic}
				got := checkFlat(t, ps, p, []byte(c.payload), retain)
				if i == 0 && got != c.flat {
					t.Errorf("%q %q: flat path %v, want %v", c.topic, c.payload, got, c.flat)
				}
				// Other codecs and .replace always take the general path.
				for _, q := range []wire.Publish{
					{Op: wire.PubTree, Codec: wire.CodecCBOR, Topic: c.topic},
					{Op: wire.PubTree, Codec: wire.CodecJSON, Topic: c.topic, Replace: true},
				} {
					if checkFlat(t, ps, q, []byte(c.payload), retain) {
						t.Errorf("%+v %q: took the flat path", q, c.payload)
					}
				}
			}
		}
	}
	// Each small limit is reached by a payload the default Parser takes flat.
	ps := flatParsers(t)
	for i, c := range []struct {
		topic, payload string
	}{
		{"lat", `{"t":1,"u":22222222222222}`}, // 24 bytes
		{"lat", `{"a":1,"b":2,"c":3}`},        // 3 rows
		{"lat", `{"a":1,"b":2,"c":3}`},        // 4 nodes
		{"lat/abcdefg", `{"t":1}`},            // 13 bytes of topic
		{"a/b/c", `{"t":1}`},                  // 4 levels
	} {
		p := wire.Publish{Op: wire.PubTree, Codec: wire.CodecJSON, Topic: c.topic}
		if !checkFlat(t, ps[0], p, []byte(c.payload), false) {
			t.Fatalf("%q: not flat", c.payload)
		}
		if _, err := ps[i+1].Op(p, []byte(c.payload), false, 0); err == nil {
			t.Errorf("limits %+v: %q %q taken", ps[i+1].lim, c.topic, c.payload)
		}
		if checkFlat(t, ps[i+1], p, []byte(c.payload), false) {
			t.Errorf("limits %+v: %q %q took the flat path", ps[i+1].lim, c.topic, c.payload)
		}
	}
}

// TestFlatOpRows pins what the common publish's rows are, whichever path
// makes them.
func TestFlatOpRows(t *testing.T) {
	ps := flatParsers(t)[0]
	p := wire.Publish{Op: wire.PubTree, Codec: wire.CodecJSON, Topic: "lat"}
	op, err := ps.Op(p, []byte(`{"t":12,"s":"x y","n":null,"b":false}`), true, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := []Row{
		{Topic: "lat/t", Value: wire.Value{Kind: wire.JSON, Data: "12"}, Retain: true},
		{Topic: "lat/s", Value: wire.Value{Kind: wire.String, Data: "x y"}, Retain: true},
		{Topic: "lat/n", Retain: true},
		{Topic: "lat/b", Value: wire.Value{Kind: wire.JSON, Data: "false"}, Retain: true},
	}
	if !reflect.DeepEqual(op.Rows, want) || op.QoS != 1 || !op.Protect || op.MaxRows != ps.lim.MaxRows {
		t.Fatalf("got %+v", op)
	}
}

// FuzzFlatOp is the differential check of the flat path against the
// general one: whenever flatOp answers, decodeOp gives the same Op (never
// an error), under each of flatParsers' limits.
func FuzzFlatOp(f *testing.F) {
	for _, s := range []string{
		`{"t":1}`, `{"t":-0.5e-3,"u":"v","w":true,"x":false,"y":null}`, ` {"a" :1 ,"b": 2 } `,
		`{"t":1,"t":2}`, `{"t":1e400}`, `{"t":{"u":1}}`, `{"a/b":1}`, `{"t":"a\nb"}`, `{}`,
		`{"t":1}x`, `{"a":1,"b":2,"c":3}`, `{"t":123456789012345678901234567890}`,
	} {
		f.Add("lat", []byte(s), false)
	}
	f.Add("a//b", []byte(`{"k":0}`), true)
	f.Add("lat/+", []byte(`{"k":0}`), true)
	// RV8's edges: numbers, whitespace, escapes, bytes outside ASCII and
	// keys a level cannot be (FuzzFlatJSON has more), and topics: empty
	// levels, a trailing '/', '$' and wildcards inside a level, 0xff,
	// NUL, a Mote verb, many levels.
	for _, s := range []string{
		`{"t":-0}`, `{"t":1e308}`, `{"t":1e309}`, `{"t":-01}`, `{"t":1E+2}`, " \t\r\n{\"t\"\n:\r1\t}\n",
		`{"t":"\u0041"}`, "{\"t\":\"\xff\"}", "{\"t\":\"\x00\"}", `{"$set":1}`, `{"$":1}`, `{"+":1}`, `{"#":1}`,
		`{"":1}`, `{"/":1}`, `{"t":1,"T":2}`, `{"t":{"u":{"v":1}}}`,
		`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17}`,
	} {
		f.Add("lat", []byte(s), true)
	}
	for _, topic := range []string{"a/", "/a", "/", "a/$set", "a$/b", "a+b", "a#", "\xff/\x00", "$tree/x", "x/.replace",
		strings.Repeat("a/", 40) + "a", strings.Repeat("x", 65530)} {
		f.Add(topic, []byte(`{"t":1,"u":"v"}`), false)
	}
	parsers := flatParsers(f)
	f.Fuzz(func(t *testing.T, topic string, payload []byte, retain bool) {
		for _, ps := range parsers {
			p := wire.Publish{Op: wire.PubTree, Codec: wire.CodecJSON, Topic: topic}
			checkFlat(t, ps, p, payload, retain)
		}
	})
}
