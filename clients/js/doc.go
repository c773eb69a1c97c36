// Package js holds Mote's JavaScript client for webapps, mote.js: an ES
// module on MQTT.js that keeps live local copies of $sync trees and
// publishes trees. This Go package embeds it, with the MQTT.js bundle it
// runs on (MoteJS, MQTTJS: the broker's web view serves them), and carries
// its test, which runs mote.js with MQTT.js in headless Chromium against a
// real broker.
package js
