package translate

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// ErrRule is a rule set New refused; the error names every rule at fault.
var ErrRule = errors.New("translate: bad rule")

// MaxRules bounds a rule set (the overlap checks compare every pair).
const MaxRules = 4096

// maxProblems bounds the problems New lists: a set of MaxRules rules may
// hold millions of overlapping pairs.
const maxProblems = 100

// Rule is one translator of the configuration's translate: list.
type Rule struct {
	From   string // an MQTT filter
	To     string // an MQTT filter with the same wildcards, in order
	Values []Pair // from's value → to's value; a value not listed passes unchanged
	TwoWay bool   // also translate publishes to To back to From, through the inverted map
	Line   int    // where the rule was read (for messages); 0 if unknown
}

// Pair maps one typed value to another.
type Pair struct{ From, To wire.Value }

// name is how messages name rule i.
func (r Rule) name(i int) string {
	line := ""
	if r.Line > 0 {
		line = fmt.Sprintf("line %d, ", r.Line)
	}
	return fmt.Sprintf("translate[%d] (%sfrom %q to %q)", i, line, r.From, r.To)
}

// Set is a validated rule set and its index. It is immutable and safe for
// concurrent use.
type Set struct {
	rules []Rule
	dirs  []*direction
	root  node
}

// direction is one way a rule translates: From→To, or To→From.
type direction struct {
	rule     int
	inverse  bool // To→From of a two-way rule
	src, dst []string
	values   map[string]wire.Value // by valueKey
}

// node is a level of the index of source filters.
type node struct {
	lit  map[string]*node
	plus *node
	hash *direction // the filter ends with # here
	end  *direction // the filter ends here
}

// New validates rules and builds their index; nil or empty rules make an
// empty set (which matches nothing). An error wraps ErrRule and lists
// every problem, each naming its rule.
func New(rules []Rule) (*Set, error) {
	if len(rules) > MaxRules {
		return nil, fmt.Errorf("%w: %d translators, at most %d", ErrRule, len(rules), MaxRules)
	}
	s := &Set{rules: append([]Rule(nil), rules...)}
	var errs []error
	full := false // maxProblems are listed: look no further
	note := func(err error) {
		if len(errs) < maxProblems {
			errs = append(errs, err)
			return
		}
		full = true
	}
	bad := func(i int, format string, args ...any) {
		note(fmt.Errorf("%w: %s: %s", ErrRule, rules[i].name(i), fmt.Sprintf(format, args...)))
	}
	for i, r := range rules {
		ok := true
		for _, f := range []struct{ key, filter string }{{"from", r.From}, {"to", r.To}} {
			if err := checkFilter(f.filter); err != nil {
				bad(i, "%s: %v", f.key, err)
				ok = false
			}
		}
		if ok && wildcards(r.From) != wildcards(r.To) {
			bad(i, "from's wildcards (%q) and to's (%q) differ: each + and # of from fills the one in the same position of to", wildcards(r.From), wildcards(r.To))
			ok = false
		}
		fwd, back, err := valueMaps(r)
		if err != nil {
			bad(i, "values: %v", err)
			ok = false
		}
		if !ok {
			continue
		}
		s.dirs = append(s.dirs, &direction{rule: i, src: strings.Split(r.From, "/"), dst: strings.Split(r.To, "/"), values: fwd})
		if r.TwoWay {
			s.dirs = append(s.dirs, &direction{rule: i, inverse: true, src: strings.Split(r.To, "/"), dst: strings.Split(r.From, "/"), values: back})
		}
	}
	// Overlaps (among the rules that passed so far, so that every problem is listed): at most one problem reported per pair of rules.
	seen := map[[2]int]bool{}
	pair := func(a, b *direction, format string, args ...any) {
		k := [2]int{min(a.rule, b.rule), max(a.rule, b.rule)}
		if seen[k] {
			return
		}
		seen[k] = true
		if a.rule == b.rule {
			bad(a.rule, format, args...)
			return
		}
		note(fmt.Errorf("%w: %s and %s: %s", ErrRule, rules[k[0]].name(k[0]), rules[k[1]].name(k[1]), fmt.Sprintf(format, args...)))
	}
	// Each direction asks an index of all sources which could match a
	// topic its source matches (ambiguous): no comparison of every pair.
	// A target may match any source, its own too: a translated publish is
	// never translated again (SPEC §11), so chains and cycles stop after
	// one step.
	var idx vnode
	for i, d := range s.dirs {
		idx.insert(d.src, i)
	}
	var hits []int
	for i, a := range s.dirs {
		if full {
			break
		}
		hits = idx.collect(a.src, true, hits[:0])
		slices.Sort(hits)
		for _, j := range hits {
			if j <= i {
				continue // each pair once; a source overlaps itself
			}
			b := s.dirs[j]
			w, _ := Overlap(a.src, b.src)
			if a.rule == b.rule {
				pair(a, b, "two_way, and from and to could match the same topic (%s): which way would it go?", w)
			} else {
				pair(a, b, "ambiguous: %q and %q could match the same topic (%s)", join(a.src), join(b.src), w)
			}
		}
	}
	if full {
		errs = append(errs, fmt.Errorf("%w: more problems, not listed (%d at most are): fix these first", ErrRule, maxProblems))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, d := range s.dirs {
		s.root.insert(d.src, d)
	}
	return s, nil
}

// checkFilter refuses what no translator may name.
func checkFilter(f string) error {
	if err := wire.ValidateFilter(f); err != nil {
		return err
	}
	if tree.Reserved(f) {
		return fmt.Errorf("%q is a broker topic ($SYS, $mote, $hist or a Mote verb)", f)
	}
	if first, _, _ := strings.Cut(f, "/"); first == "#" {
		return fmt.Errorf("%q: a translator needs a level before #", f)
	}
	return nil
}

// wildcards is f's wildcards in order ("+#").
func wildcards(f string) string {
	var b strings.Builder
	for l := range strings.SplitSeq(f, "/") {
		if l == "+" || l == "#" {
			b.WriteString(l)
		}
	}
	return b.String()
}

func join(levels []string) string { return strings.Join(levels, "/") }

// valueMaps checks a rule's values and makes its maps, by valueKey: back
// is the inverted map, for a two-way rule.
func valueMaps(r Rule) (fwd, back map[string]wire.Value, err error) {
	if len(r.Values) == 0 {
		return nil, nil, nil
	}
	fwd = make(map[string]wire.Value, len(r.Values))
	if r.TwoWay {
		back = make(map[string]wire.Value, len(r.Values))
	}
	for _, p := range r.Values {
		kf, err := pairKey(p.From)
		if err != nil {
			return nil, nil, fmt.Errorf("key %s: %w", show(p.From), err)
		}
		kt, err := pairKey(p.To)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %s: %w", show(p.From), show(p.To), err)
		}
		if _, dup := fwd[kf]; dup {
			return nil, nil, fmt.Errorf("key %s appears twice (as the same typed value)", show(p.From))
		}
		fwd[kf] = p.To
		if back != nil {
			if prev, dup := back[kt]; dup {
				return nil, nil, fmt.Errorf("two_way, and %s and %s both map to %s: the way back would be ambiguous", show(prev), show(p.From), show(p.To))
			}
			back[kt] = p.From
		}
	}
	return fwd, back, nil
}

// pairKey is a value map entry's key, or why it cannot be one.
func pairKey(v wire.Value) (string, error) {
	switch v.Kind {
	case wire.None:
		return "", errors.New("null is a deletion, and deletions stay deletions: a value must be a string, number or boolean")
	case wire.String, wire.JSON:
		if k, ok := valueKey(v); ok {
			return k, nil
		}
	}
	return "", errors.New("a value must be a string, number or boolean")
}

// show is a value as a message quotes it.
func show(v wire.Value) string {
	if v.Kind == wire.String {
		return strconv.Quote(v.Data)
	}
	return v.Data
}

// valueKey is v as a value map compares it (SPEC §1 typing): a string
// by its text, whether a plain string or a JSON one; a boolean; a number
// by its float64 value. Anything else has no key.
func valueKey(v wire.Value) (string, bool) {
	switch v.Kind {
	case wire.String:
		return "s" + v.Data, true
	case wire.JSON:
		d := strings.TrimSpace(v.Data)
		if d == "" {
			return "", false
		}
		switch d[0] {
		case '"':
			var s string
			if json.Unmarshal([]byte(d), &s) != nil {
				return "", false
			}
			return "s" + s, true
		case 't', 'f':
			if d == "true" || d == "false" {
				return "b" + d, true
			}
			return "", false
		case '[', '{', 'n':
			return "", false
		}
		f, err := strconv.ParseFloat(d, 64)
		if err != nil {
			return "", false
		}
		return "n" + strconv.FormatFloat(f, 'g', -1, 64), true
	}
	return "", false
}

// insert adds a source filter's levels to the index.
func (n *node) insert(levels []string, d *direction) {
	for _, l := range levels {
		switch l {
		case "#":
			n.hash = d
			return
		case "+":
			if n.plus == nil {
				n.plus = &node{}
			}
			n = n.plus
		default:
			if n.lit == nil {
				n.lit = map[string]*node{}
			}
			c := n.lit[l]
			if c == nil {
				c = &node{}
				n.lit[l] = c
			}
			n = c
		}
	}
	n.end = d
}

// find is the direction whose source matches topic (its levels from
// this node on), or nil. Sources never overlap, so the first found is
// the only one. It allocates nothing.
func (n *node) find(topic string, first bool) *direction {
	level, rest, more := strings.Cut(topic, "/")
	dollar := first && strings.HasPrefix(level, "$") // [MQTT-4.7.2-1]
	if n.hash != nil && !dollar {
		return n.hash
	}
	if c := n.lit[level]; c != nil {
		if d := c.next(rest, more); d != nil {
			return d
		}
	}
	if n.plus != nil && !dollar {
		return n.plus.next(rest, more)
	}
	return nil
}

func (n *node) next(rest string, more bool) *direction {
	if !more {
		if n.end != nil {
			return n.end
		}
		return n.hash // "a/#" matches "a"
	}
	return n.find(rest, false)
}

// Len is the number of rules.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.rules)
}

// Rules returns a copy of the rules.
func (s *Set) Rules() []Rule {
	if s == nil {
		return nil
	}
	return append([]Rule(nil), s.rules...)
}

// Match reports whether some rule translates topic. It allocates nothing:
// it is what every publish asks.
func (s *Set) Match(topic string) bool {
	return s != nil && len(s.dirs) > 0 && s.root.find(topic, true) != nil
}

// Translate translates a publish to topic with value v: the topic it is
// also published to, and its value there. ok is false when no rule
// matches. A value of kind None (a deletion) stays one.
func (s *Set) Translate(topic string, v wire.Value) (to string, out wire.Value, ok bool) {
	if s == nil || len(s.dirs) == 0 {
		return "", v, false
	}
	d := s.root.find(topic, true)
	if d == nil {
		return "", v, false
	}
	return d.fill(topic), d.mapValue(v), true // "" when to is "/#" and # matched nothing: the caller's topic check refuses it
}

// FillsFirst reports whether the rule that translates topic fills the
// first level of its target from a wildcard of its source (to "+/x" or
// "#"), rather than naming it: the broker refuses a filled first level
// that starts with $ (a client's "a/$b" made "$b/…"), not one the
// configuration wrote.
func (s *Set) FillsFirst(topic string) bool {
	if s == nil || len(s.dirs) == 0 {
		return false
	}
	d := s.root.find(topic, true)
	return d != nil && (d.dst[0] == "+" || d.dst[0] == "#")
}

// Rule names the rule that translates topic (for logs), or "".
func (s *Set) Rule(topic string) string {
	if s == nil {
		return ""
	}
	if d := s.root.find(topic, true); d != nil {
		return s.rules[d.rule].name(d.rule)
	}
	return ""
}

// fill is the destination topic of a topic the source matched: the
// destination's wildcards take the levels the source's matched, in order.
func (d *direction) fill(topic string) string {
	tl := strings.Split(topic, "/")
	var caps []string
	rest, hasRest := "", false
	for i, l := range d.src {
		switch l {
		case "+":
			caps = append(caps, tl[i])
		case "#":
			if i < len(tl) {
				rest, hasRest = strings.Join(tl[i:], "/"), true
			}
		}
	}
	out := make([]string, 0, len(d.dst))
	for _, l := range d.dst {
		switch l {
		case "+":
			out = append(out, caps[0])
			caps = caps[1:]
		case "#":
			if hasRest {
				out = append(out, rest)
			}
		default:
			out = append(out, l)
		}
	}
	return strings.Join(out, "/")
}

// mapValue maps v through the direction's value map.
func (d *direction) mapValue(v wire.Value) wire.Value {
	if v.Kind == wire.None || len(d.values) == 0 {
		return v
	}
	if k, ok := valueKey(v); ok {
		if m, ok := d.values[k]; ok {
			return m
		}
	}
	return v
}

// Describe lists the set's directions, one line each ("zigbee2mqtt/+/state
// → home/+/on (2 values)"), for `mote translate check`.
func (s *Set) Describe() []string {
	if s == nil {
		return nil
	}
	out := make([]string, 0, len(s.dirs))
	for _, d := range s.dirs {
		line := fmt.Sprintf("%s → %s", join(d.src), join(d.dst))
		if n := len(d.values); n > 0 {
			line += fmt.Sprintf(" (%d value", n)
			if n > 1 {
				line += "s"
			}
			line += ")"
		}
		if d.inverse {
			line += " [two_way]"
		}
		out = append(out, "  "+s.rules[d.rule].name(d.rule)+": "+line)
	}
	return out
}

// Overlap reports whether two filters, as level lists, could match the
// same topic, and one such topic (for messages).
func Overlap(a, b []string) (string, bool) {
	if !overlaps(a, b) {
		return "", false
	}
	var out []string
	for i := 0; ; i++ {
		ai, bi := i < len(a), i < len(b)
		switch {
		case ai && a[i] == "#":
			return witness(out, b[min(i, len(b)):]), true
		case bi && b[i] == "#":
			return witness(out, a[min(i, len(a)):]), true
		case !ai || !bi:
			return witness(out, nil), true
		case a[i] == "+" && b[i] == "+":
			out = append(out, "x")
		case a[i] == "+":
			out = append(out, b[i])
		default:
			out = append(out, a[i])
		}
	}
}

// overlaps is Overlap's answer without the example, allocating nothing
// (New compares every pair of sources and targets).
func overlaps(a, b []string) bool {
	for i := 0; ; i++ {
		ai, bi := i < len(a), i < len(b)
		switch {
		case ai && a[i] == "#":
			return !(i == 0 && bi && dollarLevel(b[i]))
		case bi && b[i] == "#":
			return !(i == 0 && ai && dollarLevel(a[i]))
		case !ai || !bi:
			return !ai && !bi
		case a[i] == "+" && b[i] == "+":
		case a[i] == "+":
			if i == 0 && dollarLevel(b[i]) {
				return false
			}
		case b[i] == "+":
			if i == 0 && dollarLevel(a[i]) {
				return false
			}
		case a[i] != b[i]:
			return false
		}
	}
}

func dollarLevel(l string) bool { return strings.HasPrefix(l, "$") }

// witness is a topic: the levels so far and the rest of a filter, its
// wildcards filled.
func witness(prefix, rest []string) string {
	out := append([]string(nil), prefix...)
	for _, l := range rest {
		if l == "#" {
			break
		}
		if l == "+" {
			l = "x"
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		return "x"
	}
	return join(out)
}

// vnode is a level of the index New checks overlaps with: several
// sources may end at one node (those it refuses).
type vnode struct {
	lit  map[string]*vnode
	plus *vnode
	hash []int // directions whose source ends with # here
	end  []int // directions whose source ends here
}

func (n *vnode) insert(levels []string, d int) {
	for _, l := range levels {
		switch l {
		case "#":
			n.hash = append(n.hash, d)
			return
		case "+":
			if n.plus == nil {
				n.plus = &vnode{}
			}
			n = n.plus
		default:
			if n.lit == nil {
				n.lit = map[string]*vnode{}
			}
			c := n.lit[l]
			if c == nil {
				c = &vnode{}
				n.lit[l] = c
			}
			n = c
		}
	}
	n.end = append(n.end, d)
}

// collect appends the directions whose source could match a topic that
// the filter f (its levels from this node on) matches. Each index node
// is visited at most once, so each direction is appended at most once.
func (n *vnode) collect(f []string, first bool, out []int) []int {
	if len(f) == 0 {
		return append(append(out, n.end...), n.hash...) // "a/#" matches "a"
	}
	l := f[0]
	dollar := first && dollarLevel(l) // [MQTT-4.7.2-1]
	if !dollar {
		out = append(out, n.hash...)
	}
	switch l {
	case "#":
		return n.below(out, first)
	case "+":
		for k, c := range n.lit {
			if !(first && dollarLevel(k)) {
				out = c.collect(f[1:], false, out)
			}
		}
	default:
		if c := n.lit[l]; c != nil {
			out = c.collect(f[1:], false, out)
		}
		if dollar {
			return out
		}
	}
	if n.plus != nil {
		out = n.plus.collect(f[1:], false, out)
	}
	return out
}

// below appends every source that ends at this node or under it, but
// this node's own # sources (collect has them).
func (n *vnode) below(out []int, first bool) []int {
	out = append(out, n.end...)
	for k, c := range n.lit {
		if !(first && dollarLevel(k)) {
			out = c.below(append(out, c.hash...), false)
		}
	}
	if n.plus != nil {
		out = n.plus.below(append(out, n.plus.hash...), false)
	}
	return out
}
