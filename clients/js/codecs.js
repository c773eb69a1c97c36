// The tree codecs of mote.js (SPEC §11): JSON, CBOR and MessagePack.
//
// JSON needs nothing. CBOR runs on cbor-x and MessagePack on
// @msgpack/msgpack, vendored next to this file as browser ES modules
// (cbor-x.esm.js, msgpack.esm.js; see README.md) and loaded on first use
// with a dynamic import, so a page that speaks JSON only never downloads
// them. loadCodec(name) loads one; Mirror, history and publishTree call it
// themselves before they subscribe or publish.
//
// Decoding checks first. A CBOR or MessagePack payload is read once by a
// small checker of this file before the library sees it: it walks the
// item heads without building anything and refuses, with a DecodeError,
// every declared length (string, bytes, array, map) longer than what is
// left of the payload, nesting deeper than maxDepth, map keys that are not
// strings, CBOR tags, indefinite lengths, undefined and other simple
// values, MessagePack extension types and the unused byte 0xc1, and bytes
// after the tree: what the broker never sends. Only then does the library
// decode, with its own size limits set to the payload's length as well. So
// a hostile payload costs one pass over its bytes and an error, never an
// allocation sized by what it declares, a deep recursion, or a CBOR tag
// handler (cbor-x would build Dates, Sets, Maps, typed arrays, Errors,
// RegExps and records from tags).
//
// Values: objects, arrays, strings, booleans, null, numbers (integers and
// floats alike: beyond 2^53 an integer is rounded to the nearest double,
// as JSON.parse does), and CBOR byte strings and MessagePack binary as
// Uint8Array (a MessagePack Uint8Array is a view into the message's
// bytes). A key "__proto__" is an own key like any other (both libraries
// would refuse or rename it: a tree that holds one is decoded on a slower
// path that restores it).

const textDecoder = new TextDecoder()

/** The codec names: the option after the verb ($sync.cbor/F), and mote-codec. */
export const codecNames = Object.freeze(['json', 'cbor', 'msgpack'])

/** The deepest nesting decodeTree accepts unless told otherwise. */
export const defaultMaxDepth = 256

/** DecodeError is thrown for a payload that is not a tree in its codec. */
export class DecodeError extends Error {
  constructor(codec, message) {
    super(`mote: ${codec}: ${message}`)
    this.name = 'DecodeError'
    this.codec = codec
  }
}

// The loaded libraries, by codec name; a promise while loading.
const libs = { json: null }
const loading = {}

function checkName(name) {
  if (!codecNames.includes(name)) {
    throw new RangeError(`mote: codec ${JSON.stringify(name)}: want one of ${codecNames.join(', ')}`)
  }
}

/**
 * loadCodec resolves once the codec's library is loaded (at once for
 * JSON). It rejects for an unknown name or a library that cannot be
 * loaded; a later call tries again.
 */
export function loadCodec(name) {
  checkName(name)
  if (name in libs) {
    return Promise.resolve()
  }
  if (!loading[name]) {
    const url = name === 'cbor' ? './cbor-x.esm.js' : './msgpack.esm.js'
    loading[name] = import(url).then(
      (mod) => { libs[name] = name === 'cbor' ? cborLib(mod) : msgpackLib(mod) },
      (err) => {
        delete loading[name]
        throw new Error(`mote: codec ${name}: cannot load ${url}: ${err.message || err}`)
      })
  }
  return loading[name]
}

/** codecLoaded reports whether decodeTree and encodeTree can use codec name now. */
export function codecLoaded(name) {
  return name in libs
}

function lib(name) {
  checkName(name)
  if (!(name in libs)) {
    throw new Error(`mote: codec ${name} is not loaded: await loadCodec('${name}') first`)
  }
  return libs[name]
}

/**
 * encodeTree encodes a tree for a tree publish: a string for JSON, a
 * Uint8Array otherwise. In MessagePack, as in JSON, a key whose value is
 * undefined is left out; BigInt values travel as 64-bit integers.
 */
export function encodeTree(name, value) {
  if (name === 'json') {
    return JSON.stringify(value)
  }
  return lib(name).encode(value)
}

/**
 * decodeTree decodes a tree payload (a Uint8Array; MQTT.js hands a Buffer,
 * which is one) in codec name, or throws a DecodeError. options.maxDepth
 * bounds the nesting of CBOR and MessagePack (default defaultMaxDepth).
 */
export function decodeTree(name, payload, { maxDepth = defaultMaxDepth } = {}) {
  if (name === 'json') {
    try {
      return JSON.parse(textDecoder.decode(payload))
    } catch (err) {
      throw new DecodeError(name, err.message)
    }
  }
  const l = lib(name)
  const bytes = payload instanceof Uint8Array && payload.constructor === Uint8Array
    ? payload
    : new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength) // a Buffer: its bytes as a plain Uint8Array
  const proto = (name === 'cbor' ? checkCBOR : checkMsgPack)(bytes, maxDepth)
  try {
    return l.decode(bytes, proto)
  } catch (err) {
    throw new DecodeError(name, err.message)
  }
}

// A random stand-in for the key "__proto__" on the slow path: no payload
// can hold it by chance, or on purpose (it is not known outside).
const protoStandIn = '\u0000__proto__\u0000' + Math.random().toString(36).slice(2) + Date.now().toString(36)

// restore rebuilds, below v, every object that holds the stand-in, with
// "__proto__" as an own key in its place (and every Map as an object, for
// cbor-x's maps). Its depth is bounded by the checker's.
function restore(v) {
  if (v instanceof Map) {
    const o = {}
    for (const [k, x] of v) {
      Object.defineProperty(o, k, { value: restore(x), enumerable: true, writable: true, configurable: true })
    }
    return o
  }
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      v[i] = restore(v[i])
    }
    return v
  }
  if (v === null || typeof v !== 'object' || v instanceof Uint8Array) {
    return v
  }
  const o = {}
  for (const k of Object.keys(v)) {
    Object.defineProperty(o, k === protoStandIn ? '__proto__' : k, { value: restore(v[k]), enumerable: true, writable: true, configurable: true })
  }
  return o
}

function cborLib({ Decoder, Encoder, setSizeLimits }) {
  const opts = { useRecords: false, int64AsNumber: true }
  const fast = new Decoder({ ...opts, mapsAsObjects: true })
  const slow = new Decoder({ ...opts, mapsAsObjects: false }) // Maps, which keep "__proto__"
  const enc = new Encoder({ useRecords: false, tagUint8Array: false, variableMapSize: true })
  return {
    decode(bytes, proto) {
      const n = Math.max(bytes.length, 1)
      setSizeLimits({ maxArraySize: n, maxMapSize: n, maxObjectSize: n })
      return proto ? restore(slow.decode(bytes)) : fast.decode(bytes)
    },
    encode: (v) => enc.encode(v),
  }
}

function msgpackLib({ Decoder, Encoder }) {
  // Extension types never reach the library (the checker refuses them);
  // were one to, this codec refuses it instead of building a Date.
  const noExt = {
    tryToEncode: () => null,
    decode: (data, type) => { throw new Error(`extension type ${type} refused`) },
  }
  const fast = new Decoder({ extensionCodec: noExt })
  const slow = new Decoder({
    extensionCodec: noExt,
    keyDecoder: { // "__proto__", which the library refuses, as the stand-in
      canBeCached: () => true,
      decode: (b, offset, n) => {
        const s = textDecoder.decode(b.subarray(offset, offset + n))
        return s === '__proto__' ? protoStandIn : s
      },
    },
  })
  const enc = new Encoder({ ignoreUndefined: true, useBigInt64: true }) // a Date as the timestamp extension, which the broker refuses
  return {
    decode(bytes, proto) {
      const d = proto ? slow : fast
      d.maxStrLength = d.maxBinLength = d.maxArrayLength = d.maxMapLength = bytes.length
      d.maxExtLength = 0
      return proto ? restore(d.decode(bytes)) : d.decode(bytes)
    },
    encode: (v) => enc.encode(v),
  }
}

// isProto reports whether b[i:i+9] is "__proto__".
function isProto(b, i) {
  const p = [0x5f, 0x5f, 0x70, 0x72, 0x6f, 0x74, 0x6f, 0x5f, 0x5f]
  for (let j = 0; j < 9; j++) {
    if (b[i + j] !== p[j]) return false
  }
  return true
}

// The checkers walk the items with a stack of how many each open
// container still holds (a map counts its keys and values), and return
// whether some key is "__proto__".

function checkCBOR(b, maxDepth) {
  const fail = (i, msg) => { throw new DecodeError('cbor', `${msg} at byte ${i}`) }
  const n = b.length
  const left = [] // items still to come in each open container
  const isMap = []
  let proto = false
  let i = 0
  do {
    if (i >= n) fail(i, 'truncated')
    const at = i
    const ib = b[i++]
    const major = ib >> 5
    const ai = ib & 31
    let arg = ai
    if (ai >= 24) {
      if (ai > 27) fail(at, ai === 31 ? 'indefinite length refused' : 'reserved additional information')
      const size = 1 << (ai - 24)
      if (size > n - i) fail(at, 'truncated')
      if (major !== 7) {
        arg = 0
        for (let j = 0; j < size; j++) arg = arg * 256 + b[i + j]
      }
      i += size
    }
    const d = left.length
    if (d > 0 && isMap[d - 1] && left[d - 1] % 2 === 0 && major !== 3) {
      fail(at, 'map key is not a text string')
    }
    switch (major) {
      case 0: case 1: // integers
        break
      case 2: case 3: // bytes, text
        if (arg > n - i) fail(at, `declared length ${arg} exceeds the ${n - i} bytes left`)
        if (major === 3 && arg === 9 && d > 0 && isMap[d - 1] && left[d - 1] % 2 === 0 && isProto(b, i)) proto = true
        i += arg
        break
      case 4: case 5: { // array, map
        const items = major === 5 ? arg * 2 : arg
        if (items > n - i) fail(at, `declared ${major === 5 ? 'map' : 'array'} of ${arg} exceeds the ${n - i} bytes left`)
        if (d + 1 > maxDepth) fail(at, `deeper than ${maxDepth}`)
        if (items > 0) {
          left.push(items)
          isMap.push(major === 5)
          continue // its items come next
        }
        break
      }
      case 6:
        fail(at, `tag ${arg} refused`)
        break
      default: // 7: false, true, null and floats only
        if (ai < 20 || ai === 23 || ai === 24) fail(at, ai === 23 ? 'undefined refused' : 'simple value refused')
    }
    // One item is done: count it in its container, closing those it fills.
    while (left.length > 0 && --left[left.length - 1] === 0) {
      left.pop()
      isMap.pop()
    }
  } while (left.length > 0)
  if (i !== n) fail(i, `${n - i} bytes after the tree`)
  return proto
}

function checkMsgPack(b, maxDepth) {
  const fail = (i, msg) => { throw new DecodeError('msgpack', `${msg} at byte ${i}`) }
  const n = b.length
  const left = []
  const isMap = []
  let proto = false
  let i = 0
  const uint = (size) => { // a big-endian length after the head byte
    if (size > n - i) fail(i, 'truncated')
    let v = 0
    for (let j = 0; j < size; j++) v = v * 256 + b[i + j]
    i += size
    return v
  }
  do {
    if (i >= n) fail(i, 'truncated')
    const at = i
    const h = b[i++]
    const d = left.length
    const key = d > 0 && isMap[d - 1] && left[d - 1] % 2 === 0
    let str = -1 // a string's length, -1 for anything else
    let bin = -1
    let items = -1 // a container's items
    let mapOf = false
    if (h <= 0x7f || h >= 0xe0) { // fixints
    } else if (h <= 0x8f) {
      items = (h & 15) * 2
      mapOf = true
    } else if (h <= 0x9f) {
      items = h & 15
    } else if (h <= 0xbf) {
      str = h & 31
    } else {
      switch (h) {
        case 0xc0: case 0xc2: case 0xc3: break // nil, false, true
        case 0xc1: fail(at, 'the unused format 0xc1 refused'); break
        case 0xc4: case 0xc5: case 0xc6: bin = uint(1 << (h - 0xc4)); break
        case 0xc7: case 0xc8: case 0xc9:
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: fail(at, 'extension type refused'); break
        case 0xca: uint(4); break // float32
        case 0xcb: uint(8); break // float64
        case 0xcc: case 0xcd: case 0xce: case 0xcf: uint(1 << (h - 0xcc)); break
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: uint(1 << (h - 0xd0)); break
        case 0xd9: case 0xda: case 0xdb: str = uint(1 << (h - 0xd9)); break
        case 0xdc: items = uint(2); break
        case 0xdd: items = uint(4); break
        case 0xde: items = uint(2) * 2; mapOf = true; break
        case 0xdf: items = uint(4) * 2; mapOf = true; break
      }
    }
    if (key && str < 0) fail(at, 'map key is not a string')
    if (str >= 0 || bin >= 0) {
      const len = str >= 0 ? str : bin
      if (len > n - i) fail(at, `declared length ${len} exceeds the ${n - i} bytes left`)
      if (key && len === 9 && isProto(b, i)) proto = true
      i += len
    } else if (items >= 0) {
      if (items > n - i) fail(at, `declared ${mapOf ? 'map' : 'array'} of ${mapOf ? items / 2 : items} exceeds the ${n - i} bytes left`)
      if (d + 1 > maxDepth) fail(at, `deeper than ${maxDepth}`)
      if (items > 0) {
        left.push(items)
        isMap.push(mapOf)
        continue
      }
    }
    while (left.length > 0 && --left[left.length - 1] === 0) {
      left.pop()
      isMap.pop()
    }
  } while (left.length > 0)
  if (i !== n) fail(i, `${n - i} bytes after the tree`)
  return proto
}
