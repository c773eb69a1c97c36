// Package cluster makes several Mote brokers one (SPEC §12) on NATS
// JetStream: an embedded NATS server node per broker (Node), one
// replicated stream of row batches whose sequence is the cluster's
// revision (Log, Follow), and each node's copy of the rows behind
// retain.RowStore (Store). docs/cluster.md is the design.
//
// # Concurrency
//
// A Node owns its NATS server: Close shuts it down and waits for it. A Log
// is safe for concurrent Appends; Follow (and Mirror) runs on its caller's
// goroutine until its context ends, and calls fn there, in sequence order:
// the caller owns it and waits for it to return. Store has one committer
// (the retainer, or Mirror); its revision (Next) is an atomic. Events calls
// its receiver on the NATS connection's delivery goroutine, which the
// connection owns.
//
// # Caveats
//
// A batch is one NATS message: it can be at most the server's max payload
// (Node sets 8 MiB). The log keeps every batch unless LogOptions limit it;
// a node whose revision fell below the log's first sequence cannot catch
// up by replay (ErrBehind). An Append that timed out (ErrUnreplicated) has
// an unknown outcome: refused to its publisher, it may still be in the
// log once a quorum is back. A cluster of one node has no ClusterListen:
// with one, JetStream waits for peers.
package cluster
