// Package broker is Mote's MQTT broker: mochi-mqtt parses MQTT and keeps
// sessions, and the broker routes everything else through one door, one
// message loop and one delivery path. It is the only package that imports
// mochi (with httpapi, for packet types), and it imports the copy carried
// in the tree, internal/mochi (mochi v2.7.9 with Mote's changes; see "What
// replaces mochi").
//
// # The door
//
// Every publish enters through Broker.publish on behalf of a Principal
// (user and client id): MQTT clients (the hooks in hooks.go), wills when
// they fire, the broker's own error reports and $SYS counters, Sessions
// (front ends that are not MQTT: HTTP, translators, cluster peers, tests)
// and Broker.Publish. There, and only there, a publish is checked: Mote's,
// $SYS and $mote prefixes, topic length and levels, the ACL (access.go; per
// row for trees, SPEC §6), and decoded into a tree.Op on the caller's
// goroutine. (A topic name's form, a UTF-8 string with no NUL and no
// wildcard, is checked there too, but for an MQTT PUBLISH's own topic,
// which mochi refused before the door with the protocol's DISCONNECT
// if it was not: Message.topicValid.) A plain event is then delivered at once; anything that
// changes rows goes to the message loop. A publish that matches a
// translator (SPEC §11, translate.go) is translated there too, and its
// translation handed in with it. Subscriptions enter through the
// MQTT hooks or Session.Subscribe; Broker.Tree reads a tree; Broker.Sync
// is a barrier.
//
// # The message loop
//
// One goroutine (loop.go) owns the tree core (tree.Tree: rows and tree
// subscriptions), every tree subscription's state (treeSub: mote-seq, the
// snapshot it awaits, the events held meanwhile, the delta it folds into)
// and the MQTT 5 properties of retained rows. It takes whatever waits in
// its inbox as one batch, applies it, delivers applied rows to plain
// subscribers, queues one delta per tree subscription, and hands the row
// changes to the retainer (which never makes it wait). Writers reach
// it with calls (onLoop) for what only it may read: a snapshot, a page of
// retained rows, a folded delta to encode.
//
// Strictly, the owner is whoever holds the loop's mutex (loopMu), which
// the loop holds while it runs a batch, taking the batch out of its inbox
// under it. An MQTT client's publish that finds the loop idle — the inbox
// empty and loopMu free — is run as a batch of one by the client's read
// goroutine under loopMu (runInline), exactly as the loop would have run
// it: this saves a tree publish the two goroutine wake-ups of the hop to
// the loop and back (issue 15). Order is kept: nothing queued before it
// can be waiting, and nothing queued after it runs before it ends. A busy
// loop gets publishes queued, in batches, as before; other front ends
// (wills, the door's API, cluster peers, $SYS) always queue. A panic in the
// loop's work ends the process wherever it runs: run inline, it is not
// left to the connection's recovery, which would go on from a half-applied
// batch (runInline, inlinePanicked).
//
// Delivery order (MQTT 4.6): one client's publishes reach each subscriber
// in the order the client sent them, though a plain event is delivered on
// the client's goroutine and what changes rows by the loop. Whatever the
// loop runs, it runs in order; a publisher waiting for its answer
// (pubMeta.done) gets it once the rows are delivered. An MQTT client
// counts its publishes queued to the loop and not yet delivered
// (mqttPublisher.queued): while there are any, its next plain event first
// waits for a barrier on the loop (afterQueued), so it comes after them;
// with none (a publish run inline, an idle loop) it goes at once.
//
// A QoS 1/2 publish that changes rows and is queued is acknowledged once
// handed in, before the loop applies it (publishers do not wait for the
// loop); the broker counts those not yet run (Broker.ackedAhead). Every
// read of rows but one goes through the loop's inbox behind them ($sync
// and $tree registration, Broker.Tree, $set); the one that did not, a
// plain SUBSCRIBE's retained replay, which starts from the revision
// applied when the subscription is filed, waits for a barrier on the loop
// before mochi files it while the count is not 0 (afterAcked, in
// OnSubscribe and Session.Subscribe). So a row acknowledged before a
// SUBSCRIBE came is in its replay, retained, as Mosquitto gives, never
// live after it (it was: TestRetainAckedThenRead). About maxAckedAhead
// (1,000) rows are acknowledged ahead at most (the check and the count
// are two steps: each client publishing at that moment may pass it by
// one); past it a publisher's ack waits for the loop, so acknowledged rows
// alone never make a SUBSCRIBE wait for a whole inbox (seconds behind a
// fast publisher: TestAckedAheadBounded). The barrier still waits for
// everything queued before it: while other work fills the inbox (QoS 0
// rows, tree events), one acknowledged row makes a SUBSCRIBE wait for all
// of that — about LoopBudget (100ms) of the loop's work (the inbox's
// bound: 64 rows' worth of publishes at least, whatever they cost).
//
// The inbox is bounded in the loop's time (requestQueue): the loop tells
// it what each batch's rows cost (the time of its other requests, calls
// such as a snapshot's encoding, left out), and a publisher waits once
// the publishes waiting would take about LoopBudget to run (LoopQueue,
// 100,000 requests, at most; 64 rows' worth at least, or LoopQueue if
// smaller). A publish weighs the rows it writes: a tree
// publish's are in its op; a $set's are known only once the loop matched
// its filter, so it weighs what the $sets before it wrote (the first, the
// whole limit). Counted one a request, 20 clients flooding $sets over
// 1,000 rows each held a probe's publish 0.7 to 2.4 s at the median
// (TestLoopSetFlood). Counted in requests alone, one
// publisher of retained QoS 0 rows to 260 away sessions subscribed to #
// queued 72,000 of them in seconds, ~100 s of the loop's work, behind
// which every other client's retained publish waited (TestLoopBudget).
// The publisher waiting is its connection not being read: TCP pushes
// back on it, as on a publisher waiting for a slow subscriber's room.
// The broker's own $SYS rows never wait (a few dozen a second): their
// ticker also sweeps arriving sessions and prunes held counts, and all of
// it stalled ~10 s behind a flood, a turn per row.
// Publishers that wait are let in in the order they came (waiters): woken
// all at once, a waiter lost the race for the inbox to a flooder that
// never had to wait, batch after batch (TestLoopLimitFair).
// The limit, from the batches before, lags behind a change of cost: while
// a batch runs (the loop's, or a publish run inline), what the loop took
// so far over the publishes it began bounds
// the inbox too, so costly publishes after cheap ones do not fill a limit
// measured on the cheap ones (TestLoopBudgetSwitch).
//
// A paced subscription ($sync.250ms/F, SPEC §2) holds the changes that
// come within its interval after its last message in its treeSub, counted
// against its connection's queue bound. The loop's pacer (pace.go) keeps
// the subscriptions holding changes in a heap by due time, with one timer
// for the whole broker: when it fires it only hands a flush to the loop
// (a call, as a writer's), which sends what is due as one delta each.
//
// No Local on a tree subscription (MQTT 5, [MQTT-3.8.3-3]; X2 of
// docs/spec-audit-x5.md): applyBatch gives each op its publisher's client
// id as its origin (tree.Op.Origin, Principal.origin; none for a
// translation, the HTTP API or the broker itself: a front end's name is no
// MQTT client's, though a client may choose it as its id), and a
// subscription with No Local has its client id as tree.Sub.Local. The
// tree leaves out of its delta every row whose newest change in the batch
// came from it, encoding privately only for such a subscription whose
// client changed a row of the batch (an empty Delta, Payload nil, when
// nothing is left: not queued, no mote-seq, but a fold or a hold still
// takes in the row's newest origin). Held changes and queued folds keep
// each row's newest origin and Fold leaves own rows out; a fold that
// leaves a queued delta nothing gives its mote-seq back (treeSub.folded).
// Snapshots, resumes and $hist answers are the store, own rows included.
//
// The loop also owns the store's revision (SPEC §8, in the tree core) and,
// without a store, the deletion markers (markLog); with one the retainer
// owns them on disk, and the loop reads them there for a resume, under the
// retainer's floor. A $hist answer (SPEC §9) is taken in two steps: the
// loop copies the current rows and hands the retainer a flush; the
// connection's writer waits for the flush and reads the history from disk.
// An HTTP history answer's estimate (AnswerSize) reads no stored value:
// the store keeps each row's count and bound of its history values
// (retain.HistSize), and the retainer adds those not committed yet.
//
// A $tree subscription of a session that outlives its connection (MQTT 5
// Session Expiry, 3.1.1 Clean Session 0) resumes with the session (X5,
// docs/spec-audit-x5.md). Each $tree subscription of an MQTT connection
// has a mark (treeMark): the mote-seq and mote-rev of the last message
// its client was written — noted by whoever holds the write role as the
// message goes out (sendTree, and tryDirect for a delta written by the
// loop), never for one queued or taken and lost with the connection (but
// one taken in flight and back that a takeover moved to the new client,
// which sends it again: takenBack.moved, asked of mochi, whose moveOut
// keeps the ids it moved, change 90 — "gone from the old map" is not
// "moved", clearTakenOverInflights deletes too). A part of a message in
// parts, not the last, notes its mote-seq alone (wrotePart): the next
// connection's resume goes on from it with every row since the last whole
// message, never the same mote-seq with other rows. The detach of a
// connection whose session stays hands its marks to awayTrees
// (keepTrees), by client id —
// unless a successor took them, it filed none (never filed), or a new
// session took its id over; a CONNECT resuming the session files its
// $tree subscriptions again through one call to the loop (resumeTrees),
// pushed under the id's takeover lock as the connection is filed, so the
// loop runs those of a chain of takeovers in the order of the chain; each
// takes its mark from awayTrees, or, in a takeover, from the old
// connection's subscription still filed (handed: its later detach keeps
// nothing). The mark is read once the subscription's writer reaches
// its first message, when the old connection's writer has exited (the new
// queue is held until then, conn.prev): its first message is one delta
// of the rows changed since the mark's revision (SPEC §8's resume: rows
// listed on the loop, deletion markers read on the writer, every change
// meanwhile held for it, awayFirst), with mote-resume 1 and mote-seq the
// mark's + 1; none if nothing it may read changed; a mote-seq skipped
// when the broker no longer knows every change since (the resume window,
// a Reload, no mark kept). dropConn detaches before its hand-off takes
// the connection off byID, so a CONNECT that finds none there comes after
// the detach kept the marks.
//
// # Clusters
//
// With Options.Cluster (cluster.go, SPEC §12, docs/cluster.md) the broker
// is one node of a cluster on NATS JetStream. The door and its checks are
// unchanged; what changes is where a retained write is applied. The loop
// plans it against its tree (tree.Plan: $set and .replace expanded, the
// ACL and limits checked) without applying it, and appends the rows of
// its waiting publishes as one batch to the cluster's log (cluster.Log,
// one batch in flight per node, so a $set sees its client's earlier
// writes); every node's follower reads the log in order and the loop
// applies each batch with tree.ApplyAt at the log's sequence (the
// revision of SPEC §8, the same on every node) and the origin's time. The
// node that wrote a batch knows it by its id and applies it with its
// publishers' state (answers, MQTT 5 properties, No Local, translations);
// a write the log did not take is refused 0x80, and so are those waiting
// behind it (bounded by Cluster.MaxWaiting and MaxWaitingBytes). Events (no retained row)
// and the broker's own $SYS rows are applied at once, without moving the
// revision; plain events and non-retained tree publishes cross to the
// other nodes on core NATS (cluster.Events) and enter theirs through the
// door as the system's. Start listens only once the node has applied
// every batch the log held when it started.
//
// # One delivery path
//
// Every message to a client — plain publishes, retained replays, snapshots,
// deltas, error reports — goes through its connection's queue (queue.go:
// typed items, bounded in bytes) and its one writer goroutine (writer.go),
// which runs only while there is something to write: a wake-up (an item
// queued, a release, a direct write's rest, the queue's close) starts it
// if none runs, and it stops once it has found nothing for a second, so
// an idle connection holds no writer (the queue's running flag, changed
// under its mutex, with the wake-up left under it too, so none is lost).
// The writer takes packet ids and in-flight slots from mochi's client
// state in one place (takeInflight), waits for in-flight room on mochi's ack hooks,
// skips what exceeds the client's Maximum Packet Size, and closes the
// connection when a write fails or passes its deadline. A snapshot or a
// retained replay is a token in the queue: the loop makes it when the
// writer reaches it, so a client holds one at a time; all clients
// together hold at most MaxSnapshotBytes of snapshots (snapbudget.go): a
// $sync SUBSCRIBE takes its snapshot's estimate before its SUBACK, or is
// refused with 0x97 (3.1.1: 0x80), and gives it back once the snapshot
// is written or the client goes; a resumed session's $sync subscription,
// with no SUBSCRIBE to refuse, has its writer wait for room before the
// snapshot is made (awaitSnapshotRoom), and meanwhile only small
// snapshots are granted, in the budget's reserve (Budget.hold). Subscriptions without a read check
// asking for the same filter and codec share one encoded snapshot while
// it is written and none of its rows changed (sharedSnapshot), counted
// once. A payload larger than the encode
// buffer (a snapshot, say) is written after it from its own bytes
// (mqttOut.tail), not copied into it. A replay holds no
// copy of the rows: the loop lists a filter's rows once (8 bytes a row)
// and every replay of that filter started while the store holds the same
// rows shares the list (replay.go); the writer reads a few hundred rows
// at a time off the loop as the client drains them, and encodes each
// publish straight from the store's payload into an encode buffer lent
// from a broker-wide pool from encode to flush (bufpool.go). Rows that
// change after the SUBSCRIBE are left to the live publishes queued behind
// the replay, so a row's values arrive in order. A delta waiting in
// the queue takes in the next ones of its subscription (folding), while
// an upper bound of its size still fits the client's Maximum Packet Size
// (deltaBound, from each folded delta's own payload and row count): past
// it the fold would be skipped whole. A fold, a paced hold and an
// awaiting snapshot's hold read the rows of the subscription's delta,
// listed by the tree once for all its receivers (tree.AppendChanges), not
// the batch's: a subscription that matched one row of a batch of
// thousands costs that row. A full
// queue makes a publisher wait, never the loop: publishers wait in line
// and get room in the order they came: as the writer takes items it
// queues the messages of those first in line that now fit, in order, and
// wakes each of them once (no herd, and no chain of wake-ups either: a
// waiter does not wait for the one ahead of it to run). A
// publish waits PublishWait in all (an MQTT client's counted from its
// first wait, so one that never waits reads no clock: pubClock), and
// longer only while the client is
// being written, up to 5 × PublishWait (its publisher's own connection
// is not read meanwhile), and never past its context (Broker.Publish); a
// wait that is over is refused at once, not queued: a subscriber that reads steadily slows its
// publishers to its pace and loses nothing. Each
// client may hold publishers back PublishWait in all, earning it back as
// it is written (a second per 64 messages or 64 KiB); one out of credit
// is stalled, every publisher waiting for it gives up at once and none
// waits until its credit is whole. The credit also runs out in wall
// time: a client whose queue has been full for PublishWait with nothing
// written to it is stalled for every publisher at once, whoever waited
// (queueWaits.fullAt). Spent only while someone waited, the credit of N
// clients that stopped reading together was spent one after another, a
// publisher's wait at each in turn: N × PublishWait in all (200
// subscribers with Receive Maximum 1 that never acknowledged held a QoS 0
// publish back up to 45 s; TestStalledTogether). Now they cost
// publishers about one PublishWait, however many. A write counts once it
// returns, and the kernel may hold one write longer than PublishWait
// while the client reads steadily (it takes a send buffer's worth, up to
// 4 MiB, at once, then waits until the client has read a third of it);
// so before a plain TCP client is stalled the queue looks at what its TCP
// stack acknowledged since it last looked (tcpi_bytes_acked), and bytes
// taken count as written (outQueue.takingLocked): a subscriber reading
// 256 KiB messages at 1.5 MB/s was stalled, losing 74–81% of them
// (TestSteadyBigReader). They move the wall-time clock on by the credit
// they earn, no more: a restart at any 1 KiB taken let clients that
// trickle together hold publishers a PublishWait each again (200 at
// 8 KiB/s held 200 QoS 1 publishes 32 s; TestTricklersTogether). What
// gets no room meets the slow-client policy.
//
// The writer is the path's owner, not always its goroutine: a QoS 0 plain
// message or delta for a plain TCP client whose writer is idle and whose
// queue is empty (not held, not closed) is written by the goroutine
// delivering it — the publisher's, or the loop — in one non-blocking write
// (direct.go), for at most a few subscribers of a message or deltas of a
// batch. It holds the connection's write role meanwhile, as the writer
// does from a take to the next empty one, so order is kept; what the
// socket does not take at once the writer writes, with its deadline, so
// a deliverer never waits on a client. That rest is the connection's
// (netConn), written before anything else written to it, so an ack mochi
// writes meanwhile never lands inside a cut packet.
// When a connection ends, the QoS 1/2 plain messages it did not write (still
// queued, or taken by the writer and not sent: its leftovers; what is left
// of its QoS 1/2 retained replays, which its writer reads as it exits, a
// bounded trip to the loop at a time, and makes into messages off the
// loop, in their places: handReplaysOn) go to its session if that
// outlives it, in order (conn.finish): the connection
// stays the session's route in byID until its writer has stopped and it
// has handed them on — to the session's mochi client, held in flight for
// its return, or, when a client takes the session over, ahead of that
// client's connection's queue, which waits for them (OnSessionEstablish
// tells the old connection before mochi moves the session, whose
// in-flight messages mochi copies; OnSessionEstablished adopts them).
// Messages published meanwhile, or waiting in line when the queue
// closed, join the leftovers, or (past their bound) wait for the
// hand-off and follow them. A message for a session whose client is
// coming back, from OnSessionEstablish (before mochi copies the old
// client's in-flight messages to it) until its connection is filed, waits
// for that connection (arriving.go) and goes ahead of its queue. Which
// mochi client holds a session has one ordering point, arriving's mutex:
// a message is put into a client's in-flight state, a connection filed,
// leftovers handed to a session that has no successor connection, and
// the client mochi moves a session to registered, only under it, so a
// message always reaches the session's holder of the moment (a newer
// client that took the session over without going through the old
// connection too), or is dropped and counted when the session ended or
// was replaced by a new one. mochi removes a session away (its expiry;
// endAway, dropSession) under the id's takeover lock, not this mutex: the
// removal first marks it ending here (arriving.end), after which nothing
// is held for it, and a session that ends with its connection has nothing
// held at all (holdOffline); held after the removal cleared the client's
// map, a message stayed on a client nobody holds, counted in flight for
// good. A message that would only be dropped there
// — QoS 0 to a session away, QoS 1/2 to one holding MaxInflight
// (offline_full) — is not made at all: deliverTo tells so without the
// mutex when no holder marked the session's id meanwhile and no client
// is arriving for it (arriving.settled), so a flood to many sessions away
// costs each one a few loads (and its read check at QoS 1/2), not a queue
// item, the packet and the mutex. It is told per shard of ids (256, by
// hash), not for the whole broker: clients connecting and leaving all the
// time (each one registers, files, hands on and counts under the mutex)
// turned it off for every session before. Exactness rests on one rule:
// every holder marks (arriving.mark) each id for which it changes what
// deliverTo reads without the mutex — the connection filed (adopt,
// handOn), by's entry (register, give, handOn, adopt, sweep: setBy,
// deleteBy) and what the session's mochi client holds in flight
// (holdOffline, dropHeldLocked through roomLocked, whose victims are
// other ids than the holder's) — before it changes it, and unlock stores
// the shard's count of by's entries before its version goes even. give
// and countLeft change nothing else deliverTo reads (dropped counts,
// offlineHeld's bytes, a conn's queue); rebind changes only an entry's
// client. What changes without the mutex (mochi filing a client, a client
// closing, an expiry) is ordered as before: a client coming back is
// registered, in by, before mochi moves the session to it. What deliverTo
// holds for sessions without a connection it gives under one hold of
// the mutex per 64 (holdBatch): each session has one message of a
// publish, so nothing is ordered differently.
//
// # Reload
//
// Broker.Reload (reload.go) swaps, all or nothing, what can change without
// a restart: the access rules (password file, ACL, anonymous access), the
// history rules, the translators and the TLS configuration. The access rules are one
// immutable value behind an atomic pointer (accessRef): every decision
// loads it once, with no lock on the hot path, so publishes, subscriptions,
// wills as they fire, plain deliveries and retained replays follow the new
// rules from their next decision on. Tree subscriptions hold their reader's
// read check (tree.Sub.Allow, made from the rules when the loop registers
// them); the swap runs on the loop, between two batches, and gives every
// one its new check at once, so snapshots, deltas (folded ones included),
// resumes and $hist answers are made wholly under the old rules or wholly
// under the new. Nobody is disconnected: credentials are checked at
// CONNECT, and a connected client's rights are its username's under the
// rules of the moment. Listeners are not rebound (a broker started
// loopback-only stays so; one bound beyond loopback refuses a reload that
// would need loopback). The retainer takes the history rules
// (retain.Retainer.SetHistory) for the changes handed in after them; TLS
// and WSS handshakes take the current configuration (serverTLS), so
// connections already up keep their certificate.
//
// # The original dialect
//
// Options.Original adds a TCP listener (Options.OriginalWS a WebSocket one,
// at /mote/, as mote-native connects) for the original Mote broker's
// clients (SPEC §7, original.go). Its connections are marked twice: the
// netConn, which reads mote-native's CONNECT (protocol "mote", level 0)
// as MQTT 3.1.1, and the Principal (mqttPrincipal, from mochi's listener
// id), which the hooks and the door consult to rewrite the dialect into
// native forms: "/F" and "F" subscriptions into property-form $sync and
// $tree subscriptions in wire.CodecOriginal (string leaves, on topic F),
// trailing-"/" retained publishes into tree publishes, wildcard retained
// publishes into $set (prepareOriginal). From there on it is the ordinary
// path: one door, one ACL check, the same limits. No state of its own.
//
// # What replaces mochi, and why
//
//   - Delivery (mochi's publishToSubscribers, its client outbound queue and
//     retained replay): mochi drops what does not fit a fixed queue, keeps
//     no byte bound, replays from its own retained index (which copies
//     itself every second to expire rows) and cannot send trees. Mochi's
//     client state keeps sessions, subscriptions and in-flight messages.
//   - Encoding a plain QoS 0 PUBLISH written directly (direct.go,
//     sendPlain0): the fixed header, topic and payload go straight into
//     the connection's out buffer, for a message with nothing of send's
//     to do (no MQTT 5 properties or subscription identifier, no expiry,
//     no outgoing topic alias, under the client's Maximum Packet Size):
//     send with mochi's PublishEncode was 558 of a plain message's 6,200
//     instructions from the read to the write, sendPlain0 is 311, the
//     816-byte packets.Packet no longer built (bench/README.md, branch
//     h-fast). A tree message (snapshot, delta) at QoS 0 to an MQTT
//     3.1.1 client has none of that either (no properties: treePacket
//     gives them to MQTT 5 only; retain 0), so sendTree0 encodes it so
//     too, written directly or by the writer: a `$tree` delta's encoding
//     and send 967 instructions to 296 (branch h-tlat). Every other
//     publish is encoded by mochi as before; the
//     delivery path is the same (tryDirect, then the queue). Mochi's read
//     path for a PUBLISH is shortened inside mochi
//     (changes 91-93: one hook's chains called directly, the packet's
//     header kept for OnPacketProcessed instead of a whole copy, since
//     the broker's hook declares it reads no more, and validUTF8 in one
//     pass; changes 95-97: processPublish asks IsValidFilter only of a
//     topic starting with '$', PublishValidate having refused a wildcard
//     (change 98: in one pass, isValidDollarTopic, branch h-tlat2),
//     and not the OnACLCheck chain, which the broker's hook declares lets
//     every publish through, the door checking it: PublishesChecked;
//     refreshDeadline tests the read deadline by the monotonic clock); no
//     second door: every publish still goes through OnPublish, and the
//     door no longer checks again the form of an MQTT PUBLISH's topic
//     that mochi checked (bench/README.md, branch h-lat3).
//   - Matching plain subscriptions (subindex.go): mochi's TopicsIndex
//     builds maps on every match; the broker's own index, a copy-on-write
//     trie read without locks or allocations, mirrors what mochi files
//     (OnSubscribed, OnUnsubscribed, OnClientExpired, fileSub, unfileSub),
//     and delivery reads only it. A filter mochi granted that the broker
//     refuses after all (refuseGranted) changes nothing, as one mochi
//     refuses: the subscription it would have replaced is filed again
//     whole in mochi's session and index (refuseFiled), and the loop's
//     tree subscription is left as it was. Mochi still writes its own index, which
//     nothing of the broker reads; mochi forgets an expired session
//     without unsubscribing it, so OnClientExpired does.
//   - Retained messages: rows live once, in the tree core; mochi's retained
//     index is kept empty (OnRetainMessage).
//   - Wills (OnWill): mochi publishes a will before it looks at the Will
//     Delay Interval, without an ACL check, past Mote's prefixes. A
//     delayed will waits until its delay passes or its session ends
//     (wills.due). A CONNECT taking the id over makes the old
//     connection's will due itself, under the id's takeover lock
//     (wills.takeover; will.taken decides between it and that
//     connection's end, whichever is first): the old reader may run
//     late. One ending the session (Clean Start 1, another user) takes
//     the waiting will and publishes it after the lock
//     (OnSessionEstablished, or OnDisconnect when its CONNACK fails); one
//     resuming it sets it aside before its CONNACK (wills.resuming)
//     and cancels it once the CONNACK is written, or lets it wait
//     again if it is not (wills.settle; mochi's Client.Answered): its
//     OnSessionEstablished may come after a later CONNECT, or never
//     (a later CONNECT ending the session marks it ended; one resuming
//     it holds it too, will.holders: whichever is answered cancels it,
//     and it waits again only if every holder failed). One will waits
//     per client id (wills.delayLocked: a newer CONNECT to the session
//     sets the session's will [MQTT-3.1.3-9], so the older is dropped;
//     another user's is published), and Close publishes those waiting,
//     set aside or ended: stopping ends every session. The takeover
//     takes the will before mochi cuts the old connection off: a normal
//     DISCONNECT processed meanwhile (OnPacketProcessed) revokes it
//     (wills.revoke; will.sent and will.revoked under wills.mu), unless
//     it was published.
//   - Authentication (OnConnect): a refused will, keep-alive or client id
//     needs its own CONNACK reason code, decided before mochi answers;
//     there is no enhanced authentication (an Authentication Method is
//     refused 0x8C, Authentication Data without one 0x82, an AUTH
//     packet 0x82: OnAuthPacket).
//     Whose session a client id is, is decided there too (the fast path)
//     and again under the id's takeover lock (takeoverCheck, mochi's
//     Options.TakeoverCheck), about the client the id has then: another
//     user's live client is never cut off nor its session copied, and
//     another user's offline session is refused, or dropped for an empty
//     one (TakeoverFresh), also when that user's client took the id
//     between the two checks (mochi change 24); the dropped session's
//     delayed will is published then, and what mochi held in flight for
//     it is counted as session_ended.
//   - Offline sessions (away.go): mochi keeps a session whose client is
//     away until it expires (a 3.1.1 session, never), with no bound on
//     how many: a client connecting with ever new client ids left
//     sessions, and their subscriptions in mochi's index, without end.
//     Options.MaxSessions bounds them: the sessions away are kept per
//     user in the order they left, the users in a heap by how many they
//     have away (awaySessions, O(log users) a disconnect), filed and
//     taken out under the id's takeover lock (mochi change 61:
//     WhileFiled, RemoveSessionWith; OnSessionEstablish,
//     OnClientExpired), and a disconnect past the bound ends, as if it
//     had expired (endAway), the one away longest of the user with the
//     most away (a tie: the user whose oldest left first; a user is the
//     username checked against the password file, the anonymous clients
//     one, every client one without a password file), so one user
//     leaving ever new ids ends its own sessions, not other users'. Its
//     subscriptions, held messages (counted session_ended) and delayed
//     will (published once the lock is let go, through wills.publish) go
//     together, so a CONNECT resuming it gets all of it or a clean
//     session. What the sessions away hold in mochi's in-flight state is
//     bounded too (held.go, Options.MaxOfflineBytes): what a connection
//     left sent and not acknowledged is counted when it ends, with the
//     session's filing (countLeft), as what is held for it later is
//     (holdOffline), per session and per user, the users in a heap by
//     bytes; past the bound the session holding the most of the user
//     holding the most has its held messages dropped (counted
//     offline_full), under arriving's mutex, where they were held
//     (roomLocked), so a user leaving ever new ids, or a few sessions
//     holding much, loses its own (mochi change 63 counts them in place
//     and drops them with their map's room; change 64 keeps a dropped
//     PUBREL's packet id in use, and the broker sends the PUBREL when the
//     session resumes: releaseDropped). A held message mochi deletes
//     when its Message Expiry Interval passes leaves the count
//     (OnQosDropped), and what is held for a session counts for the user
//     it was filed away with, whatever a Reload makes of users since
//     (heldUserOf).
//   - $SYS: mochi publishes it straight into its index and queues; the
//     broker publishes the same counters and its own through the door.
//   - User Properties and log lines (mochi change 68): mochi kept every
//     User Property of a packet (63 MiB of empty ones held 1.8 GB and took
//     22 s to PUBACK), echoed a SUBSCRIBE's or UNSUBSCRIBE's in its
//     answer, and logged a refused packet whole, payload included (four
//     log bytes a payload byte). Options.MaxUserProperties and
//     MaxUserPropertyBytes bound them per packet: past either none is
//     kept and the packet is refused with 0x97 (PUBACK, PUBREC, SUBACK,
//     CONNACK; any other packet DISCONNECT); nothing is echoed; a log line
//     names a packet (mqtt.LogPacket) and cuts what a client sent
//     (mqtt.LogString, truncate), and the slog bridge caps every value of
//     mochi's lines at 1 KiB (slogValueMax).
//   - Log lines of refused packets (mochi change 69): mochi wrote a Warn
//     line for every packet refused for its User Properties, and the
//     broker one for every refused request (Broker.refuse), so a client
//     looping refused packets filled the disk through the log (48.8 MB in
//     8 s). Each such line now asks a logBudget (loglimit.go; mochi through
//     Options.LogRefusal): Options.RefusalLog lines per connection and for
//     the broker in each interval, the first of each reason code kept,
//     the rest counted in one suppressed=K line and in
//     mote_log_lines_suppressed_total.
//   - Packet ids (packetids.go): mochi keeps a client's own packet ids and
//     the broker's deliveries' in one in-flight map, so a client's QoS 1/2
//     PUBLISH, PUBREL, SUBSCRIBE or UNSUBSCRIBE with the id of an
//     unacknowledged delivery deleted the delivery, completed it or was
//     refused 0x91; the read hooks keep the two spaces apart [MQTT-2.2.1-2].
//     A client's QoS 2 publishes waiting for PUBREL are session state a
//     takeover hands on from the connection filed for the session; a
//     connection takes them and is filed in one step under the id's
//     takeover lock (OnSessionEstablished), or a CONNECT coming between
//     the two lost them, and the client's resend was delivered again.
//     mochi cloned the old client's in-flight map at a takeover and
//     cleared it later: a PUBREC the old reader set between was lost
//     (the resend delivered again), a delivery its writer took back was
//     counted out twice. It now moves the map in one step (mochi change
//     74), and keeps the ids it moved on the old client (change 90: the
//     writer asks whether a delivery it takes back went with them,
//     Inflight.TakeBack; the old client takes none of them again); the
//     old reader refuses what would change the map after
//     (idSpaces.begin), the takeover waits only for a packet changing it
//     that is not blocked on subscribers (busyLocked, bounded: a packet
//     holding it past relWait, 500 ms, has the old connection's writes
//     cut, so a refusal's ack behind a client that stopped reading holds
//     the CONNACK no longer; a hook holds it up to lateWait, 5 s; woken,
//     it asks again, as a displacing QoS 2 PUBLISH that left OnPublish
//     meanwhile is busy again with its PUBREC in the map), a QoS 2
//     PUBLISH blocked in OnPublish is handed on (lateRec) and sets its
//     PUBREC once the map moved, and a resend whose PUBREC moved with
//     the session is refused there (idSpaces.publishing).
//   - Listeners (listeners.go): connections are wrapped before mochi reads
//     them (CONNECT deadline and size cap, DISCONNECT 0x95, write deadlines,
//     panic recovery, WebSocket origin check). A connection with
//     Ethernet-sized segments gets TCP_NOTSENT_LOWAT (notsent_linux.go):
//     what its client has not read waits in its queue, not unsent in the
//     kernel, where an ack or a PINGRESP mochi writes would land behind
//     it (issue 15: a 2 MB replay ahead of a slow client's PINGRESP).
//     A plain TCP connection lends mochi's reader its read buffer only
//     while it holds unread input (netConn.ReadLent, mochi change 62):
//     mochi gave every client a bufio.Reader for its life, 0.6 KiB of an
//     idle connection's 7 (bench/README.md, "Idle connections").
//     Its reader sleeps once its client has sent nothing for ReaderSleep
//     (sleep_linux.go, mochi change 75): mochi's read goroutine for the
//     life of the connection (and its 2–4 KiB stack, about a third of
//     an idle connection's cost) is replaced, between packets, by the descriptor
//     waiting in one epoll set of the broker's; input, the keep-alive
//     deadline, a Close or a takeover starts a new goroutine on mochi's
//     same serve function. A fresh connection sleeps from its CONNACK
//     until it sends. Linux, plain TCP; TLS and WebSocket readers wait
//     as before. A reader asleep holds no mochi connReader either (mochi
//     change 84: made again when it is served), and the sleepers are
//     filed in a slice by descriptor (fdTable), not a map.
//   - Mochi's connection handling, in the copy in internal/mochi (its
//     README lists every change, each marked "mote:" in the code), because
//     an idle connection cost 26 KiB, 4× a Go broker's floor, and the
//     module could not be changed from outside: no WriteLoop goroutine per
//     client unless something is queued to mochi's outbound channel (Mote
//     never does in normal operation); the CONNECT is handled on the
//     accepting goroutine (Server.EstablishSession, in guard) and the read
//     loop runs on a fresh goroutine (Broker.serve) that parks in a shallow
//     frame, so its stack stays at 2–4 KiB instead of the 16 KiB the
//     CONNECT path grows; a malformed MQTT 5 SUBSCRIBE no longer panics the
//     decoder, a packet that does not decode gets DISCONNECT with its
//     reason code (MQTT 5), and a CONNECT's Will QoS is checked as MQTT
//     names it (3 is Malformed: CONNACK 0x81, a 3.1.1 connection closed
//     without one); properties are checked as MQTT 5 counts them (one of
//     each but User Property, no Subscription Identifier or Receive
//     Maximum of 0, none past its length: 0x82 or 0x81), as are a shared
//     No Local and a wildcard Response Topic (0x82) and an alias-only
//     PUBLISH of an alias never set (0x82); a Topic Alias is set by
//     every PUBLISH that carries one with a topic, refused or not (change
//     70; OnPacketRead sets it for the publishes it takes aside), so an
//     alias-only PUBLISH is refused as its topic was; an MQTT 5 Variable Byte
//     Integer in more bytes than it needs is Malformed (0x81; a 3.1.1
//     Remaining Length so encoded is read as its value, as Mosquitto
//     reads it), an MQTT 5 CONNECT that does not decode gets CONNACK
//     with the code, and an UNSUBSCRIBE of a filter MQTT does not allow
//     gets 0x8F for it (3.1.1: closed); a packet's body is read as it
//     arrives, not made at its declared size first; a publish to a topic
//     mochi will not take ($SYS…) is no longer dropped without an ack; a
//     CONNECT filed but not yet answered that another takes over is only
//     closed, never sent DISCONNECT before its CONNACK; a CONNECT that
//     fails after mochi filed its client (its
//     CONNACK cannot be written) ends the session with OnDisconnect (and
//     the will: the broker keeps a CONNECT's will from OnSessionEstablish,
//     connWills, until its conn holds it), and a SUBSCRIBE or UNSUBSCRIBE
//     racing with its client's takeover files or unfiles nothing behind
//     it; every removal of a session by client id (its end, expiry, a
//     panicked connection's, dropSession) runs under the id's takeover
//     lock and spares a client that took the id over (RemoveSession); the
//     takeover asks the broker under that lock whether the id's client
//     may be taken over, and how (Options.TakeoverCheck: a refusal answers
//     the CONNECT and files nothing, OnSessionEstablish not called); a
//     takeover bounds its DISCONNECT to a stalled old connection to half a
//     second (netConn.SetWriteDeadline), not WriteTimeout; over
//     WebSocket the deadlines reach gorilla's writes through
//     wsstream.Conn.SetWriteDeadline, which sets them on the
//     wsstream.Socket under gorilla (wsstream.Upgrade puts it there):
//     gorilla sets the socket's write deadline to its own before each
//     frame, and the Socket keeps that from being later than the
//     stream's, so no order of the two undoes the bound (one did: the
//     writer read the old deadline, the bound was set, gorilla set the
//     old one again; TestBoundNotUndone), except that a stream deadline
//     already passed (the last write's, left set) does not cap the pong
//     or close gorilla answers with (TestPongAfterDeadline: it failed
//     the WebSocket of a client pinging after WriteTimeout idle); and
//     after a failed write
//     nothing is written, directly (tryWrite) or not. `mote mochi`,
//     the bare broker `mote bench` compares with, keeps upstream mochi.
//
// # Goroutines and owners
//
//	goroutine                    owner                          stops when
//	CONNECT (per connection)     guard(), on the listener's     the session is established (then it starts the read
//	                             goroutine (mochi's             loop) or the connection fails; guard recovers a panic
//	                             EstablishSession)
//	mochi read loop (per client) serve(), started by guard      connection closes; serve recovers a panic, untracks; or its reader
//	                             (or a sleeper's wake-up)       sleeps (ErrAsleep): then the sleepers hold the connection until a wake-up
//	sleepers (one per broker)    Broker (Start, newSleepers)    Close: sleepers.halt once the listeners closed (no new sleep), sleepers.stop once the sessions ended; it waits on the epoll set,
//	                                                            kicks the readers idle for ReaderSleep, wakes sleepers (sleep_linux.go)
//	mochi writer (per client)    mochi (Client.WriteLoop),      connection closes; started only when mochi queues a packet
//	                             started on demand              to its outbound channel, which Mote does not (deliveries are the writer's);
//	                                                            the channel itself is made by that first packet (mochi change 72)
//	message loop                 Broker                         Close closes its inbox, after the sessions end
//	writer (per connection)      conn; started by a wake-up     idle for a second (the next wake-up starts another), or its queue
//	                             when none runs (outQueue)      closes: then it does the finishing duties (handReplaysOn,
//	                                                            finish), and Close waits for it (Broker.writers); in
//	                                                            handReplaysOn it waits its turn (Broker.handing) and its
//	                                                            trips to the loop, both given up on only at Close (stop)
//	retainer                     Broker (retain.Retainer)       after the loop, with a final commit
//	$SYS ticker                  Broker                         Close
//	delayed will timers          wills (one per client id)      fired, cancelled by a reconnect, ended with the session, or Close (which publishes the will)
//	pacer timer (one per broker) the message loop (pacer)       the loop ends; it only pushes a call to the loop
//	cluster follower             clusterNode                    Close, after the loop (its context); it applies through onLoop
//	cluster appender (per batch) clusterNode                    its Append returns (bounded by the log's timeout, or Close)
//
//	state                               owner
//	tree.Tree, treeSub, props, pacer    the message loop: loopMu's holder, the loop goroutine or a publisher inline
//	                                    (runInline) (tree.Sub.Allow too: set at registration and by Reload)
//	replay lists (replayLists)          the message loop; a list is immutable once made, read by replays on the loop
//	the loop's scratch (loopOps,        loopMu's holder, for one batch: a delta that waits in a queue gets its own
//	  loopMeta, loopBatch, loopDelta,     deltaItem and a copy of its delta's rows (batchRows.keep), a queued publish
//	  loopPub), tree.Result's lists       its own pubMeta (toLoop); the loop hands the Result back (tree.Release)
//	encode buffers (bufPool)            a sync.Pool; a lent buffer is its writer's until its flush
//	read buffers (readBufPool)          a sync.Pool; a lent buffer is its connection's reader's until read to its end, then kept
//	                                      (ReturnLent) till its next read, which reads into it or gives it back before it waits,
//	                                      or till it sleeps (releaseSpare) or the connection ends (takeBackLent)
//	read turns (Broker.turns)           a reader that refused turnRefusals packets of its last read takes one for its next read's
//	                                      packets (ReadLent, waiting at most turnWait) and gives it back at its next read or
//	                                      when the connection ends (takeBackLent): flooders take turns on GOMAXPROCS-1 cores (turns.go);
//	                                      plain TCP only: TLS and WebSocket readers never take one
//	access rules, TLS config, translators  Reload stores them whole (atomic pointers; Reload's mutex serialises it); read-only values
//	outQueue items and byte count       the queue's mutex; a taken item is its writer's
//	whether a writer runs (running)     the queue's mutex: set by the wake-up that starts one, cleared by the writer stopping idle
//	publishers waiting for room         the queue's mutex (outQueue.waits: made by the first publisher that waits, kept)
//	a connection's write role, its      the queue's mutex gives it (outQueue.role); its holder (writer,
//	  encode buffer and socket writes     or a deliverer writing directly) writes, in order
//	a connection's hand-off (leftovers) its endMu; then its successor's
//	conn.will                           an atomic pointer: OnSessionEstablished stores; the read goroutine (OnWill)
//	                                    swaps it out, a takeover (takenWill) reads it, both under wills.mu;
//	                                    will.taken (wills.mu) says who made it due;
//	                                    a normal DISCONNECT (the read goroutine) swaps it out and revokes it
//	pending publish topic               the connection's read goroutine
//	the connections, by mochi client    Broker.conns and byID (connTable): each its read-write mutex, a leaf (held
//	  and by client id                    only inside its methods); OnSessionEstablished, adopt and Sessions file,
//	                                    dropConn, a hand-off's end and Session.Close remove; any goroutine reads
//	a CONNECT's will before its conn    connWills (sync.Map), the CONNECT's goroutine: OnSessionEstablish stores,
//	                                    OnSessionEstablished or OnWill (a CONNACK not written) takes it
//	wills of a session a CONNECT ended  wills.ending (sync.Map), the CONNECT's goroutine: OnSessionEstablish stores,
//	                                    OnSessionEstablished or OnDisconnect (a CONNACK not written) publishes, or Close (wills.close)
//	delayed wills, one per client id    wills.delayed, under wills.mu; entered only by wills.delayLocked (the newer CONNECT's
//	                                    kept: will.seq, stamped in OnSessionEstablish under the id's takeover lock)
//	the wills a resuming CONNECT set    wills.resuming (wills.mu), one entry per CONNECT in its handshake: OnSessionEstablish
//	  aside                               stores (wills.takeover; a takeover from a CONNECT holding some holds them too:
//	                                    will.holders); its OnSessionEstablished, OnWill or OnDisconnect settles them
//	                                    (wills.settle, through delayLocked), or Close (a later CONNECT marks them ended)
//	will.sent, will.revoked             wills.mu: publish marks sent; a normal DISCONNECT (OnPacketProcessed) revokes
//	sessions, subscriptions, in-flight  mochi (client state), written by the writer for deliveries
//	sessions away, per user, in order   awaySessions' mutex; entries added and removed under the id's takeover lock
//	                                    (the users' heap, byCount, and each user's list and count with them);
//	                                    taken under arriving's mutex too (holdOffline asks a session's user: heldUserOf)
//	turns at reading leftover replays   Broker.handing, a channel of handingAtOnce places: a writer holds one through
//	                                    handReplaysOn's trips and gives it back as it returns
//	plain subscription index (subIndex) its mutex for writers (the hooks of a SUBSCRIBE or UNSUBSCRIBE, Sessions); read without locks
//	a client's own packet ids (idSpaces) its mutex; reserved by the read goroutine, asked by the writer
//	a kept session's inbound QoS 2 ids keptInbound's mutex (those mochi's map could not take back); a connection takes
//	                                    them (keptInbound.take, idSpaces.adopt) and is filed under the id's takeover lock
//	messages for an arriving session,   arriving's mutex, from OnSessionEstablish until OnSessionEstablished
//	  which client holds a session        files the connection; every hold in flight (holdOffline), and every drop of what is held (roomLocked), under it;
//	                                    taken only by lock/unlock; a holder marks each id it changes (mark: its shard's version odd until unlock,
//	                                    which stores the shard's count of by's entries): deliverTo reads the connection, mochi client and
//	                                    in-flight count of an away subscriber without it, valid if no holder marked the id's shard between (settled)
//	what $tree subscriptions of         awayTrees (by client id): the message loop — kept by a detach (keepTrees), taken by a
//	  sessions away were last written     resume (resumeTrees), dropped by a call of the hooks when the session ends (forgetTrees:
//	                                      expiry, endAway, dropSession, a clean start; pushed while marks are kept or a detach that may
//	                                      keep some is pending: atomics n and pending); a mark (treeMark) is noted by the holder of its
//	                                      connection's write role (atomics), read by the loop once that connection's writer exited
//	bytes held for sessions away        offlineHeld's mutex (per session, per user, the users' heap); added to and trimmed under arriving's mutex; taken off without it by forget (a resume, an expiry, an ended session), prune ($SYS ticker) and deleted (OnQosDropped)
//	meters: counters, histograms        atomics: added to by the goroutine that sees the event, read at scrape
//	meters.subs (by mode)               the message loop (atomics, read at scrape)
//	the loop's inbox (requestQueue)     its mutex: items, the limit and the cost, the waiters and the room held for them,
//	                                    the running batch's clock, what a $set weighs; started (the weight of the publishes begun),
//	                                    sets and setRows ($sets run, rows they wrote) atomics loopMu's holder adds to
//	rows acked ahead (ackedAhead)       an atomic: toLoop adds as it queues a QoS 1/2 retained publish acknowledged at once, the loop takes off once run; read by afterAcked (OnSubscribe, Session.SubscribeWith)
//	failed logins per host (guesses)    each shard's mutex (16 shards by host; login, for every front end)
//	cluster waiting writes, flight      the message loop (clusterNode); appender and follower hand results in as calls
//
// # Metrics and health
//
// Broker.Metrics serves the broker's own Prometheus registry (metrics.go,
// docs/metrics.md): counters are atomics added to where the event happens
// — the door (messages in), Broker.refuse (refusals by reason), the
// writer (messages out by kind), conn.slow and Broker.drop (drops by
// reason) — and read at scrape with Stats, mochi's server.Info and the
// retainer's counters; the loop observes one histogram sample per batch,
// the retainer one per commit (retain.Options.OnCommit). Broker.Health
// asks the loop for a no-op (with a store, for a commit too) and the
// retainer for its last commit's outcome. Neither leaves a goroutine
// running (a scrape gathers on goroutines it waits for); the HTTP server
// that serves them is its owner's.
//
// # Caveats
//
// Retained rows never expire (SPEC §1): the MQTT 5 Message Expiry Interval
// of a retained publish is not applied to the row.
package broker
