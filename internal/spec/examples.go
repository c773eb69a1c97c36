// Package spec holds the examples of SPEC.md as tables, shared by the tests
// of tree, wire and broker so that every layer is held to the same words.
package spec

// Snapshot is one SPEC §3 example: retained rows, a filter, and the tree a
// $sync of that filter answers with (as JSON).
type Snapshot struct {
	Name   string
	Rows   map[string]string // topic → payload, as published plain and retained
	Filter string            // F of $sync/F
	Want   string            // the snapshot, JSON
}

var lights = map[string]string{
	"light/bedroom/is_on":      "1",
	"light/bedroom/brightness": "55",
	"light/livingroom/is_on":   "0",
}

// Snapshots are the tree shapes of SPEC §1 and §3.
var Snapshots = []Snapshot{
	{"plus leaf", lights, "light/+/is_on", `{"bedroom":1,"livingroom":0}`},
	{"plus plus", lights, "light/+/+", `{"bedroom":{"is_on":1,"brightness":55},"livingroom":{"is_on":0}}`},
	{"hash subtree", lights, "light/#", `{"bedroom":{"is_on":1,"brightness":55},"livingroom":{"is_on":0}}`},
	{"no wildcard", lights, "light/bedroom/is_on", `1`},
	{"no wildcard missing", lights, "light/attic/is_on", `null`},
	{"nothing matches", lights, "door/+", `{}`},
	{"own value and children", map[string]string{"a/b": "1", "a/b/c": "2"}, "a/#", `{"b":{"/":1,"c":2}}`},
	{"hash matches parent", map[string]string{"a": "0", "a/b": "1"}, "a/#", `{"/":0,"b":1}`},
	{"object under hash", map[string]string{"zigbee2mqtt/lamp": `{"state":"ON"}`}, "zigbee2mqtt/#", `{"lamp":{"/":{"state":"ON"}}}`},
	{"object under plus", map[string]string{"zigbee2mqtt/lamp": `{"state":"ON"}`}, "zigbee2mqtt/+", `{"lamp":{"state":"ON"}}`},
	{"empty level", map[string]string{"a//b": "1", "a/x/b": "2"}, "a/+/b", `{"":1,"x":2}`},
	{"hash at root skips $", map[string]string{"a": "1", "$SYS/x": "2", "b/c": "3"}, "#", `{"a":1,"b":{"c":3}}`},
	{"plus at root skips $", map[string]string{"$foo/x": "1", "bar/x": "2"}, "+/x", `{"bar":2}`},
	{"dollar filter", map[string]string{"$foo/x": "1", "bar/x": "2"}, "$foo/#", `{"x":1}`},
	{"plus then hash", map[string]string{"dev/a": "0", "dev/a/t": "1", "dev/b/t/u": "2"}, "dev/+/#", `{"a":{"/":0,"t":1},"b":{"t":{"u":2}}}`},
	{"typed values", map[string]string{
		"v/str": "ON", "v/num": "21.5", "v/bool": "true", "v/json": `"quoted"`,
		"v/arr": "[1,2]", "v/null": "null", "v/bytes": "\xff\x00",
	}, "v/+", `{"str":"ON","num":21.5,"bool":true,"json":"quoted","arr":[1,2],"null":"null","bytes":"/wA="}`},
}

// Publish is one SPEC §4 example: retained rows before, a PUBLISH, and every
// retained row after (payloads as plain subscribers receive them), or the
// error that refuses it whole.
type Publish struct {
	Name    string
	Before  map[string]string
	Topic   string // the PUBLISH topic, with its prefix
	Payload string // JSON
	After   map[string]string
	Err     string // substring of the error; After is then Before
}

// Publishes are the tree publishes of SPEC §4 and §5.
var Publishes = []Publish{
	{Name: "device tree", Topic: "$tree/light/bedroom", Payload: `{"is_on":1,"brightness":55}`,
		After: map[string]string{"light/bedroom/is_on": "1", "light/bedroom/brightness": "55"}},
	{Name: "plus consumes a level", Topic: "$tree/light/+/is_on", Payload: `{"a":1}`,
		After: map[string]string{"light/a/is_on": "1"}},
	{Name: "plus leaf is any value", Topic: "$tree/z/+", Payload: `{"lamp":{"state":"ON"},"n":[1,2]}`,
		After: map[string]string{"z/lamp": `{"state":"ON"}`, "z/n": "[1,2]"}},
	{Name: "string leaf without quotes", Topic: "$tree/room", Payload: `{"name":"kitchen","on":true,"t":-1.5e3}`,
		After: map[string]string{"room/name": "kitchen", "room/on": "true", "room/t": "-1.5e3"}},
	{Name: "slash key is own value", Topic: "$tree/a", Payload: `{"b":{"/":1,"c":2}}`,
		After: map[string]string{"a/b": "1", "a/b/c": "2"}},
	{Name: "slash key with object", Topic: "$tree/z", Payload: `{"lamp":{"/":{"state":"ON"}}}`,
		After: map[string]string{"z/lamp": `{"state":"ON"}`}},
	{Name: "hash at root", Topic: "$tree/#", Payload: `{"a":{"b":1},"c":2}`,
		After: map[string]string{"a/b": "1", "c": "2"}},
	{Name: "plus then hash", Topic: "$tree/dev/+/#", Payload: `{"d1":{"x":1,"y":{"z":2}}}`,
		After: map[string]string{"dev/d1/x": "1", "dev/d1/y/z": "2"}},
	{Name: "bare value", Topic: "$tree/a/b", Payload: `7`, After: map[string]string{"a/b": "7"}},
	{Name: "null deletes", Before: map[string]string{"light/bedroom/is_on": "1", "light/bedroom/x": "2"},
		Topic: "$tree/light/bedroom", Payload: `{"is_on":null}`, After: map[string]string{"light/bedroom/x": "2"}},
	{Name: "replace", Before: map[string]string{"light/bedroom/is_on": "0", "light/bedroom/color": "red", "light/bedroom/x/y": "1", "light/hall/is_on": "1"},
		Topic: "$tree.replace/light/bedroom", Payload: `{"is_on":1}`,
		After: map[string]string{"light/bedroom/is_on": "1", "light/hall/is_on": "1"}},
	{Name: "replace with plus", Before: map[string]string{"light/b/is_on": "1", "light/b/brightness": "3"},
		Topic: "$tree.replace/light/+/is_on", Payload: `{"a":1}`,
		After: map[string]string{"light/a/is_on": "1", "light/b/brightness": "3"}},
	{Name: "replace clears T itself", Before: map[string]string{"rp": "0", "rp/a": "1", "rq": "2"},
		Topic: "$tree.replace/rp", Payload: `{"b":2}`, After: map[string]string{"rp/b": "2", "rq": "2"}},
	{Name: "replace keeps T by its slash key", Before: map[string]string{"rp": "0", "rp/a": "1"},
		Topic: "$tree.replace/rp", Payload: `{"/":5}`, After: map[string]string{"rp": "5"}},
	{Name: "null at the root deletes T", Before: map[string]string{"a/b": "1", "a/b/c": "2"},
		Topic: "$tree/a/b", Payload: `null`, After: map[string]string{"a/b/c": "2"}},
	{Name: "set existing rows", Before: map[string]string{"light/a/is_on": "1", "light/b/is_on": "1", "light/b/x": "1"},
		Topic: "$set/light/+/is_on", Payload: `0`,
		After: map[string]string{"light/a/is_on": "0", "light/b/is_on": "0", "light/b/x": "1"}},
	{Name: "set creates nothing", Topic: "$set/light/+/is_on", Payload: `0`, After: map[string]string{}},
	{Name: "set empty forgets", Before: map[string]string{"light/bedroom/is_on": "1", "light/bedroom/a/b": "2", "light/hall": "3"},
		Topic: "$set/light/bedroom/#", Payload: ``, After: map[string]string{"light/hall": "3"}},
	{Name: "plus wants object", Topic: "$tree/light/+/+", Payload: `{"a":1}`, Err: "at /a: "},
	{Name: "plus wants object at root", Topic: "$tree/light/+", Payload: `5`, Err: "at (root): "},
	{Name: "invalid json", Topic: "$tree/a", Payload: `{"a":`, Err: "not valid JSON"},
	{Name: "empty payload is no tree", Before: map[string]string{"a/b": "1"}, Topic: "$tree/a/b", Payload: ``, Err: "not valid JSON"},
	{Name: "key with slash", Topic: "$tree/a", Payload: `{"ok":1,"b/c":1}`, Err: "at /b~1c: "},
	{Name: "key with wildcard", Topic: "$tree/a", Payload: `{"x":{"+":1}}`, Err: "at /x/+: "},
	{Name: "root value of hash", Topic: "$tree/#", Payload: `{"/":1}`, Err: "empty topic"},
	{Name: "empty key as the whole topic", Topic: "$tree/+", Payload: `{"":{}}`, Err: "empty topic"},
	{Name: "reserved row", Topic: "$tree/#", Payload: `{"$SYS":{"x":1}}`, Err: "reserved"},
	{Name: "duplicate key", Topic: "$tree/a", Payload: `{"b":1,"b":2}`, Err: "duplicate key"},
}
