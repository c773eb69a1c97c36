// Package web is Mote's web view (SPEC §10, GET /): one page for people
// that shows the live tree of a filter as a collapsible table, with each
// row's value and time of last change, rows flashing when they change,
// sparklines where the broker keeps history, the error reports of the
// user's own clients and the broker's figures.
//
// There is no build step: index.html, app.js and style.css (static/) are
// served as they are, embedded in the binary, with mote.js (and its codecs,
// codecs.js, cbor-x.esm.js and msgpack.esm.js) and MQTT.js
// from package clients/js (one copy of each). The page speaks MQTT over
// WebSocket to the broker with the user's MQTT username and password, on
// its own origin: Config.MQTT (Broker.WSHandler) is served at /mqtt, so
// the page needs no cross-origin WebSocket and the broker's origin check
// passes for it. The broker's rules (password file, ACLs per row, limits)
// apply to the page as to any MQTT client; the files themselves are
// public.
//
// # Concurrency
//
// Handler's answers are built once, when it is made, and only read
// afterwards: it is safe for concurrent use and holds no other state.
// Which of the two pages it serves at / (asking for a login first or not)
// is Config.Login's answer for each request, so the page follows the
// broker's access rules of the moment (a reload that adds or drops the
// password file).
package web
