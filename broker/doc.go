// Package broker is Mote's MQTT broker: mochi-mqtt as the protocol engine,
// and the glue that routes the Mote extension (SPEC.md) through the tree
// core. It is the only package that imports mochi.
//
// # Data path
//
// Plain subscriptions and non-retained plain publishes stay on mochi's own
// path. Everything that changes or reads rows goes through one message
// loop goroutine, which owns the tree.Tree:
//
//   - $tree/… and $set/… publishes are decoded and exploded on the
//     publisher's connection goroutine (hook OnPacketRead), then handed to
//     the loop as an op; mochi acknowledges them without delivering them.
//   - Plain retained publishes are handed to the loop too, which stores the
//     row and then gives the packet back to mochi (retain and deliver), so
//     the loop is the only writer of both retained views and they cannot
//     disagree.
//   - The loop drains whatever is waiting into one batch, applies it, gives
//     the rows of tree publishes to mochi for plain subscribers, and queues
//     each folded delta for its subscribers.
//   - $sync/… and $tree/… subscriptions are handed to the loop just before
//     mochi writes the SUBACK (hook OnSubscribed); the connection's writer
//     is held until the SUBACK is out (hook OnPacketProcessed), so the
//     snapshot follows it and no publish made after it is missed.
//
// # Concurrency
//
// Each connection with tree subscriptions has a bounded queue and a writer
// goroutine that writes tree messages with real MQTT semantics: packet ids
// and in-flight entries from mochi's exported client state, so QoS 1 and 2
// deliveries are acknowledged, and resent when a persistent session comes
// back. The loop never waits on a client: a full queue drops (counted, and
// visible as a gap in mote-seq) or disconnects, per Options.SlowClient.
//
// # Caveats
//
// Retained rows never expire (SPEC §1): the MQTT 5 Message Expiry Interval
// of a retained publish is not applied to the row. Topic aliases cannot
// name a Mote topic.
package broker
