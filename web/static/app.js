// Mote's web view: the live tree of a filter, over MQTT over WebSocket on
// the page's own origin (/mqtt), with mote.js's Mirror ($sync/F) and
// history ($hist/F). No build step: this module, mote.js and MQTT.js are
// served as they are, from the broker's binary.
//
// State and owners: one Session (the MQTT client, its Mirrors, the error
// reports) while connected or reconnecting; one TreeView (rows, DOM) for
// the page's life, reset for every filter; the figures and the error list
// belong to the Session and are cleared with it.

import mqtt from './mqtt.esm.js'
import { Mirror, rows, eachRow, history } from './mote.js'

const config = readConfig()
const $ = (id) => document.getElementById(id)
const ERRORS = '$SYS/mote/errors/'
const SYS = '$SYS/broker/#'
const SPARK_POINTS = 60 // newest values drawn per sparkline
const FLASH_MS = 1200 // as the flash animation in style.css
const MAX_TEXT = 200 // characters of a value shown in its cell
const MAX_ERRORS = 100 // reports kept in the list
const SLICE_MS = 12 // the longest a large snapshot keeps the page busy at once
const collator = new Intl.Collator(undefined, { numeric: true })

function readConfig() {
  const c = { mqtt: '/mqtt', login: false, filter: '#' }
  try {
    Object.assign(c, JSON.parse(document.querySelector('meta[name="mote-config"]').content))
  } catch (err) {
    console.error('mote: bad page configuration', err)
  }
  return c
}

// text is a row's value as its cell shows it, with its kind for styling.
function text(v) {
  if (typeof v === 'string') return ['str', v]
  if (typeof v === 'number') return ['num', String(v)]
  if (typeof v === 'boolean' || v === null) return ['lit', String(v)]
  return ['obj', JSON.stringify(v)]
}

function clip(s, n) {
  return s.length > n ? s.slice(0, n) + '…' : s
}

// when shows a time of change: the time of day today, else the date too.
function when(ms) {
  if (!ms) return ''
  const d = new Date(ms)
  const now = new Date()
  const time = d.toLocaleTimeString([], { hour12: false })
  if (d.toDateString() === now.toDateString()) return time
  return d.toLocaleDateString([], { year: 'numeric', month: '2-digit', day: '2-digit' }) + ' ' + time.slice(0, 5)
}

// Node is one level of the tree: a row (has), a branch (children), or both.
class Node {
  constructor(name, path, parent) {
    this.name = name
    this.path = path
    this.parent = parent
    this.depth = parent ? parent.depth + 1 : -1
    this.children = null // Map of name → Node
    this.sorted = null // children in display order; null when stale
    this.has = false // a row lives at this topic
    this.kind = ''
    this.text = ''
    this.full = '' // the whole value as text, for the tooltip (clipped)
    this.changed = 0 // time of the last change (ms), 0 when unknown
    this.live = false // changed while the page watched: changed is its own
    this.flashAt = 0 // when the row last changed while shown
    this.flashes = 0
    this.spark = null // [[t, number], …] when the broker keeps its history
    this.open = true
    this.seen = 0 // the update that last saw the row
    this.version = 0 // bumped whenever what the row shows changes
  }

  child(name) {
    if (!this.children) this.children = new Map()
    let c = this.children.get(name)
    if (!c) {
      c = new Node(name, this.depth < 0 ? name : this.path + '/' + name, this)
      this.children.set(name, c)
      this.sorted = null
      this.version++ // it may have become a branch
    }
    return c
  }

  order() {
    if (!this.sorted) {
      this.sorted = this.children ? [...this.children.values()].sort((a, b) => collator.compare(a.name, b.name)) : []
    }
    return this.sorted
  }
}

// TreeView shows one filter's rows as a collapsible table. Only the rows
// in sight are in the DOM (a 10,000-row tree costs a screenful of
// elements); updates from the Mirror are applied once a frame at most,
// and less often when applying takes long.
class TreeView {
  constructor(scroller, spacer) {
    this.scroller = scroller
    this.spacer = spacer
    this.rowH = parseFloat(getComputedStyle(document.documentElement).getPropertyValue('--row-h')) || 28
    this.indent = parseFloat(getComputedStyle(document.documentElement).getPropertyValue('--indent')) || 14
    this.shown = new Map() // Node → its element, for the rows in sight
    this.reset('')
    scroller.addEventListener('scroll', () => this.frame())
    window.addEventListener('resize', () => this.frame())
    spacer.addEventListener('click', (e) => {
      const row = e.target.closest('.row')
      if (row && row.node && row.node.children && row.node.children.size && (e.target.closest('.tog') || e.target.closest('.label'))) {
        row.node.open = !row.node.open
        row.node.version++
        this.flatDirty = true
        this.frame()
      }
    })
  }

  // reset forgets every row: a new filter, or a logout.
  reset(filter) {
    this.filter = filter
    this.root = new Node('', '', null)
    this.byTopic = new Map() // topic → Node, for rows
    this.flat = [] // the nodes in display order, closed branches skipped
    this.flatDirty = true
    this.tree = undefined // the Mirror's copy awaiting apply
    this.deltas = [] // rows changed by the ordinary deltas since the last apply
    this.unexplained = false // the last update has no changes() yet
    this.needFull = false // an update came that was no ordinary delta
    this.pending = false
    this.loaded = false // the snapshot is applied
    this.failed = false // the broker refused the filter
    this.gen = 0
    this.cost = 0 // ms the last apply took
    this.job = null // the diff under way
    this.pendingHistory = null // a history that came before or during the first diff
    this.firstRender = 0 // ms from reset to the whole snapshot drawn
    this.firstSlice = 0 // ms from reset to its first rows drawn
    this.historyCost = 0 // ms it took to take in the history
    this.started = performance.now()
    for (const el of this.shown.values()) el.remove()
    this.shown.clear()
    this.empty(filter ? 'waiting for the snapshot…' : '')
  }

  fail() {
    this.failed = true
    this.empty('')
  }

  empty(msg) {
    let el = this.spacer.querySelector('.empty')
    if (!msg) {
      if (el) el.remove()
      return
    }
    if (!el) {
      el = document.createElement('div')
      el.className = 'empty'
      this.spacer.appendChild(el)
    }
    el.textContent = msg
  }

  // update takes the Mirror's copy after each message it applied; it is
  // drawn at the next frame. For an ordinary delta, changes(rows) follows
  // at once with the rows it changed (null: deleted), so that drawing it
  // costs what changed, not the whole tree; after anything else (the
  // snapshot, a resume delta) the copy is compared with what is shown.
  update(tree) {
    this.tree = tree
    if (this.unexplained) this.needFull = true
    this.unexplained = true
    if (this.pending) return
    this.pending = true
    requestAnimationFrame(() => {
      this.pending = false
      this.apply()
    })
  }

  changes(changed) {
    if (!this.unexplained) return
    this.unexplained = false
    this.deltas.push(changed)
  }

  apply() {
    if (this.job) return // a diff is under way; it applies the rest when done
    const t0 = performance.now()
    if (!this.loaded || this.needFull || this.unexplained) {
      this.deltas = []
      this.needFull = this.unexplained = false
      this.diff(this.loaded)
      return
    }
    const now = Date.now()
    for (const changed of this.deltas) {
      for (const topic of Object.keys(changed)) {
        const v = changed[topic]
        if (v === null || v === undefined) this.remove(topic)
        else this.set(topic, v, now, 0)
      }
    }
    this.deltas = []
    this.render()
    this.cost = performance.now() - t0
  }

  // diff shows the Mirror's copy as it is, every row compared, in slices
  // of about SLICE_MS so the page stays responsive with a large tree; the
  // first slice is drawn at once. Changes that come meanwhile wait for
  // the end (the slices set the values the copy had when diff began).
  diff(live) {
    const t0 = performance.now()
    const list = [] // topic, value, topic, value, …
    eachRow(this.tree, this.filter, (topic, v) => {
      if (v !== null) list.push(topic, v)
    })
    const job = { gen: ++this.gen, list, i: 0, now: live ? Date.now() : 0, cost: performance.now() - t0, drawn: 0 }
    this.job = job
    this.slice(job)
  }

  slice(job) {
    if (this.job !== job) return // reset meanwhile
    const t0 = performance.now()
    const { list, gen, now } = job
    while (job.i < list.length) {
      const end = Math.min(list.length, job.i + 512)
      for (; job.i < end; job.i += 2) this.set(list[job.i], list[job.i + 1], now, gen)
      if (performance.now() - t0 > SLICE_MS) break
    }
    job.cost += performance.now() - t0
    if (job.i < list.length) {
      if (!job.drawn || t0 - job.drawn > 100) {
        this.render()
        job.drawn = performance.now()
        if (!this.loaded && !this.firstSlice) this.firstSlice = job.drawn - this.started
      }
      setTimeout(() => this.slice(job), 0)
      return
    }
    for (const [topic, n] of this.byTopic) {
      if (n.seen !== gen) this.remove(topic)
    }
    this.job = null
    const initial = !this.loaded
    this.loaded = true
    this.render()
    this.cost = job.cost
    if (initial) {
      this.firstRender = performance.now() - this.started
      if (!this.firstSlice) this.firstSlice = this.firstRender
    }
    if (this.pendingHistory) {
      const h = this.pendingHistory
      this.pendingHistory = null
      this.history(h)
    }
    if (this.deltas.length || this.needFull || this.unexplained) this.apply()
  }

  // set shows value v at topic; now is the time of a change seen live (0:
  // the snapshot's rows, whose time the broker's history tells).
  set(topic, v, now, gen) {
    let n = this.byTopic.get(topic)
    if (!n) {
      n = this.root
      for (const level of topic.split('/')) n = n.child(level)
      this.byTopic.set(topic, n)
      this.flatDirty = true
    }
    n.seen = gen
    const [kind, full] = text(v)
    const shown = clip(full, 2000)
    if (n.has && n.full === shown) return
    const was = n.has
    n.has = true
    n.kind = kind
    n.full = shown
    n.text = clip(full, MAX_TEXT)
    n.version++
    if (!now) return
    n.changed = now
    n.live = true
    if (was) {
      n.flashAt = now
      n.flashes++
    }
    if (n.spark && typeof v === 'number') {
      n.spark.push([now, v])
      if (n.spark.length > SPARK_POINTS) n.spark.shift()
    }
  }

  remove(topic) {
    const n = this.byTopic.get(topic)
    if (!n) return
    this.byTopic.delete(topic)
    n.has = false
    n.spark = null
    n.version++
    for (let p = n; p.parent && !p.has && !(p.children && p.children.size); p = p.parent) {
      p.parent.children.delete(p.name)
      p.parent.sorted = null
      p.parent.version++
    }
    this.flatDirty = true
  }

  // mismatches compares what is shown with the Mirror's copy (for tests):
  // the topics that differ.
  mismatches() {
    const want = new Map()
    eachRow(this.tree, this.filter, (topic, v) => { if (v !== null) want.set(topic, clip(text(v)[1], 2000)) })
    const out = []
    for (const [topic, full] of want) {
      const n = this.byTopic.get(topic)
      if (!n || n.full !== full) out.push(topic)
    }
    for (const topic of this.byTopic.keys()) {
      if (!want.has(topic)) out.push(topic)
    }
    return out
  }


  // history adds what $hist answered: the time of each row's last change
  // (the broker's, for rows that did not change while the page watched)
  // and, where the broker keeps more than one value, a sparkline.
  history(tree) {
    if (this.job || !this.loaded) { // after the snapshot's rows are all in (the history can come first)
      this.pendingHistory = tree
      return
    }
    const list = [] // topic, pairs, topic, pairs, …
    eachRow(tree, this.filter, (topic, pairs) => list.push(topic, pairs))
    const root = this.root
    let i = 0
    let cost = 0
    const slice = () => {
      if (this.root !== root) return // reset meanwhile
      const t0 = performance.now()
      for (; i < list.length && performance.now() - t0 < SLICE_MS; i += 2) {
        const n = this.byTopic.get(list[i])
        const pairs = list[i + 1]
        if (!n || !Array.isArray(pairs) || pairs.length === 0) continue
        const last = pairs[pairs.length - 1]
        if (!n.live && Array.isArray(last) && last[0] > 0) n.changed = last[0]
        const nums = pairs.filter((p) => Array.isArray(p) && typeof p[1] === 'number' && typeof p[0] === 'number')
        if (pairs.length >= 2 && nums.length >= 2) n.spark = nums.slice(-SPARK_POINTS)
        n.version++
      }
      cost += performance.now() - t0
      this.frame()
      if (i < list.length) setTimeout(slice, 0)
      else this.historyCost = cost
    }
    slice()
  }


  frame() {
    if (this.frameQueued) return
    this.frameQueued = true
    requestAnimationFrame(() => {
      this.frameQueued = false
      this.render()
    })
  }

  flatten() {
    const out = []
    const walk = (n) => {
      for (const c of n.order()) {
        out.push(c)
        if (c.open && c.children && c.children.size) walk(c)
      }
    }
    walk(this.root)
    this.flat = out
    this.flatDirty = false
  }

  render() {
    if (this.flatDirty) this.flatten()
    const total = this.flat.length
    const n = this.byTopic.size
    $('count').textContent = !this.filter || (!this.loaded && !n) ? '' : `${n} ${n === 1 ? 'row' : 'rows'}${this.loaded ? '' : '…'}`
    this.empty(!this.filter || this.failed ? '' : !this.loaded && !n ? 'waiting for the snapshot…' : this.loaded && total === 0 ? 'no rows match' : '')
    this.spacer.style.height = total * this.rowH + 'px'
    const top = this.scroller.scrollTop
    const height = this.scroller.clientHeight || window.innerHeight
    const first = Math.max(0, Math.floor(top / this.rowH) - 8)
    const last = Math.min(total, Math.ceil((top + height) / this.rowH) + 8)
    const now = Date.now()
    const keep = new Map()
    for (let i = first; i < last; i++) {
      const n = this.flat[i]
      let el = this.shown.get(n)
      if (!el) {
        el = this.makeRow()
        this.spacer.appendChild(el)
      }
      if (el.node !== n || el.version !== n.version) this.fill(el, n, now)
      if (el.index !== i) {
        el.style.transform = `translateY(${i * this.rowH}px)`
        el.index = i
      }
      keep.set(n, el)
    }
    for (const [n, el] of this.shown) {
      if (!keep.has(n)) el.remove()
    }
    this.shown = keep
  }

  makeRow() {
    const el = document.createElement('div')
    el.className = 'row'
    el.setAttribute('role', 'row')
    const name = document.createElement('span')
    name.className = 'name'
    name.setAttribute('role', 'gridcell')
    const tog = document.createElement('button')
    tog.type = 'button'
    tog.className = 'tog'
    const label = document.createElement('span')
    label.className = 'label'
    name.append(tog, label)
    const value = document.createElement('span')
    value.className = 'value'
    value.setAttribute('role', 'gridcell')
    const v = document.createElement('span')
    v.className = 'v'
    value.append(v)
    const time = document.createElement('span')
    time.className = 'time'
    time.setAttribute('role', 'gridcell')
    el.append(name, value, time)
    el.parts = { name, tog, label, value, v, time, spark: null }
    return el
  }

  fill(el, n, now) {
    const p = el.parts
    el.node = n
    el.version = n.version
    el.dataset.topic = n.path
    el.dataset.row = n.has ? '1' : '0'
    const branch = !!(n.children && n.children.size)
    el.classList.toggle('branch', branch)
    el.setAttribute('aria-level', String(n.depth + 1))
    if (branch) el.setAttribute('aria-expanded', String(n.open))
    else el.removeAttribute('aria-expanded')
    p.tog.textContent = branch ? (n.open ? '▾' : '▸') : ''
    p.tog.setAttribute('aria-label', branch ? (n.open ? 'collapse' : 'expand') : '')
    p.name.style.paddingLeft = n.depth * this.indent + 'px'
    p.label.textContent = n.name === '' ? '""' : n.name
    p.label.title = n.path
    p.v.textContent = n.has ? n.text : ''
    p.v.className = 'v ' + (n.has ? n.kind : '')
    p.v.title = n.has ? n.full : ''
    p.time.textContent = n.has ? when(n.changed) : ''
    p.time.title = n.has && n.changed ? new Date(n.changed).toLocaleString() : ''
    this.sparkline(p, n)
    const age = now - n.flashAt
    const flashing = n.flashAt > 0 && age < FLASH_MS
    el.classList.toggle('flash-a', flashing && n.flashes % 2 === 1)
    el.classList.toggle('flash-b', flashing && n.flashes % 2 === 0)
    el.style.animationDelay = flashing ? -age + 'ms' : ''
  }

  sparkline(p, n) {
    const pts = n.has && n.spark && n.spark.length >= 2 ? n.spark : null
    if (!pts) {
      if (p.spark) p.spark.svg.remove()
      p.spark = null
      return
    }
    if (!p.spark) {
      const ns = 'http://www.w3.org/2000/svg'
      const svg = document.createElementNS(ns, 'svg')
      svg.setAttribute('class', 'spark')
      svg.setAttribute('viewBox', '0 0 64 18')
      svg.setAttribute('preserveAspectRatio', 'none')
      svg.setAttribute('role', 'img')
      const line = document.createElementNS(ns, 'polyline')
      line.setAttribute('vector-effect', 'non-scaling-stroke')
      svg.append(line)
      p.spark = { svg, line }
      p.value.append(svg)
    }
    // One point per value, evenly spaced: the shape of the row's recent
    // values, not their times.
    let lo = Infinity, hi = -Infinity
    for (const [, v] of pts) {
      lo = Math.min(lo, v)
      hi = Math.max(hi, v)
    }
    const x = (i) => (i / (pts.length - 1)) * 64
    const y = (v) => (hi > lo ? 16 - ((v - lo) / (hi - lo)) * 14 : 9)
    p.spark.line.setAttribute('points', pts.map(([, v], i) => x(i).toFixed(1) + ',' + y(v).toFixed(1)).join(' '))
    p.spark.svg.setAttribute('aria-label', `${pts.length} values from ${lo} to ${hi}`)
  }
}

// Figures shows the broker's counters from $SYS, if the user may read them.
class Figures {
  constructor() {
    this.prev = {} // topic → { v, t }: the last count and when it came
    this.rate = {} // topic → messages per second
    this.timer = setInterval(() => this.show(), 1000)
    this.values = {}
  }

  update(tree) {
    const now = Date.now()
    this.values = rows(tree, SYS)
    for (const topic of ['$SYS/broker/messages/received', '$SYS/broker/messages/sent']) {
      const v = Number(this.values[topic])
      if (!Number.isFinite(v)) continue
      const p = this.prev[topic]
      if (p && v !== p.v && now > p.t) this.rate[topic] = Math.max(0, ((v - p.v) * 1000) / (now - p.t))
      if (!p || v !== p.v) this.prev[topic] = { v, t: now }
    }
    this.show()
  }

  show() {
    const clients = this.values['$SYS/broker/clients/connected']
    $('figures').hidden = clients === undefined
    $('fig-clients').textContent = clients === undefined ? '–' : String(clients)
    const now = Date.now()
    const rate = (topic) => {
      const p = this.prev[topic]
      if (!p) return '–'
      // The broker publishes a count when it changes, once a second:
      // none for a while means none came.
      const r = now - p.t > 2500 ? 0 : this.rate[topic]
      return r === undefined ? '–' : r >= 100 ? String(Math.round(r)) : String(Math.round(r * 10) / 10)
    }
    $('fig-in').textContent = rate('$SYS/broker/messages/received')
    $('fig-out').textContent = rate('$SYS/broker/messages/sent')
  }

  stop() {
    clearInterval(this.timer)
    $('figures').hidden = true
  }
}

// Session is one login: the MQTT client and what it subscribed.
class Session {
  constructor(view, user, password) {
    this.view = view
    this.user = user
    this.figures = new Figures()
    this.errors = 0
    this.mirror = null
    this.first = true
    const url = new URL(config.mqtt, location.href)
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:'
    const opts = {
      protocolVersion: 5,
      clientId: 'mote-web-' + Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, '0')).join(''),
      clean: true,
      keepalive: 30,
      reconnectPeriod: 2000,
      connectTimeout: 10000,
      resubscribe: true,
    }
    if (user) {
      opts.username = user
      opts.password = password
    }
    status('connecting…')
    this.ended = false
    this.client = mqtt.connect(url.href, opts)
    // MQTT.js may still tell of the connection after end(): not shown.
    const on = (event, fn) => this.client.on(event, (...args) => { if (!this.ended) fn(...args) })
    on('connect', () => {
      status('live', 'live')
      if (!this.first) return // the Mirrors and MQTT.js subscribe again themselves
      this.first = false
      this.sys = new Mirror(this.client, SYS, { onChange: (t) => this.figures.update(t) })
      this.sys.ready.catch(() => {}) // no $SYS for this user: no figures
      this.client.subscribe(ERRORS + '+', { qos: 0 }, (err) => err && console.error('mote: error reports:', err))
      this.watch(view.filter)
    })
    on('reconnect', () => status('reconnecting…'))
    on('offline', () => status('offline, reconnecting…', 'bad'))
    on('error', (err) => {
      if ([4, 5, 134, 135].includes(err.code)) { // MQTT 3.1.1 and 5: bad username or password, not authorized
        this.end()
        loginRequired(user ? 'Wrong username or password.' : 'This broker needs a username and password.')
        return
      }
      status('error: ' + err.message, 'bad')
    })
    on('message', (topic, payload) => {
      if (topic.startsWith(ERRORS)) this.report(payload)
    })
  }

  // watch shows filter: a new Mirror of $sync/filter, then its history.
  watch(filter) {
    if (this.mirror) {
      this.client.removeListener('message', this.onDelta)
      this.mirror.close().catch(() => {})
    }
    this.view.reset(filter)
    $('filter-error').textContent = ''
    const m = new Mirror(this.client, filter, { onChange: (t) => { if (this.mirror === m) this.view.update(t) } })
    this.mirror = m
    // After the Mirror's own listener: an ordinary delta it merged (mote-seq
    // one past the last) tells the view which rows changed.
    const onDelta = (topic, payload, packet) => {
      if (topic !== m.topic || this.mirror !== m) return
      const up = packet.properties && packet.properties.userProperties
      const seq = Number(up && up['mote-seq'])
      if (!(seq > 0) || m.seq !== seq) return
      try {
        this.view.changes(rows(JSON.parse(new TextDecoder().decode(payload)), filter))
      } catch {
        // not JSON: the Mirror did not merge it either
      }
    }
    this.client.on('message', onDelta)
    this.onDelta = onDelta
    m.ready.then(() => history(this.client, filter, { limit: SPARK_POINTS, timeoutMs: 30000 }))
      .then((h) => { if (this.mirror === m) this.view.history(h) })
      .catch((err) => {
        if (this.mirror !== m) return
        if (m.seq < 0) {
          $('filter-error').textContent = String(err.message || err)
          this.view.fail()
        }
        else console.warn('mote: history:', err)
      })
  }

  report(payload) {
    let r
    try {
      r = JSON.parse(new TextDecoder().decode(payload))
    } catch {
      return
    }
    this.errors++
    const li = document.createElement('li')
    const meta = document.createElement('span')
    meta.className = 'meta'
    meta.textContent = `${when(Date.parse(r.time) || Date.now())} ${r.client} ${r.op} ${r.topic}`
    li.append(meta, document.createTextNode(`${r.reason} (0x${Number(r.code).toString(16)}): ${r.error}`))
    const list = $('error-list')
    list.prepend(li)
    while (list.children.length > MAX_ERRORS) list.lastChild.remove()
    $('error-count').textContent = `(${this.errors})`
    $('errors').classList.add('some')
  }

  end() {
    if (this.ended) return
    this.ended = true
    this.mirror = null
    this.figures.stop()
    this.client.end(true)
    $('error-list').replaceChildren()
    $('error-count').textContent = '(0)'
    $('errors').classList.remove('some')
  }
}

function status(text, kind = '') {
  const el = $('status')
  el.textContent = text
  el.className = 'status ' + kind
}

let session = null
const view = new TreeView($('tree'), $('spacer'))

function filterFromHash() {
  const f = new URLSearchParams(location.hash.slice(1)).get('filter')
  return f && f.trim() ? f.trim() : config.filter || '#'
}

function start(user, password) {
  $('login').hidden = true
  $('view').hidden = false
  $('who').hidden = !user
  $('who-name').textContent = user || ''
  view.reset(filterFromHash())
  $('filter').value = view.filter
  session = new Session(view, user, password)
}

function loginRequired(message) {
  if (session) session.end()
  session = null
  view.reset('')
  $('view').hidden = true
  $('who').hidden = true
  $('login').hidden = false
  $('login-error').textContent = message || ''
  $('login-pass').value = ''
  status(message ? 'not connected' : 'log in')
  $(message && $('login-user').value ? 'login-pass' : 'login-user').focus()
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault()
  $('login-error').textContent = ''
  start($('login-user').value, $('login-pass').value)
})

$('logout').addEventListener('click', () => loginRequired(''))

$('filter-form').addEventListener('submit', (e) => {
  e.preventDefault()
  const f = $('filter').value.trim() || '#'
  $('filter').value = f
  window.history.replaceState(null, '', '#' + new URLSearchParams({ filter: f }))
  if (session && !session.first) session.watch(f)
  else view.reset(f)
})

// Tests and the screenshot read these.
window.mote = { view, get session() { return session } }

if (config.login) loginRequired('')
else start('', '')
