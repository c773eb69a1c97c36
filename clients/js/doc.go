// Package js holds Mote's JavaScript client for webapps, mote.js: an ES
// module on MQTT.js that keeps live local copies of $sync trees and
// publishes trees, in JSON, CBOR or MessagePack (codecs.js, on the
// vendored cbor-x and @msgpack/msgpack bundles, which it loads on first
// use). This Go package embeds the files (MoteJS, CodecsJS, MQTTJS,
// CBORXJS, MsgPackJS: the broker's web view serves them) and carries their
// tests, which run mote.js with MQTT.js in headless Chromium against a
// real broker, and a decode benchmark of the three codecs
// (TestBrowserDecodeBench, with MOTE_JS_BENCH=1).
package js
