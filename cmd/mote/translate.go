package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/wire"
)

// translateRule is one entry of the config file's translate: list (SPEC
// §11), as written: its values stay YAML nodes until translators() types
// them, so that "ON", true and 1 keep their YAML types.
type translateRule struct {
	From   string
	To     string
	TwoWay bool
	Values *yaml.Node
	Line   int
}

// UnmarshalYAML reads a rule, refusing unknown keys as the rest of the
// config file does.
func (r *translateRule) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a translator is a mapping {from, to, values, two_way}", n.Line)
	}
	r.Line = n.Line
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		var err error
		switch k.Value {
		case "from":
			err = v.Decode(&r.From)
		case "to":
			err = v.Decode(&r.To)
		case "two_way":
			err = v.Decode(&r.TwoWay)
		case "values":
			r.Values = v
		default:
			return fmt.Errorf("line %d: translate: unknown key %q (want from, to, values, two_way)", k.Line, k.Value)
		}
		if err != nil {
			return fmt.Errorf("translate: %s: %w", k.Value, err)
		}
	}
	return nil
}

// translators validates the config file's translate: list and builds
// its rule set (nil when there is none). An error names every rule at
// fault, with its line.
func (c config) translators() (*translate.Set, error) {
	if len(c.Translate) == 0 {
		return nil, nil
	}
	rules := make([]translate.Rule, len(c.Translate))
	var errs []error
	for i, r := range c.Translate {
		rules[i] = translate.Rule{From: r.From, To: r.To, TwoWay: r.TwoWay, Line: r.Line}
		pairs, err := yamlPairs(r.Values)
		if err != nil {
			errs = append(errs, fmt.Errorf("translate[%d] (line %d, from %q to %q): values: %w", i, r.Line, r.From, r.To, err))
			continue
		}
		rules[i].Values = pairs
	}
	set, err := translate.New(rules)
	if err := errors.Join(append(errs, err)...); err != nil {
		return nil, err
	}
	return set, nil
}

// yamlPairs reads a value map: each key and value typed by YAML (SPEC §1
// typing: a string, a boolean, a number).
func yamlPairs(n *yaml.Node) ([]translate.Pair, error) {
	if n == nil || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil, nil
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping of values, e.g. {\"ON\": true, \"OFF\": false}", n.Line)
	}
	out := make([]translate.Pair, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, err := yamlValue(n.Content[i])
		if err != nil {
			return nil, err
		}
		v, err := yamlValue(n.Content[i+1])
		if err != nil {
			return nil, err
		}
		out = append(out, translate.Pair{From: k, To: v})
	}
	return out, nil
}

// yamlValue types one YAML scalar as a row value: a string as text, a
// boolean or a number as its JSON text, null as no value (which
// translate.New refuses, naming the rule).
func yamlValue(n *yaml.Node) (wire.Value, error) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind != yaml.ScalarNode {
		return wire.Value{}, fmt.Errorf("line %d: a value must be a string, number or boolean, not a %s", n.Line, kindName(n.Kind))
	}
	switch n.ShortTag() {
	case "!!null":
		return wire.Value{}, nil
	case "!!bool":
		var b bool
		if err := n.Decode(&b); err != nil {
			return wire.Value{}, fmt.Errorf("line %d: %w", n.Line, err)
		}
		return wire.Value{Kind: wire.JSON, Data: strconv.FormatBool(b)}, nil
	case "!!int":
		var i int64
		if err := n.Decode(&i); err == nil {
			return wire.Value{Kind: wire.JSON, Data: strconv.FormatInt(i, 10)}, nil
		}
		fallthrough // beyond int64: as a float
	case "!!float":
		var f float64
		if err := n.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return wire.Value{}, fmt.Errorf("line %d: %q is not a number JSON can hold", n.Line, n.Value)
		}
		return wire.Value{Kind: wire.JSON, Data: strconv.FormatFloat(f, 'g', -1, 64)}, nil
	case "!!str", "!!timestamp":
		return wire.Value{Kind: wire.String, Data: n.Value}, nil
	}
	return wire.Value{}, fmt.Errorf("line %d: %s %q: a value must be a string, number or boolean", n.Line, n.ShortTag(), n.Value)
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	}
	return "YAML node"
}

// errInvalid is a configuration `mote translate check` refused: exit 1.
var errInvalid = errors.New("invalid configuration")

// runTranslate is `mote translate check FILE`: it validates a config
// file's translators (and the rest of what a reload reads) offline.
// Exit 0 and a summary when it is valid; 1 and every problem, each
// naming its rule and line, when not; 2 for a bad command line.
func runTranslate(args []string, stdout, stderr io.Writer) error {
	const use = "usage: mote translate check FILE\n\nvalidates the translate: rules (SPEC §11) and the rest of the YAML config FILE offline: exit 0 if the broker would load it, 1 if not\n"
	if len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprint(stdout, use)
		return nil
	}
	if len(args) != 2 || args[0] != "check" {
		fmt.Fprint(stderr, use)
		return errUsage
	}
	path := args[1]
	cfg, err := loadConfig(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return errInvalid
	}
	s, err := readSettings(cfg, path, reloadFlags{tls: cfg.Listeners.TLS != "" || cfg.Listeners.WSS != ""})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return errInvalid
	}
	fmt.Fprintf(stdout, "%s: OK, %s\n", path, count(s.reload.Translators.Len(), "translator"))
	for _, line := range s.reload.Translators.Describe() {
		fmt.Fprintln(stdout, line)
	}
	return nil
}
