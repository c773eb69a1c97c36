// Package translate keeps two topic hierarchies in step (SPEC §11): a
// rule maps topics matching its From filter to its To filter, wildcard by
// wildcard in order, and their values through a value map; with TwoWay,
// To maps back to From through the inverted map.
//
// The package is pure: no MQTT, no broker. New validates a rule set whole
// and builds its index, a trie of the source filters, so that a topic no
// rule matches costs a walk of the few trie levels it shares with them
// (usually one map lookup) whatever the number of rules. A Set is
// immutable once made and safe for concurrent use; a reload makes a new
// one.
//
// # What New refuses
//
// Every problem is reported, up to 100 (then New says more are left
// out), each naming its rule ("translate[2] (from "a/+" to "b/+")"):
//   - a From or To that is not a valid MQTT filter, is a broker topic
//     ($SYS, $mote, $hist or a Mote verb), or whose wildcards do not
//     correspond to the other's in number and kind, in order;
//   - a value map with null, an object or an array, or two keys that are
//     the same typed value; with TwoWay, two keys mapped to the same value
//     (the inverted map would be ambiguous);
//   - overlap: two directions (a rule's From→To, and To→From with TwoWay)
//     whose sources could match the same topic: which rule applies would
//     be ambiguous. This includes a two-way rule whose From and To could
//     match the same topic (which way would it go?).
//
// A target may match a source, another rule's or its own: chains ("a/+"
// → "b/+" and "b/+" → "c/+"), cycles ("a/+" → "b/+" and "b/+" → "a/+")
// and self-overlapping rules ("x/#" → "x/y/#") are accepted. A translated
// publish is never translated again (SPEC §11; the broker hands it to its
// loop past the door that translates), so each publish is translated at
// most once and nothing loops: a publish to a/x reaches b/x, not c/x. Two
// one-way rules may share a target.
//
// # Values
//
// A value map's keys are compared with the row's typed value (SPEC §1):
// the key "ON" matches the string ON (a plain payload ON, a JSON "ON", a
// tree leaf "ON"); true matches the boolean; 1 and 1.0 match the number
// 1. Objects, arrays and byte strings never match and pass unchanged, as
// does any value not in the map. A deletion stays a deletion.
package translate
