package wire

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestParseSubscribe(t *testing.T) {
	tests := []struct {
		in   string
		want Subscription
		err  error
	}{
		{"light/+/is_on", Subscription{Plain, CodecJSON, "light/+/is_on", 0}, nil},
		{"$synced/x", Subscription{Plain, CodecJSON, "$synced/x", 0}, nil},
		{"$SYS/#", Subscription{Plain, CodecJSON, "$SYS/#", 0}, nil},
		{"$sync/light/+/is_on", Subscription{Sync, CodecJSON, "light/+/is_on", 0}, nil},
		{"$tree.cbor/house/#", Subscription{Tree, CodecCBOR, "house/#", 0}, nil},
		{"$sync.json/#", Subscription{Sync, CodecJSON, "#", 0}, nil},
		{"$sync.msgpack/a/+", Subscription{Sync, CodecMsgPack, "a/+", 0}, nil},
		{"$hist.msgpack/a/#", Subscription{Hist, CodecMsgPack, "a/#", 0}, nil},
		{"$tree.250ms.msgpack/a", Subscription{Tree, CodecMsgPack, "a", 250 * time.Millisecond}, nil},
		{"$sync.msgpack.cbor/a", Subscription{}, ErrPrefix},
		{"$sync.MsgPack/a", Subscription{}, ErrPrefix},
		{"$sync//a", Subscription{Sync, CodecJSON, "/a", 0}, nil},
		{"$sync.xml/a", Subscription{}, ErrPrefix},
		{"$sync.json.cbor/a", Subscription{}, ErrPrefix},
		{"$sync./a", Subscription{}, ErrPrefix},
		{"$sync.replace/a", Subscription{}, ErrPrefix},
		{"$sync", Subscription{}, ErrPrefix},
		{"$sync/", Subscription{}, ErrPrefix},
		{"$sync/a/#/b", Subscription{}, ErrPrefix},
		{"$sync/a+", Subscription{}, ErrPrefix},
		{"$set/a", Subscription{}, ErrPrefix},
		{"a/#/b", Subscription{}, ErrFilter},
		{"", Subscription{}, ErrFilter},
		{"a\x00b", Subscription{}, ErrFilter},
		{"a/\xff", Subscription{}, ErrFilter},
		// Paced deltas (SPEC §2): .<N>ms, 1 ≤ N ≤ 3,600,000, options in any order, at most once.
		{"$sync.cbor.250ms/dev/+/state", Subscription{Sync, CodecCBOR, "dev/+/state", 250 * time.Millisecond}, nil},
		{"$sync.250ms.cbor/dev/+/state", Subscription{Sync, CodecCBOR, "dev/+/state", 250 * time.Millisecond}, nil},
		{"$tree.1ms/#", Subscription{Tree, CodecJSON, "#", time.Millisecond}, nil},
		{"$tree.3600000ms.json/a", Subscription{Tree, CodecJSON, "a", time.Hour}, nil},
		{"$sync.0ms/a", Subscription{}, ErrPrefix},
		{"$sync.3600001ms/a", Subscription{}, ErrPrefix},
		{"$sync.99999999999999999999ms/a", Subscription{}, ErrPrefix},
		{"$sync.0250ms/a", Subscription{}, ErrPrefix},
		{"$sync.-5ms/a", Subscription{}, ErrPrefix},
		{"$sync.+5ms/a", Subscription{}, ErrPrefix},
		{"$sync. 5ms/a", Subscription{}, ErrPrefix},
		{"$sync.5 ms/a", Subscription{}, ErrPrefix},
		{"$sync.1e3ms/a", Subscription{}, ErrPrefix},
		{"$sync.ms/a", Subscription{}, ErrPrefix},
		{"$sync.250/a", Subscription{}, ErrPrefix},
		{"$sync.250s/a", Subscription{}, ErrPrefix},
		{"$sync.250MS/a", Subscription{}, ErrPrefix},
		{"$sync.250ms.250ms/a", Subscription{}, ErrPrefix},
		{"$sync.250ms.100ms/a", Subscription{}, ErrPrefix},
		{"$sync.250ms/", Subscription{}, ErrPrefix},
		{"$sync.250ms", Subscription{}, ErrPrefix},
	}
	for _, tt := range tests {
		got, err := ParseSubscribe(tt.in)
		if !errors.Is(err, tt.err) || got != tt.want {
			t.Errorf("ParseSubscribe(%q) = %+v, %v; want %+v, %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestParseInterval(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration // 0: refused
	}{
		{"1", time.Millisecond},
		{"250", 250 * time.Millisecond},
		{"3600000", time.Hour},
		{"0", 0},
		{"00", 0},
		{"0250", 0},
		{"3600001", 0},
		{"9999999", 0},
		{"10000000", 0},
		{"18446744073709551617", 0},
		{"-1", 0},
		{"+1", 0},
		{" 1", 0},
		{"1 ", 0},
		{"1.5", 0},
		{"1e3", 0},
		{"250ms", 0},
		{"", 0},
		{"٣", 0}, // not an ASCII digit
	}
	for _, tt := range tests {
		got, err := ParseInterval(tt.in)
		if got != tt.want || (err == nil) != (tt.want > 0) || (err != nil && !errors.Is(err, ErrPrefix)) {
			t.Errorf("ParseInterval(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	if got := IntervalOption(250 * time.Millisecond); got != "250ms" {
		t.Errorf("IntervalOption(250ms) = %q", got)
	}
}

func TestParsePublish(t *testing.T) {
	tests := []struct {
		in   string
		want Publish
		err  error
	}{
		{"light/bedroom", Publish{Op: PubPlain, Topic: "light/bedroom"}, nil},
		{"$tree/light/bedroom", Publish{Op: PubTree, Topic: "light/bedroom"}, nil},
		{"$tree.cbor.replace/light/bedroom/+", Publish{Op: PubTree, Codec: CodecCBOR, Replace: true, Topic: "light/bedroom/+"}, nil},
		{"$tree.replace.json/#", Publish{Op: PubTree, Replace: true, Topic: "#"}, nil},
		{"$tree.msgpack.replace/a/+", Publish{Op: PubTree, Codec: CodecMsgPack, Replace: true, Topic: "a/+"}, nil},
		{"$tree.msgpack.msgpack/a", Publish{}, ErrPrefix},
		{"$set.msgpack/a", Publish{}, ErrPrefix},
		{"$set/light/+/is_on", Publish{Op: PubSet, Topic: "light/+/is_on"}, nil},
		{"$sync/light/x", Publish{}, ErrReserved},
		{"$sync.cbor/light/x", Publish{}, ErrReserved},
		{"$tree.xml/a", Publish{}, ErrPrefix},
		{"$tree.replace.replace/a", Publish{}, ErrPrefix},
		{"$tree.cbor.json/a", Publish{}, ErrPrefix},
		{"$set.cbor/a", Publish{}, ErrPrefix},
		{"$tree", Publish{}, ErrPrefix},
		{"$tree/a/#/b", Publish{}, ErrPrefix},
		{"$set/", Publish{}, ErrPrefix},
	}
	for _, tt := range tests {
		got, err := ParsePublish(tt.in)
		if !errors.Is(err, tt.err) || got != tt.want {
			t.Errorf("ParsePublish(%q) = %+v, %v; want %+v, %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestCodecNames(t *testing.T) {
	for _, c := range Codecs {
		if got, err := ParseCodec(c.String()); got != c || err != nil {
			t.Errorf("ParseCodec(%q) = %v, %v", c.String(), got, err)
		}
		if got, ok := ContentTypeCodec(c.ContentType()); got != c || !ok {
			t.Errorf("ContentTypeCodec(%q) = %v, %v", c.ContentType(), got, ok)
		}
	}
	if _, err := ParseCodec("xml"); !errors.Is(err, ErrPrefix) {
		t.Errorf("ParseCodec(xml) = %v", err)
	}
	if _, ok := ContentTypeCodec("application/x-msgpack"); ok {
		t.Error("application/x-msgpack taken for a codec")
	}
}

func TestValidateTopic(t *testing.T) {
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{"a/b", true}, {"/", true}, {"a//b", true}, {"a/+", false}, {"#", false}, {"", false}, {"a\x00", false},
	} {
		if err := ValidateTopic(tt.in); (err == nil) != tt.ok {
			t.Errorf("ValidateTopic(%q) = %v", tt.in, err)
		}
	}
}

// FuzzParse checks that the prefix grammar never panics, and that what it
// accepts is consistent: a tree subscription's filter is a valid filter.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"$sync/a/+/b", "$tree.cbor/#", "$sync.cbor.250ms/a/+", "$tree.0ms/a", "$tree.cbor.replace/a/+", "$set/a/#", "$sync.xml/a", "a/b", "$sync", "$tree./"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if sub, err := ParseSubscribe(s); err == nil {
			if ValidateFilter(sub.Filter) != nil {
				t.Fatalf("ParseSubscribe(%q) accepted invalid filter %q", s, sub.Filter)
			}
			if sub.Interval < 0 || sub.Interval > MaxInterval || sub.Interval%time.Millisecond != 0 || (sub.Interval > 0 && sub.Mode == Plain) {
				t.Fatalf("ParseSubscribe(%q) accepted interval %v", s, sub.Interval)
			}
		}
		if pub, err := ParsePublish(s); err == nil && pub.Op != PubPlain {
			if ValidateFilter(pub.Topic) != nil {
				t.Fatalf("ParsePublish(%q) accepted invalid topic %q", s, pub.Topic)
			}
		}
	})
}

func TestMatch(t *testing.T) {
	for _, tt := range []struct {
		f, t string
		ok   bool
	}{
		{"a/b", "a/b", true}, {"a/+", "a/b", true}, {"a/+", "a/b/c", false}, {"a/#", "a", true},
		{"a/#", "a/b/c", true}, {"#", "a", true}, {"#", "$SYS/x", false}, {"+/x", "$s/x", false},
		{"$SYS/#", "$SYS/x", true}, {"a/+/c", "a//c", true}, {"+", "", true}, {"a", "a/b", false},
		{"a/b", "a", false}, {"+/+", "/", true}, {"/#", "/a", true}, {"a/+/#", "a/b", true},
	} {
		if got := Match(tt.f, tt.t); got != tt.ok {
			t.Errorf("Match(%q, %q) = %v", tt.f, tt.t, got)
		}
	}
}

func TestCovers(t *testing.T) {
	for _, tc := range []struct {
		f, s string
		want bool
	}{
		{"a/#", "a/+/b", true},
		{"a/#", "a", true},
		{"a/+", "a/#", false},
		{"a/+", "a/b", true},
		{"a/+", "a/+", true},
		{"+/b", "#", false},
		{"#", "$SYS/x", false},
		{"#", "$SYS/#", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/+/x", true},
		{"a/b", "a/+", false},
		{"a/+/c", "a/+/c", true},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
	} {
		if got := Covers(tc.f, tc.s); got != tc.want {
			t.Errorf("Covers(%q, %q) = %v", tc.f, tc.s, got)
		}
	}
}

// TestIsMoteSplitVerb: IsMote, which finds the verb without splitVerb's
// cuts, answers as splitVerb does for every short topic of the letters
// the verbs are made of, '.', '/', and a multi-byte rune.
func TestIsMoteSplitVerb(t *testing.T) {
	alphabet := []string{"$", "s", "y", "n", "c", "t", "r", "e", "h", "i", ".", "/", "T", "ſ"}
	r := rand.New(rand.NewPCG(7, 8))
	topics := []string{"", "$", "$sync", "$tree", "$set", "$hist", "$tree.cbor/a", "$set/a", "$sync.json.250ms/x/+",
		"$tree/", "$tree.", "$tree./a", "$treex/a", "$tre/a", "$Tree/a", "$set.x", "x/$tree", "$hist/$tree"}
	for range 100000 {
		var b strings.Builder
		b.WriteString("$")
		for range r.IntN(9) {
			b.WriteString(alphabet[r.IntN(len(alphabet))])
		}
		topics = append(topics, b.String())
	}
	for _, topic := range topics {
		_, _, _, _, want := splitVerb(topic)
		want = want && strings.HasPrefix(topic, "$")
		if got := IsMote(topic); got != want {
			t.Fatalf("IsMote(%q) = %v, splitVerb says %v", topic, got, want)
		}
	}
}
