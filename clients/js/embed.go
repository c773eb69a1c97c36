package js

import _ "embed" // the JavaScript files, for servers that hand them to browsers

// MoteJS is mote.js, the ES module, as served to browsers (the web view
// serves this one copy). It imports codecs.js from beside it.
//
//go:embed mote.js
var MoteJS string

// CodecsJS is codecs.js, mote.js's tree codecs (JSON, CBOR, MessagePack),
// which loads CBORXJS or MsgPackJS from beside it when a codec first needs
// one.
//
//go:embed codecs.js
var CodecsJS string

// MQTTJS is MQTT.js 5.16.0's browser ES module bundle (mqtt.esm.js, MIT
// licensed: MQTTJS-LICENSE.md), which mote.js runs on; vendored, so a page
// served by the broker needs no npm registry and no CDN.
//
//go:embed mqtt.esm.js
var MQTTJS string

// CBORXJS is cbor-x 1.6.9 as one browser ES module (cbor-x.esm.js, MIT
// licensed: CBORX-LICENSE.md; scripts/vendor-js.sh makes it), served as
// cbor-x.esm.js beside mote.js for its CBOR codec.
//
//go:embed cbor-x.esm.js
var CBORXJS string

// MsgPackJS is @msgpack/msgpack 3.1.3 as one browser ES module
// (msgpack.esm.js, ISC licensed: MSGPACK-LICENSE.md; scripts/vendor-js.sh
// makes it), served as msgpack.esm.js beside mote.js for its MessagePack
// codec.
//
//go:embed msgpack.esm.js
var MsgPackJS string
