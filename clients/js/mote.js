// Mote for webapps: live local copies of a Mote broker's trees, on MQTT.js.
//
// One ES module, no build step and no dependency of its own: pass it a
// connected MQTT.js client (MQTT 3.1.1 or 5, over WebSocket in a browser).
//
//   import mqtt from 'mqtt'
//   import { Mirror, publishTree } from './mote.js'
//
//   const client = mqtt.connect('ws://localhost:1884/mqtt', { protocolVersion: 5 })
//   const lights = new Mirror(client, 'light/+/is_on', { onChange: (tree) => render(tree) })
//   await lights.ready                      // the snapshot is in: {"bedroom":1,"livingroom":0}
//   await publishTree(client, 'light/kitchen', { is_on: 1 })
//
// Trees travel as JSON (the broker's default codec), or as CBOR or
// MessagePack with the option codec: 'cbor' or 'msgpack' (codecs.js, which
// loads the vendored cbor-x.esm.js or msgpack.esm.js beside it on first
// use; keep the files together). Values then arrive typed as the codec
// says: bytes as Uint8Array, numbers as numbers. The rules are those of the broker's SPEC:
// a $sync subscription gets one snapshot, then deltas (null deletes a row);
// over MQTT 5 every message carries mote-seq, and a gap in it (a lost QoS 0
// delta, a queue overflow at the broker) makes the Mirror subscribe again.
// Over MQTT 5 a Mirror also remembers mote-rev, the revision its copy
// reflects, and subscribes again (after a gap, or after MQTT.js
// reconnects) with mote-since: the broker then sends only what changed
// (a resume delta, merged into the copy) instead of the whole tree.
//
//   const lights = new Mirror(client, 'light/+/is_on', { interval: 250 })  // at most 4 messages a second
//   const temps = await history(client, 'sensor/+/temp', { from: Date.now() - 3600e3, limit: 100 })
//   // {"kitchen":[[1767000000000,21.5],…],…}: [t, value] pairs, oldest first
//   const bin = new Mirror(client, 'dev/+/blob', { codec: 'msgpack', onError: (err) => show(err) })
//   await publishTree(client, 'dev/a', { blob: new Uint8Array([1, 2]) }, { codec: 'cbor' })

import { codecLoaded, codecNames, decodeTree, encodeTree, loadCodec } from './codecs.js'

export { codecLoaded, codecNames, decodeTree, encodeTree, loadCodec, DecodeError, defaultMaxDepth } from './codecs.js'

// option returns the topic option that selects a codec ("" for JSON, the
// default), or throws for an unknown codec.
function codecOption(codec) {
  if (!codecNames.includes(codec)) {
    throw new RangeError(`mote: codec ${JSON.stringify(codec)}: want one of ${codecNames.join(', ')}`)
  }
  return codec === 'json' ? '' : '.' + codec
}

// userProperty returns one MQTT 5 user property of a packet, or undefined.
function userProperty(packet, key) {
  const v = packet && packet.properties && packet.properties.userProperties
    ? packet.properties.userProperties[key]
    : undefined
  return Array.isArray(v) ? v[v.length - 1] : v
}

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

// Level names are data: a row may be called "__proto__" or "constructor".
// own and put read and write only an object's own keys, so no tree can
// reach Object.prototype.
function own(obj, k) {
  return Object.prototype.hasOwnProperty.call(obj, k) ? obj[k] : undefined
}

function put(obj, k, v) {
  Object.defineProperty(obj, k, { value: v, enumerable: true, writable: true, configurable: true })
}

// merge applies a decoded delta to a decoded copy of a subscription's tree
// and returns the new copy (it changes doc's objects in place). filter is F,
// the filter the tree is built from: its '+' levels are nested keys, where
// null deletes a key; below a '#' the key "/" is a node's own value. It is
// the broker's tree.Merge, and is tested against it.
export function merge(doc, delta, filter) {
  const levels = filter.split('/')
  const plus = levels.filter((l) => l === '+').length
  const hash = levels[levels.length - 1] === '#'
  if (plus === 0 && !hash) {
    return delta // a bare value, or null
  }
  const m = isObject(doc) ? doc : {}
  const d = isObject(delta) ? delta : {}
  if (plus === 0) {
    mergeSubtree(m, d)
  } else {
    mergeLevels(m, d, plus, hash)
  }
  return m
}

// mergeLevels merges at a '+' level; left is the number of '+' levels from
// here on.
function mergeLevels(m, d, left, hash) {
  for (const [k, dv] of Object.entries(d)) {
    if (left === 1 && !hash) { // the row values themselves
      if (dv === null) {
        delete m[k]
      } else {
        put(m, k, dv)
      }
      continue
    }
    if (!isObject(dv)) {
      delete m[k] // not a shape the broker sends; the row set is gone
      continue
    }
    const cur = own(m, k)
    const child = isObject(cur) ? cur : {}
    if (left === 1) {
      mergeSubtree(child, dv)
    } else {
      mergeLevels(child, dv, left - 1, hash)
    }
    if (Object.keys(child).length === 0) {
      delete m[k]
    } else {
      put(m, k, child)
    }
  }
}

// mergeSubtree merges below a '#': "/" is the node's own value, other keys
// are child nodes.
function mergeSubtree(m, d) {
  for (const [k, dv] of Object.entries(d)) {
    if (k === '/') {
      if (dv === null) {
        delete m[k]
      } else {
        put(m, k, dv)
      }
      continue
    }
    mergeNode(m, k, dv)
  }
}

function mergeNode(parent, k, dv) {
  if (dv === null) {
    delete parent[k]
    return
  }
  if (!isObject(dv)) {
    put(parent, k, dv)
    return
  }
  let node = own(parent, k)
  if (!isObject(node)) {
    const cur = node
    node = {}
    if (cur !== undefined) { // a bare value becomes the node's own value
      put(node, '/', cur)
    }
  }
  mergeSubtree(node, dv)
  const keys = Object.keys(node)
  const value = own(node, '/')
  if (keys.length === 0) {
    delete parent[k]
  } else if (keys.length === 1 && value !== undefined && !isObject(value)) {
    put(parent, k, value) // no children left: the bare value
  } else {
    put(parent, k, node)
  }
}

// mergeParts deep-merges one part of a split snapshot into what came before.
function mergeParts(doc, part) {
  if (!isObject(doc) || !isObject(part)) {
    return part
  }
  for (const [k, v] of Object.entries(part)) {
    const cur = own(doc, k)
    put(doc, k, cur !== undefined ? mergeParts(cur, v) : v)
  }
  return doc
}

// rows flattens a tree built from filter F (a snapshot, a delta or a
// history) into its rows: { topic: value } (a null leaf, a deleted row in
// a delta, gives null). It follows the shape rules of SPEC §3.
export function rows(tree, filter) {
  const out = {}
  eachRow(tree, filter, (topic, v) => put(out, topic, v))
  return out
}

// eachRow calls fn(topic, value) for every row of a tree built from filter
// F, as rows lists them, without building the object: for large trees.
export function eachRow(tree, filter, fn) {
  const levels = filter.split('/')
  // A topic is built as a string; null is no level yet ("" is one empty level).
  const join = (topic, level) => (topic === null ? level : topic + '/' + level)
  const emit = (topic, v) => fn(topic === null ? '' : topic, v === undefined ? null : v)
  const subtree = (node, topic, root) => {
    if (!isObject(node)) {
      if (!root || (node !== null && node !== undefined)) {
        emit(topic, node)
      }
      return
    }
    for (const k of Object.keys(node)) {
      if (k === '/') {
        emit(topic, node[k])
      } else {
        subtree(node[k], join(topic, k), false)
      }
    }
  }
  const walk = (node, i, topic) => {
    while (i < levels.length && levels[i] !== '+' && levels[i] !== '#') {
      topic = join(topic, levels[i])
      i++
    }
    if (i === levels.length) {
      emit(topic, node)
    } else if (levels[i] === '#') {
      subtree(node, topic, true)
    } else if (isObject(node)) {
      for (const k of Object.keys(node)) {
        walk(node[k], i + 1, join(topic, k))
      }
    }
  }
  walk(tree, 0, null)
}

// appendHistory appends a delta of plain values (what $hist sends after
// its first message) to a history tree built from filter: every row the
// delta names gets [t, value] at the end of its array (null for a deleted
// row), trimmed to its newest limit pairs if limit > 0. It changes doc's
// objects in place and returns the new tree.
export function appendHistory(doc, delta, filter, t, limit = 0) {
  const levels = filter.split('/')
  const pair = (arr, v) => {
    let a = Array.isArray(arr) ? arr : []
    a.push([t, v === undefined ? null : v])
    if (limit > 0 && a.length > limit) {
      a = a.slice(a.length - limit)
    }
    return a
  }
  const subtree = (node, d, root) => {
    if (!isObject(d)) { // a new value of the row at this node
      if (isObject(node)) {
        put(node, '/', pair(own(node, '/'), d))
        return node
      }
      if (root) {
        const m = {}
        put(m, '/', pair(undefined, d))
        return m
      }
      return pair(node, d)
    }
    let m = node
    if (!isObject(m)) {
      m = {}
      if (node !== undefined && node !== null) { // a row's pairs, now with children too
        put(m, '/', node)
      }
    }
    for (const [k, dv] of Object.entries(d)) {
      put(m, k, k === '/' ? pair(own(m, '/'), dv) : subtree(own(m, k), dv, false))
    }
    const keys = Object.keys(m)
    if (!root && keys.length === 1 && keys[0] === '/' && !isObject(m['/'])) {
      return m['/'] // no children: the bare array, as the broker writes it
    }
    return m
  }
  const at = (node, d, i) => {
    while (i < levels.length && levels[i] !== '+' && levels[i] !== '#') {
      i++
    }
    if (i === levels.length) {
      return pair(node, d)
    }
    if (levels[i] === '#') {
      return subtree(node, d, !levels.slice(0, i).includes('+'))
    }
    const m = isObject(node) ? node : {}
    if (isObject(d)) {
      for (const [k, dv] of Object.entries(d)) {
        put(m, k, at(own(m, k), dv, i + 1))
      }
    }
    return m
  }
  return at(doc, delta, 0)
}

// millis reads a history time option: a Date or Unix milliseconds.
function millis(name, v) {
  const ms = v instanceof Date ? v.getTime() : v
  if (!Number.isSafeInteger(ms) || ms < 0) {
    throw new RangeError(`mote: ${name}: want a Date or Unix milliseconds, got ${v}`)
  }
  return ms
}

// promisify runs an MQTT.js call that takes a completion callback.
function promisify(fn) {
  return new Promise((resolve, reject) => {
    fn((err, result) => (err ? reject(err) : resolve(result)))
  })
}

// Mirror keeps a local copy of the tree a $sync subscription describes:
// the snapshot (all its parts), then every delta merged in.
//
// Revisions and resume (MQTT 5): the copy's revision is mirror.rev (the
// last mote-rev applied, a decimal string; undefined before the first
// snapshot or from a broker without revisions). When the Mirror subscribes
// again it sends mote-since = rev, and a resume delta (mote-resume = 1) is
// merged into the copy it kept; a full snapshot replaces it. That happens
// after a gap in mote-seq, and after MQTT.js reconnects: if MQTT.js sends
// the subscription again by itself (its resubscribe option, with
// reconnectPeriod > 0, when the session is not resumed), it sends the
// properties object the Mirror gave it, which the Mirror keeps current;
// otherwise the Mirror subscribes itself on 'connect'. A resumed session
// (sessionPresent) gets a fresh snapshot from the broker unasked. Until
// the answer is in, the copy is stale: until() waits.
//
// History (options.history): the Mirror subscribes to $hist/F instead and
// keeps a tree whose leaves are arrays of [t, value] pairs (t in Unix ms,
// oldest first, ending with the current value); every delta appends
// [Date.now() at receipt, value] to each row it names (null for a deleted
// row), trimmed to history.limit pairs if set, and nothing after
// history.to. A history Mirror has no resume: it gets its whole history
// again when it subscribes again.
export class Mirror {
  // client: a connected MQTT.js client; filter: F, as in $sync/F.
  // options.qos (default 1); options.onChange(tree) is called after the
  // snapshot, after a resume and after every delta, with the copy (do not
  // change it). options.interval: paced deltas, at most one message per
  // that many milliseconds (1 to 3,600,000; the option .<N>ms).
  // options.history: true, or { from, to, limit } (Dates or Unix ms;
  // MQTT 5 only): keep the history of the rows (see above).
  // options.codec: 'json' (default), 'cbor' or 'msgpack' ($sync.cbor/F).
  // options.onError(err) is called for a message that does not decode
  // (err: a DecodeError) or cannot be applied; default: console.error.
  // Such a delta leaves the copy stale, so the Mirror subscribes again
  // (counted in resyncs); such a snapshot rejects ready if it was the
  // first, and the copy waits for the next snapshot. options.maxDepth
  // bounds the nesting of a CBOR or MessagePack tree (defaultMaxDepth).
  constructor(client, filter, { qos = 1, onChange, interval, history, codec = 'json', onError, maxDepth } = {}) {
    if (interval !== undefined && (!Number.isInteger(interval) || interval < 1 || interval > 3600000)) {
      throw new RangeError(`mote: interval ${interval}: want whole milliseconds from 1 to 3600000`)
    }
    const copt = codecOption(codec)
    this.client = client
    this.filter = filter
    this.qos = qos
    this.onChange = onChange
    this.codec = codec
    this.onError = onError || ((err) => console.error(err))
    this.decodeOptions = maxDepth === undefined ? {} : { maxDepth }
    this.errors = 0 // how many messages did not decode or apply
    this.history = history ? (history === true ? {} : history) : null
    // Over MQTT 3.1.1 there are no properties: no resume, no history range.
    this.v5 = !client.options || client.options.protocolVersion === 5
    const userProperties = {}
    if (this.history) {
      this.topic = '$hist' + copt + '/' + filter
      const { from, to, limit } = this.history
      if (from !== undefined) userProperties['mote-from'] = String(millis('history.from', from))
      if (to !== undefined) userProperties['mote-to'] = String(millis('history.to', to))
      if (limit !== undefined) {
        if (!Number.isSafeInteger(limit) || limit < 1) {
          throw new RangeError(`mote: history.limit ${limit}: want a positive integer`)
        }
        userProperties['mote-limit'] = String(limit)
      }
      if (interval !== undefined) userProperties['mote-interval'] = String(interval)
      if (!this.v5 && Object.keys(userProperties).length > 0) {
        throw new Error('mote: history from, to, limit and interval need MQTT 5')
      }
      this.to = to === undefined ? undefined : millis('history.to', to)
    } else {
      this.topic = '$sync' + copt + (interval ? `.${interval}ms/` : '/') + filter
    }
    // The SUBSCRIBE properties, one object for the Mirror's life: MQTT.js
    // keeps it for its own resubscribe, and setRev keeps mote-since in it
    // current. mqtt-packet refuses an empty userProperties, so the
    // property reads as undefined (left out) while there is none.
    this.userProperties = userProperties
    this.subscribeProperties = {}
    Object.defineProperty(this.subscribeProperties, 'userProperties', {
      enumerable: true,
      get: () => (Object.keys(userProperties).length > 0 ? userProperties : undefined),
    })
    this.tree = undefined // the copy; undefined until the snapshot is in
    this.rev = undefined // mote-rev of the copy (a decimal string)
    this.resyncs = 0 // how many times a gap made it subscribe again
    this.resumes = 0 // how many resume deltas it merged
    this.seq = -1 // last mote-seq merged; -1 while waiting for a snapshot
    this.parts = null
    this.resuming = false
    this.waiters = []
    this.closed = false
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve
      this.rejectReady = reject
    })
    this.ready.catch(() => {}) // its errors go to onError too: none is left unhandled
    this.onMessage = (topic, payload, packet) => {
      if (topic === this.topic) {
        this.handle(payload, packet)
      }
    }
    this.dropped = false
    this.onClose = () => { this.dropped = true }
    this.onConnect = (connack) => {
      if (!this.dropped) {
        return
      }
      this.dropped = false
      this.seq = -1 // stale until the broker answers; the copy and rev stay for a resume
      this.parts = null
      if (connack && connack.sessionPresent) {
        return // the broker sends the kept subscription a fresh snapshot
      }
      const o = client.options
      if (o && o.resubscribe !== false && o.reconnectPeriod > 0) {
        return // MQTT.js subscribes again, with subscribeProperties as they are now
      }
      this.subscribe().catch((err) => this.report(err))
    }
    client.on('message', this.onMessage)
    client.on('close', this.onClose)
    client.on('connect', this.onConnect)
    this.subscribe().catch((err) => {
      this.report(err)
      this.rejectReady(err)
    })
  }

  // setRev records the revision the copy reflects, and mote-since for the
  // next SUBSCRIBE (none for a history Mirror, or while the copy reflects
  // no revision).
  setRev(rev) {
    this.rev = rev
    const up = this.userProperties
    if (rev === undefined || this.history) {
      delete up['mote-since']
    } else {
      up['mote-since'] = rev
    }
  }

  // subscribe (again): the broker answers with a fresh snapshot, or, given
  // mote-since, with a resume delta. The object form with resubscribe:
  // true makes MQTT.js send it even though it already holds the topic.
  async subscribe() {
    this.seq = -1
    this.parts = null
    if (!codecLoaded(this.codec)) {
      await loadCodec(this.codec) // JSON's SUBSCRIBE leaves at once, as it always did
      if (this.closed) {
        return // closed while the codec loaded
      }
    }
    const topics = { [this.topic]: { qos: this.qos, nl: false, rap: false, rh: 0 }, resubscribe: true }
    const options = this.v5 ? { qos: this.qos, properties: this.subscribeProperties } : { qos: this.qos }
    const granted = await promisify((cb) => this.client.subscribe(topics, options, cb))
    const refused = (granted || []).find((g) => g.qos >= 0x80)
    if (refused) {
      throw new Error(`mote: subscribe ${this.topic}: refused (reason 0x${refused.qos.toString(16)})`)
    }
  }

  handle(payload, packet) {
    if (this.closed) {
      return
    }
    let tree
    try {
      tree = decodeTree(this.codec, payload, this.decodeOptions)
    } catch (err) {
      this.failed(err, packet)
      return
    }
    try {
      this.apply(tree, packet)
    } catch (err) { // a tree too deep for merge's recursion, say
      this.failed(err, packet)
    }
  }

  // failed reports a message that did not decode or apply. The copy is
  // stale: after a delta the Mirror subscribes again; after (part of) a
  // snapshot it waits for the next one (subscribing again could loop on a
  // broker that sends only such snapshots).
  failed(err, packet) {
    this.errors++
    const e = err instanceof Error ? err : new Error(String(err))
    e.message = `mote: ${this.topic}: ${e.message.replace(/^mote: /, '')}`
    const seq = userProperty(packet, 'mote-seq')
    const snapshot = seq === '0' || (seq === undefined && this.seq < 0)
    this.report(e)
    if (!snapshot && this.seq < 0) {
      return // a delta the Mirror would have ignored anyway
    }
    this.seq = -1
    this.parts = null
    if (snapshot) {
      this.rejectReady(e) // a no-op once ready has resolved
      return
    }
    this.resyncs++
    this.subscribe().catch((err) => this.report(err))
  }

  report(err) {
    try {
      this.onError(err)
    } catch (cbErr) {
      console.error(cbErr)
    }
  }

  // apply merges one decoded message into the copy.
  apply(tree, packet) {
    const seqText = userProperty(packet, 'mote-seq')
    const seq = seqText === undefined ? undefined : Number(seqText) // undefined over MQTT 3.1.1
    const part = userProperty(packet, 'mote-part')
    const rev = userProperty(packet, 'mote-rev')
    if (seq === 0 || (seq === undefined && this.seq < 0)) {
      // The snapshot or a resume delta, or one part of it. Over MQTT 3.1.1
      // it is the first message after the SUBACK (or a reconnect).
      const resume = seq === 0 && userProperty(packet, 'mote-resume') === '1'
      if (this.parts === null || !part || part.startsWith('1/')) {
        this.parts = new Set()
        this.seq = -1 // not a copy until the whole of it is in
        this.resuming = resume
        if (!resume) {
          this.tree = undefined
          this.setRev(undefined) // half a snapshot reflects no revision
        }
      }
      if (this.resuming) {
        this.tree = merge(this.tree, tree, this.filter)
      } else if (!part) {
        this.tree = tree
      } else {
        this.tree = mergeParts(this.tree, tree)
      }
      if (part) {
        this.parts.add(part)
      }
      if (!part || this.parts.size === Number(part.split('/')[1])) {
        this.seq = 0
        if (rev !== undefined) {
          this.setRev(rev)
        }
        if (this.resuming) {
          this.resumes++
        }
        this.resolveReady(this.tree)
        this.changed()
      }
      return
    }
    if (this.seq < 0) {
      return // a delta before the whole snapshot: the snapshot covers it
    }
    if (seq === undefined || seq === this.seq + 1) {
      if (this.history) {
        const now = Date.now()
        if (this.to === undefined || now <= this.to) {
          this.tree = appendHistory(this.tree, tree, this.filter, now, this.history.limit || 0)
        }
      } else {
        this.tree = merge(this.tree, tree, this.filter)
      }
      if (seq !== undefined) {
        this.seq = seq
      }
      if (rev !== undefined) {
        this.setRev(rev)
      }
      this.changed()
      return
    }
    // A gap in mote-seq: our copy is stale.
    this.resyncs++
    this.subscribe().catch((err) => this.report(err))
  }

  changed() {
    if (this.onChange) {
      this.onChange(this.tree)
    }
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) {
      if (!w.check()) {
        this.waiters.push(w)
      }
    }
  }

  // until resolves once ok(tree) is true (checked now and after every
  // change), or rejects after timeoutMs.
  until(ok, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          if (this.seq >= 0 && ok(this.tree)) {
            clearTimeout(timer)
            resolve(this.tree)
            return true
          }
          return false
        },
      }
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w)
        reject(new Error(`mote: ${this.topic}: condition not met within ${timeoutMs} ms`))
      }, timeoutMs)
      if (!w.check()) {
        this.waiters.push(w)
      }
    })
  }

  // close ends the subscription.
  async close() {
    if (this.closed) {
      return
    }
    this.closed = true
    this.client.removeListener('message', this.onMessage)
    this.client.removeListener('close', this.onClose)
    this.client.removeListener('connect', this.onConnect)
    await promisify((cb) => this.client.unsubscribe(this.topic, cb))
  }
}

// history asks the broker once for the past values of the rows matching
// filter ($hist/F) and resolves with the answer: a tree shaped like a
// snapshot whose leaves are arrays of [t, value] pairs, t in Unix ms,
// oldest first, ending with the current value. options: from, to (Dates
// or Unix ms, inclusive), limit (the newest pairs per row; all three need
// MQTT 5), qos (default 1), timeoutMs (default 10000), codec ('json',
// 'cbor' or 'msgpack': $hist.cbor/F). An answer that does not decode
// rejects. Use rows(tree, filter) for { topic: pairs }.
export async function history(client, filter, { from, to, limit, qos = 1, timeoutMs = 10000, codec = 'json' } = {}) {
  const h = {}
  if (from !== undefined) h.from = from
  if (to !== undefined) h.to = to
  if (limit !== undefined) h.limit = limit
  const m = new Mirror(client, filter, { qos, history: h, codec, onError: () => {} }) // errors reject ready
  let timer
  try {
    return await Promise.race([
      m.ready,
      new Promise((resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`mote: history of ${filter}: no answer within ${timeoutMs} ms`)), timeoutMs)
      }),
    ])
  } finally {
    clearTimeout(timer)
    await m.close()
  }
}

// publishTree publishes value as a tree at topic ($tree/topic): the broker
// spreads it into rows (null deletes one) and retains them. options: qos
// (default 1), retain (default true), replace (also delete every row under
// topic that value does not mention), codec ('json', 'cbor' or 'msgpack':
// $tree.cbor/topic; a Uint8Array is bytes there). Over MQTT 5 at QoS 1 or
// 2 a refused tree rejects with the broker's reason.
export async function publishTree(client, topic, value, { qos = 1, retain = true, replace = false, codec = 'json' } = {}) {
  const t = '$tree' + codecOption(codec) + (replace ? '.replace/' : '/') + topic
  if (!codecLoaded(codec)) {
    await loadCodec(codec)
  }
  const payload = encodeTree(codec, value)
  return promisify((cb) => client.publish(t, payload, { qos, retain }, cb))
}

// setRows sets every existing row that filter matches ($set/F) to value:
// a string or bytes go as they are (the broker types them like any plain
// payload), null deletes the rows, anything else goes as JSON.
export function setRows(client, filter, value, { qos = 1 } = {}) {
  let payload = value
  if (value === null) {
    payload = ''
  } else if (typeof value !== 'string' && !(value instanceof Uint8Array)) {
    payload = JSON.stringify(value)
  }
  return promisify((cb) => client.publish('$set/' + filter, payload, { qos, retain: true }, cb))
}
