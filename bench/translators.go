package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Translate names Mote run with 100 two-way translators (SPEC §11) that
// match none of the scenarios' topics (`mote bench -translators`): its
// ratios against "mote" are what rules a publish does not use cost it.
const Translate = "mote-translate"

// MoteTranslate is `mote broker` from bin with a config file of 100
// translators, zigbee2mqtt/devN/+/state ⇄ home/devN/+/on.
func MoteTranslate(bin string) *Broker {
	b := MoteAs(Translate, bin)
	b.Cluster = false // its translators would not change what a cluster costs
	args := b.args
	b.args = func(l listeners, dir string) ([]string, error) {
		a, err := args(l, dir)
		if err != nil {
			return nil, err
		}
		var conf strings.Builder
		conf.WriteString("translate:\n")
		for i := range 100 {
			fmt.Fprintf(&conf, "  - {from: \"zigbee2mqtt/dev%d/+/state\", to: \"home/dev%d/+/on\", values: {\"ON\": true, \"OFF\": false}, two_way: true}\n", i, i)
		}
		path := filepath.Join(dir, "translate.yaml")
		if err := os.WriteFile(path, []byte(conf.String()), 0o600); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		return append(a, "--config", path), nil
	}
	return b
}

// Memory names Mote run with nothing persisted (`mote broker --data off`,
// `mote bench -memory`), as Mosquitto runs here (persistence false): its
// ratios against "mote" are what persisting retained rows to bbolt costs.
const Memory = "mote-memory"

// BaseMemory names the -baseline build run with nothing persisted, when
// both -baseline and -memory are given: what a change did to mote-memory.
const BaseMemory = "mote-base-memory"

// MoteMemory is `mote broker --data off` from bin.
func MoteMemory(bin string) *Broker { return MoteMemoryAs(Memory, bin) }

// MoteMemoryAs is `mote broker --data off` from bin under another name.
func MoteMemoryAs(name, bin string) *Broker {
	b := MoteAs(name, bin)
	b.Cluster = false // a cluster node needs its data directory
	args := b.args
	b.args = func(l listeners, dir string) ([]string, error) {
		a, err := args(l, dir)
		if err != nil {
			return nil, err
		}
		for i := range a {
			if a[i] == "--data" && i+1 < len(a) {
				a[i+1] = "off"
			}
		}
		return a, nil
	}
	return b
}
