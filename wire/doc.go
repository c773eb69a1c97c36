// Package wire is the Mote extension's surface on MQTT packets: the topic
// prefix grammar of SPEC §2 and §4 ($sync, $tree, $set and their options),
// the MQTT 5 user properties that say the same, the typing of row values
// (SPEC §1), and the JSON, CBOR and MessagePack tree codecs (SPEC §11) in
// both directions.
//
// Everything here is a pure function or a value with no goroutines, locks or
// I/O; the package knows nothing of sessions or sockets.
//
// # Decoding
//
// [CheckJSON] validates JSON text (RFC 8259) in one iterative pass whose
// memory is bounded by the depth limit, never by the text's nesting.
// [TypePlain] types a plain payload with it (SPEC §1); JSON nested deeper
// than the depth limit is typed as a string.
//
// [Decoder.Decode] reads a tree payload into a [Node], in one pass over the
// payload in any codec (its own JSON, CBOR and MessagePack readers: no
// reflection, and no recursion beyond the depth limit). All enforce a
// size, a nesting-depth and optionally a node limit and reject duplicate
// keys, non-string keys, invalid UTF-8, CBOR tags, MessagePack extension
// types, NaN and infinities with an error that names the path (an RFC 6901
// JSON pointer) where decoding failed.
// Work and memory grow in proportion to the payload: a decoded Node costs
// about 72 bytes, which [Limits].MaxNodes can bound.
//
// # Encoding
//
// [Encoder] writes a tree, key by key, in any codec into one buffer, so a
// tree is encoded once and the bytes shared by every subscriber that wants
// the same filter in the same codec.
//
// # Caveats
//
// A CBOR byte string or MessagePack binary becomes a [Bytes] value and stays
// bytes in CBOR and MessagePack output; JSON has no byte strings, so JSON
// output carries it as a base64 string (standard alphabet, padded). The same applies to a byte string nested
// inside an array or object that ends up as one row's value, which is stored
// as JSON text. MessagePack integers below -2^63 do not exist: a JSON or
// CBOR integer from -2^64 to -2^63-1 becomes a MessagePack float64.
package wire
