package wire

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Errors of the prefix grammar and of topic validation; compare with errors.Is.
var (
	// ErrPrefix is a Mote prefix ($sync, $tree, $set) that does not parse.
	ErrPrefix = errors.New("wire: malformed prefix")
	// ErrFilter is an invalid MQTT topic filter or topic name.
	ErrFilter = errors.New("wire: invalid topic")
	// ErrReserved is a PUBLISH to a Mote prefix that only the broker may publish on.
	ErrReserved = errors.New("wire: reserved topic")
)

// MaxTopicLen is the longest topic or filter MQTT can carry (a UTF-8 string
// with a 16-bit length, [MQTT-1.5.3]).
const MaxTopicLen = 65535

// Mode says how a subscription is served.
type Mode uint8

const (
	// Plain is an ordinary MQTT subscription.
	Plain Mode = iota
	// Sync is a tree subscription answered with a snapshot, then deltas ($sync).
	Sync
	// Tree is a tree subscription answered with deltas only ($tree).
	Tree
	// Hist is a tree subscription answered with the rows' history, then
	// deltas ($hist, SPEC §9).
	Hist
)

// String names the mode as its prefix verb.
func (m Mode) String() string {
	switch m {
	case Sync:
		return "sync"
	case Tree:
		return "tree"
	case Hist:
		return "hist"
	}
	return "plain"
}

// Codec is the encoding of a tree payload.
type Codec uint8

const (
	// CodecJSON is JSON text (RFC 8259), the default.
	CodecJSON Codec = iota
	// CodecCBOR is CBOR (RFC 8949).
	CodecCBOR
	// CodecMsgPack is MessagePack (github.com/msgpack/msgpack spec).
	CodecMsgPack
	// CodecOriginal is the original Mote broker's output (SPEC §7): JSON
	// whose leaves are all strings, each holding the row's payload bytes
	// as plain subscribers get them, and a filter without wildcards
	// answered with the bare payload (empty for none). No option or
	// property selects it: only the original-dialect listener does, so it
	// is not in Codecs; it is never decoded.
	CodecOriginal
)

// Codecs lists every codec, the default first.
var Codecs = [...]Codec{CodecJSON, CodecCBOR, CodecMsgPack}

// String names the codec as its prefix option.
func (c Codec) String() string {
	switch c {
	case CodecCBOR:
		return "cbor"
	case CodecMsgPack:
		return "msgpack"
	case CodecOriginal:
		return "original"
	}
	return "json"
}

// ContentType is the MQTT 5 Content Type (and HTTP media type) of payloads
// in this codec.
func (c Codec) ContentType() string {
	switch c {
	case CodecCBOR:
		return "application/cbor"
	case CodecMsgPack:
		return "application/msgpack"
	}
	return "application/json"
}

// ParseCodec reads a codec name as used by options and user properties.
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "json":
		return CodecJSON, nil
	case "cbor":
		return CodecCBOR, nil
	case "msgpack":
		return CodecMsgPack, nil
	}
	return 0, fmt.Errorf("%w: unknown codec %.40q (want json, cbor or msgpack)", ErrPrefix, s)
}

// ContentTypeCodec is the codec whose ContentType is ct; ok is false for
// any other media type.
func ContentTypeCodec(ct string) (c Codec, ok bool) {
	for _, c := range Codecs {
		if ct == c.ContentType() {
			return c, true
		}
	}
	return 0, false
}

// isCodec reports whether an option names a codec.
func isCodec(o string) bool { return o == "json" || o == "cbor" || o == "msgpack" }

// Subscription is a parsed SUBSCRIBE topic filter.
type Subscription struct {
	Mode     Mode          // Plain, Sync or Tree
	Codec    Codec         // tree payload codec; CodecJSON for Plain
	Filter   string        // the MQTT filter F the tree is built from (the whole filter for Plain)
	Interval time.Duration // paced deltas (.<N>ms): at most one message per Interval; 0 unpaced
}

// MaxInterval is the longest pacing interval of a tree subscription:
// 3,600,000 ms (SPEC §2).
const MaxInterval = time.Hour

// ParseInterval reads a pacing interval in milliseconds, N of the option
// .<N>ms or of the MQTT 5 user property mote-interval (SPEC §2).
func ParseInterval(s string) (time.Duration, error) {
	d, ok := parseMillis(s)
	if !ok {
		return 0, fmt.Errorf("%w: interval %.20q: %s", ErrPrefix, s, intervalRule)
	}
	return d, nil
}

const intervalRule = "want 1 to 3600000 milliseconds, decimal digits without a sign or leading zero"

// parseMillis reads N: decimal digits only (no sign, space or leading
// zero), 1 ≤ N ≤ 3,600,000.
func parseMillis(s string) (time.Duration, bool) {
	if s == "" || len(s) > 7 || s[0] == '0' {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	d := time.Duration(n) * time.Millisecond
	return d, d <= MaxInterval
}

// IntervalOption is the option that paces a subscription by d: "250ms".
func IntervalOption(d time.Duration) string {
	return fmt.Sprintf("%dms", d.Milliseconds())
}

// PubOp says what a PUBLISH asks of the broker.
type PubOp uint8

const (
	// PubPlain is an ordinary publish.
	PubPlain PubOp = iota
	// PubTree is a tree publish ($tree/T): the payload is spread into rows.
	PubTree
	// PubSet is $set/F: every existing retained row matching F takes the payload.
	PubSet
)

// String names the operation as its prefix verb.
func (o PubOp) String() string {
	switch o {
	case PubTree:
		return "tree"
	case PubSet:
		return "set"
	}
	return "plain"
}

// Publish is a parsed PUBLISH topic name.
type Publish struct {
	Op      PubOp  // PubPlain, PubTree or PubSet
	Codec   Codec  // payload codec of a tree publish
	Replace bool   // .replace: delete retained rows under Topic that the tree omits
	Topic   string // T (PubTree), F (PubSet) or the plain topic name
}

// The verbs of SPEC §2 and §4.
const (
	verbSync = "$sync"
	verbTree = "$tree"
	verbSet  = "$set"
	verbHist = "$hist"
)

// splitVerb returns the verb, its options and the rest of a topic whose
// first level is a Mote verb; ok is false for any other topic, including
// "$synced/x" whose first level merely starts like one.
func splitVerb(topic string) (verb string, opts []string, rest string, hasRest, ok bool) {
	first, rest, hasRest := strings.Cut(topic, "/")
	verb, optText, hasOpts := strings.Cut(first, ".")
	switch verb {
	case verbSync, verbTree, verbSet, verbHist:
	default:
		return "", nil, "", false, false
	}
	if hasOpts {
		opts = strings.Split(optText, ".")
	}
	return verb, opts, rest, hasRest, true
}

// IsMote reports whether a topic's first level is one of Mote's verbs
// ($sync, $tree, $set, $hist, with or without options). Each starts with
// '$': a topic that does not is answered at once.
func IsMote(topic string) bool {
	if !strings.HasPrefix(topic, "$") {
		return false
	}
	// splitVerb's answer without its cuts: the verb ends at the first '.'
	// or '/' (a tree publish's topic was split three times on its way in,
	// bench/README.md, branch h-tlat; TestIsMoteSplitVerb).
	end := len(topic)
	for i := 1; i < len(topic); i++ {
		if c := topic[i]; c == '.' || c == '/' {
			end = i
			break
		}
	}
	switch topic[:end] {
	case verbSync, verbTree, verbSet, verbHist:
		return true
	}
	return false
}

// ParseSubscribe parses a SUBSCRIBE topic filter. A filter whose first level
// is not a Mote verb is returned as Plain, validated as an MQTT filter.
func ParseSubscribe(filter string) (Subscription, error) {
	verb, opts, rest, hasRest, ok := splitVerb(filter)
	if !ok {
		if err := ValidateFilter(filter); err != nil {
			return Subscription{}, err
		}
		return Subscription{Mode: Plain, Filter: filter}, nil
	}
	s := Subscription{Filter: rest}
	switch verb {
	case verbSync:
		s.Mode = Sync
	case verbTree:
		s.Mode = Tree
	case verbHist:
		s.Mode = Hist
	default:
		return Subscription{}, fmt.Errorf("%w: %q: %s is for PUBLISH only", ErrPrefix, filter, verb)
	}
	var codecSet bool
	for _, o := range opts {
		switch n, isInterval := strings.CutSuffix(o, "ms"); {
		case isCodec(o):
			if codecSet {
				return Subscription{}, fmt.Errorf("%w: %q: more than one codec", ErrPrefix, filter)
			}
			s.Codec, _ = ParseCodec(o)
			codecSet = true
		case isInterval:
			if s.Interval > 0 {
				return Subscription{}, fmt.Errorf("%w: %q: more than one interval", ErrPrefix, filter)
			}
			d, ok := parseMillis(n)
			if !ok {
				return Subscription{}, fmt.Errorf("%w: %q: option %q: %s", ErrPrefix, filter, o, intervalRule)
			}
			s.Interval = d
		default:
			return Subscription{}, fmt.Errorf("%w: %q: unknown option %q for %s (want json, cbor, msgpack or <N>ms)", ErrPrefix, filter, o, verb)
		}
	}
	if !hasRest {
		return Subscription{}, fmt.Errorf("%w: %q: missing filter after %s/", ErrPrefix, filter, verb)
	}
	if err := ValidateFilter(rest); err != nil {
		return Subscription{}, fmt.Errorf("%w: %q: %w", ErrPrefix, filter, err)
	}
	return s, nil
}

// ParsePublish parses a PUBLISH topic name. A topic whose first level is not
// a Mote verb is returned as PubPlain without further checks (the MQTT
// server validates plain topic names). $sync is reserved: the broker alone
// publishes on it, so nobody can inject a fake snapshot or delta (SPEC §5).
func ParsePublish(topic string) (Publish, error) {
	verb, opts, rest, hasRest, ok := splitVerb(topic)
	if !ok {
		return Publish{Op: PubPlain, Topic: topic}, nil
	}
	p := Publish{Topic: rest}
	switch verb {
	case verbTree:
		p.Op = PubTree
	case verbSet:
		p.Op = PubSet
	default:
		return Publish{}, fmt.Errorf("%w: %q: %s is for SUBSCRIBE only", ErrReserved, topic, verb)
	}
	var codecSet bool
	for _, o := range opts {
		switch {
		case p.Op == PubTree && isCodec(o):
			if codecSet {
				return Publish{}, fmt.Errorf("%w: %q: more than one codec", ErrPrefix, topic)
			}
			p.Codec, _ = ParseCodec(o)
			codecSet = true
		case p.Op == PubTree && o == "replace":
			if p.Replace {
				return Publish{}, fmt.Errorf("%w: %q: replace given twice", ErrPrefix, topic)
			}
			p.Replace = true
		case p.Op == PubSet:
			return Publish{}, fmt.Errorf("%w: %q: $set takes no options", ErrPrefix, topic)
		default:
			return Publish{}, fmt.Errorf("%w: %q: unknown option %q for %s (want json, cbor, msgpack or replace)", ErrPrefix, topic, o, verb)
		}
	}
	if !hasRest {
		return Publish{}, fmt.Errorf("%w: %q: missing topic after %s/", ErrPrefix, topic, verb)
	}
	if err := ValidateFilter(rest); err != nil {
		return Publish{}, fmt.Errorf("%w: %q: %w", ErrPrefix, topic, err)
	}
	return p, nil
}

// ValidateFilter checks an MQTT topic filter: not empty, valid UTF-8 without
// NUL, at most MaxTopicLen bytes, '+' alone in its level and '#' alone in
// the last level.
func ValidateFilter(f string) error {
	if err := validateString(f); err != nil {
		return err
	}
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case '+':
			// [MQTT-4.7.1-3] the single-level wildcard occupies an entire level.
			if (i > 0 && f[i-1] != '/') || (i+1 < len(f) && f[i+1] != '/') {
				return fmt.Errorf("%w: %q: '+' must fill a whole level", ErrFilter, f)
			}
		case '#':
			// [MQTT-4.7.1-2] the multi-level wildcard is the last character, alone in its level.
			if i+1 != len(f) || (i > 0 && f[i-1] != '/') {
				return fmt.Errorf("%w: %q: '#' must be the whole last level", ErrFilter, f)
			}
		}
	}
	return nil
}

// ValidateTopic checks an MQTT topic name: a valid string with no wildcard
// [MQTT-3.3.2-2].
func ValidateTopic(t string) error {
	if err := validateString(t); err != nil {
		return err
	}
	if HasWildcard(t) {
		return fmt.Errorf("%w: %q: wildcard in a topic name", ErrFilter, t)
	}
	return nil
}

func validateString(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty", ErrFilter) // [MQTT-4.7.3-1]
	case len(s) > MaxTopicLen:
		return fmt.Errorf("%w: %d bytes, more than %d", ErrFilter, len(s), MaxTopicLen)
	}
	// ASCII without NUL, as topics mostly are, in one pass over the bytes
	// (two calls, utf8.ValidString and strings.IndexByte, cost a plain
	// publish more than the check: bench/README.md, branch h-fast).
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == 0 || c >= utf8.RuneSelf {
			return validRest(s[i:])
		}
	}
	return nil
}

// validRest is validateString's check of UTF-8 and NUL from the first
// byte that is not ASCII or is NUL.
func validRest(s string) error {
	switch {
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: not valid UTF-8", ErrFilter) // [MQTT-1.5.3-1]
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%w: contains NUL", ErrFilter) // [MQTT-1.5.3-2]
	}
	return nil
}

// HasWildcard reports whether a filter has a '+' or '#' level (whether f
// holds either byte: in UTF-8, valid or not, they are never part of
// another character). A loop over the bytes, not strings.ContainsAny,
// which looks each rune up in the set: 30–50 ns a topic, on every publish.
func HasWildcard(f string) bool {
	for i := 0; i < len(f); i++ {
		if f[i] == '+' || f[i] == '#' {
			return true
		}
	}
	return false
}

// ErrPrefixf is an ErrPrefix with a formatted detail.
func ErrPrefixf(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrPrefix}, a...)...)
}

// ErrReservedf is an ErrReserved with a formatted detail.
func ErrReservedf(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrReserved}, a...)...)
}

// Match reports whether an MQTT filter matches a topic name, '$' rule
// included: '+' and '#' at the first level do not match topics starting
// with '$' [MQTT-4.7.2-1].
func Match(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		if !fmore || !tmore {
			return fmore == tmore || (fmore && frest == "#") // "a/#" matches "a"
		}
		filter, topic = frest, trest
	}
}

// Covers reports whether filter f matches every topic that s matches: s is
// a topic (then Covers is Match) or a filter ("a/#" covers "a/+/b"; "a/+"
// does not cover "a/#"). With Match, it is the one place wildcards are
// understood; the tries of the tree core are indexes of the same rules.
func Covers(f, s string) bool {
	if !HasWildcard(s) {
		return Match(f, s)
	}
	fl, sl := strings.Split(f, "/"), strings.Split(s, "/")
	for i, l := range fl {
		if l == "#" {
			return !(i == 0 && strings.HasPrefix(s, "$"))
		}
		if i >= len(sl) {
			return false
		}
		switch {
		case l == "+":
			if sl[i] == "#" || (i == 0 && strings.HasPrefix(sl[i], "$")) {
				return false
			}
		case l != sl[i]:
			return false
		}
	}
	return len(fl) == len(sl)
}
