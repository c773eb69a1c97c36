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
// Trees travel as JSON here (the broker's default codec); the Go client in
// ../client also speaks CBOR. The rules are those of the broker's SPEC:
// a $sync subscription gets one snapshot, then deltas (null deletes a row);
// over MQTT 5 every message carries mote-seq, and a gap in it (a lost QoS 0
// delta, a queue overflow at the broker) makes the Mirror subscribe again
// for a fresh snapshot.

const decoder = new TextDecoder()

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

// promisify runs an MQTT.js call that takes a completion callback.
function promisify(fn) {
  return new Promise((resolve, reject) => {
    fn((err, result) => (err ? reject(err) : resolve(result)))
  })
}

// Mirror keeps a local copy of the tree a $sync subscription describes:
// the snapshot (all its parts), then every delta merged in.
export class Mirror {
  // client: a connected MQTT.js client; filter: F, as in $sync/F.
  // options.qos (default 1); options.onChange(tree) is called after the
  // snapshot and after every delta, with the copy (do not change it).
  constructor(client, filter, { qos = 1, onChange } = {}) {
    this.client = client
    this.filter = filter
    this.topic = '$sync/' + filter
    this.qos = qos
    this.onChange = onChange
    this.tree = undefined // the copy; undefined until the snapshot is in
    this.resyncs = 0 // how many times a gap made it subscribe again
    this.seq = -1 // last mote-seq merged; -1 while waiting for a snapshot
    this.parts = null
    this.waiters = []
    this.closed = false
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve
      this.rejectReady = reject
    })
    this.onMessage = (topic, payload, packet) => {
      if (topic === this.topic) {
        this.handle(payload, packet)
      }
    }
    // After a reconnect a fresh snapshot comes (the broker sends one to a
    // resumed session; a new session subscribes again): until it is in,
    // the copy is stale.
    this.dropped = false
    this.onClose = () => { this.dropped = true }
    this.onConnect = (connack) => {
      if (!this.dropped) {
        return
      }
      this.dropped = false
      if (connack && connack.sessionPresent) {
        this.seq = -1
        this.parts = null
      } else {
        this.subscribe().catch((err) => console.error(err))
      }
    }
    client.on('message', this.onMessage)
    client.on('close', this.onClose)
    client.on('connect', this.onConnect)
    this.subscribe().catch((err) => this.rejectReady(err))
  }

  // subscribe (again): the broker answers with a fresh snapshot.
  async subscribe() {
    this.seq = -1
    this.parts = null
    const granted = await promisify((cb) => this.client.subscribe(this.topic, { qos: this.qos }, cb))
    const refused = (granted || []).find((g) => g.qos >= 0x80)
    if (refused) {
      throw new Error(`mote: subscribe ${this.topic}: refused (reason 0x${refused.qos.toString(16)})`)
    }
  }

  handle(payload, packet) {
    let tree
    try {
      tree = JSON.parse(decoder.decode(payload))
    } catch (err) {
      console.error(`mote: ${this.topic}: not a JSON tree:`, err)
      return
    }
    const seqText = userProperty(packet, 'mote-seq')
    const seq = seqText === undefined ? undefined : Number(seqText) // undefined over MQTT 3.1.1
    const part = userProperty(packet, 'mote-part')
    if (seq === 0 || (seq === undefined && this.seq < 0)) {
      // The snapshot, or one part of it. Over MQTT 3.1.1 it is the first
      // message after the SUBACK (or a reconnect).
      if (this.parts === null || !part || part.startsWith('1/')) {
        this.tree = undefined
        this.parts = new Set()
        this.seq = -1 // not a copy until the whole snapshot is in
      }
      if (!part) {
        this.tree = tree
      } else {
        this.tree = mergeParts(this.tree, tree)
        this.parts.add(part)
      }
      if (!part || this.parts.size === Number(part.split('/')[1])) {
        this.seq = 0
        this.resolveReady(this.tree)
        this.changed()
      }
      return
    }
    if (this.seq < 0) {
      return // a delta before the whole snapshot: the snapshot covers it
    }
    if (seq === undefined || seq === this.seq + 1) {
      this.tree = merge(this.tree, tree, this.filter)
      if (seq !== undefined) {
        this.seq = seq
      }
      this.changed()
      return
    }
    // A gap in mote-seq: our copy is stale.
    this.resyncs++
    this.subscribe().catch((err) => console.error(err))
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

// publishTree publishes value as a tree at topic ($tree/topic): the broker
// spreads it into rows (null deletes one) and retains them. options: qos
// (default 1), retain (default true), replace (also delete every row under
// topic that value does not mention). Over MQTT 5 at QoS 1 or 2 a refused
// tree rejects with the broker's reason.
export function publishTree(client, topic, value, { qos = 1, retain = true, replace = false } = {}) {
  const t = (replace ? '$tree.replace/' : '$tree/') + topic
  return promisify((cb) => client.publish(t, JSON.stringify(value), { qos, retain }, cb))
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
