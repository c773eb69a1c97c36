package js

import _ "embed" // the JavaScript files, for servers that hand them to browsers

// MoteJS is mote.js, the ES module, as served to browsers (the web view
// serves this one copy).
//
//go:embed mote.js
var MoteJS string

// MQTTJS is MQTT.js 5.16.0's browser ES module bundle (mqtt.esm.js, MIT
// licensed: MQTTJS-LICENSE.md), which mote.js runs on; vendored, so a page
// served by the broker needs no npm registry and no CDN.
//
//go:embed mqtt.esm.js
var MQTTJS string
