// Package interop holds no code: its test (interop_test.go) runs the Eclipse
// Paho MQTT interoperability suite, vendored unchanged in paho/, against the
// mote broker, one Python test at a time against a fresh broker each, and
// fails when fewer tests pass than the floors it is given.
package interop
