// Package cluster makes several Mote brokers one (SPEC §12) on NATS
// JetStream: an embedded NATS server node per broker (Node), one
// replicated stream of row batches whose sequence is the cluster's
// revision (Log, Follow), and each node's copy of the rows behind
// retain.RowStore (Store). docs/cluster.md is the design.
//
// # Concurrency
//
// A Node owns its NATS server: Close shuts it down and waits for it. A Log
// is safe for concurrent Appends; Follow runs on its caller's goroutine
// until its context ends, and calls fn there, in sequence order. Store is
// the bbolt store's, owned by the retainer that commits to it.
//
// # Caveats
//
// A batch is one NATS message: it can be at most the server's max payload
// (Node sets 8 MiB). The log keeps every batch unless LogOptions limit it;
// a node whose revision fell below the log's first sequence cannot catch
// up by replay (ErrBehind).
package cluster
