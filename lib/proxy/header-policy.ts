import { isIP } from 'node:net'
import type { FastifyRequest } from 'fastify'
import type { Dispatcher } from 'undici'
import { BadHeaderError } from '../errors'
import { INVALID_VALUE, TOKEN, validHeaderValue } from '../header-syntax'
import type { HeaderPolicyConfig, HeaderValue } from '../options/config'

/**
 * Security policies for the hop upstream: which headers go up and come back (paths are
 * checked in paths.ts). Each pool compiles its options into one `HeaderPolicy` at creation;
 * the forwarder applies it to every request and response with no per-request closures.
 */

type Headers = Record<string, string | string[] | number | undefined>

// RFC 9110 7.6.1, plus the proxy-era names every proxy strips
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade'])

// HTTP2-Settings is connection-specific too (RFC 9113 §8.2.2), a part of an h2c upgrade the
// gateway never passes on; Node's HTTP/2 client throws on it (see dropConnectionHeaders)
const REQUEST_HOP_BY_HOP = [...HOP_BY_HOP, 'http2-settings']

/**
 * The headers Node's HTTP/2 client refuses (RFC 9113 §8.2.2: connection-specific), `te`
 * unless it is `trailers`: the request would fail as the gateway's own fault (see
 * Http2Client). The policy strips them all; what a caller's rewrite or `headers.set`
 * adds after it is dropped here, as over HTTP/1.1 the policy would have.
 */
const HTTP2_REFUSED = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'http2-settings']

/** Removes from the headers of a request sent over HTTP/2 those Node's HTTP/2 client would throw on. */
export function dropConnectionHeaders (headers: Headers): void {
  for (const name of HTTP2_REFUSED) if (headers[name] !== undefined) headers[name] = undefined
  if (headers.te !== undefined && headers.te !== 'trailers') headers.te = undefined
}

// What proxies and frameworks read as the client's address, port, prefix or original URL
// (IIS and Symfony route by X-Original-URL / X-Rewrite-URL). The gateway sends none of
// them: a client's copy would be trusted upstream as the gateway's word. A pool's
// `headers.set` runs after this and may set them.
const CLIENT_FORWARDING = ['x-real-ip', 'true-client-ip', 'x-client-ip', 'x-forwarded-port', 'x-forwarded-prefix', 'x-original-url', 'x-rewrite-url']
// Rebuilt by the forwarding policy; with 'none', the client's copies are dropped.
const FORWARDING = ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded']

// host[:port] as a forwarding header may carry it: a DNS-style name or IPv4, or [IPv6]
const HOST = /^(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/
// RFC 3986 scheme (with trustProxy, Fastify takes the protocol from X-Forwarded-Proto as sent)
const SCHEME = /^[A-Za-z][A-Za-z0-9+.-]*$/
// RFC 7239 6.3: an obfuscated node, or `unknown`
const OBFUSCATED_NODE = /^(?:_[A-Za-z0-9._-]+|unknown)$/i

/** The header names a `Connection` header lists (lower case), or undefined when it lists none. */
function listedIn (connection: unknown): Set<string> | undefined {
  if (typeof connection !== 'string' || connection === 'keep-alive' || connection === 'close') return undefined
  const names = new Set<string>()
  for (const name of connection.split(',')) {
    const trimmed = name.trim().toLowerCase()
    if (trimmed !== '') names.add(trimmed)
  }
  return names
}

/**
 * Request side: blanks the hop-by-hop headers. reply-from has already removed every
 * header the client's `Connection` names (before any rewrite runs), so only the fixed
 * names are left to check. Set to undefined rather than deleted (undici skips undefined
 * values), which keeps the object's fast shape for the copies reply-from and undici make.
 */
export function stripHopByHop (headers: Headers): void {
  for (const name of REQUEST_HOP_BY_HOP) if (headers[name] !== undefined) headers[name] = undefined
}

/**
 * Prepares the headers of a request to a target of a pool with `http2`: without those
 * Node's HTTP/2 client throws on (see dropConnectionHeaders), with the client's
 * `TE: trailers`.
 */
export function http2Request (options: Dispatcher.DispatchOptions, request?: FastifyRequest): void {
  const headers = options.headers
  if (headers != null && typeof headers === 'object' && !Array.isArray(headers)) {
    dropConnectionHeaders(headers as Record<string, string | undefined>)
    // the one TE HTTP/2 allows, which gRPC servers may ask for: the client takes the
    // trailers the target sends (see acceptsTrailers)
    if (request !== undefined && takesTrailers(request.headers.te)) (headers as Record<string, string>).te = 'trailers'
  }
}

/** true when a TE header lists `trailers` */
function takesTrailers (te: unknown): boolean {
  return typeof te === 'string' && /(?:^|,)\s*trailers\s*(?:[,;]|$)/i.test(te)
}

/**
 * true when the client takes trailers: any HTTP/2 client (its framing carries them), an
 * HTTP/1.1 one that said so (`TE: trailers`, RFC 9110 §10.1.4; they go in a chunked body).
 */
export function acceptsTrailers (request: FastifyRequest): boolean {
  return request.raw.httpVersionMajor === 2 || takesTrailers(request.headers.te)
}

/** A client's response, which the target's trailers are added to. */
export interface TrailerSink {
  readonly writableEnded: boolean
  addTrailers (headers: Record<string, string | string[]>): void
}

// Fields a trailer may not carry (RFC 9110 §6.5.1: framing, routing, authentication,
// controls, and what the response's headers settle), as well as the hop-by-hop ones
const NOT_TRAILERS = new Set([
  ...HOP_BY_HOP, 'content-length', 'content-type', 'content-encoding', 'content-range', 'host', 'authorization',
  'set-cookie', 'cache-control', 'expect', 'max-forwards', 'range', 'age', 'expires', 'date', 'location',
  'retry-after', 'vary', 'www-authenticate', 'proxy-authenticate', 'http2-settings'
])

/**
 * Adds a target's trailers to the client's response, without the fields no trailer may
 * carry and any Node would refuse to send; nothing when the response is over.
 */
export function passTrailers (sink: TrailerSink, trailers: Record<string, string | string[] | undefined> | null | undefined): void {
  if (trailers == null) return
  let kept: Record<string, string | string[]> | undefined
  for (const name in trailers) {
    const value = trailers[name]
    if (value === undefined || name.charCodeAt(0) === 58 || NOT_TRAILERS.has(name) || !TOKEN.test(name) || !validHeaderValue(value)) continue
    (kept ??= {})[name] = value
  }
  if (kept !== undefined && !sink.writableEnded) sink.addTrailers(kept)
}

/** Response side: the headers without hop-by-hop ones (a new object only when one is there). */
export function withoutHopByHop (headers: Headers): Headers {
  const listed = listedIn(headers.connection)
  let found = false
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || listed?.has(name) === true) {
      found = true
      break
    }
  }
  if (!found) return headers
  const kept: Headers = {}
  for (const name in headers) {
    if (!HOP_BY_HOP.has(name) && listed?.has(name) !== true) kept[name] = headers[name]
  }
  return kept
}

/** How a header that failed a check is named in the error: never by its value, nor by a name that is not a token. */
function badHeader (side: 'request' | 'response', name: string): InstanceType<typeof BadHeaderError> {
  return new BadHeaderError(TOKEN.test(name) ? `${side} header "${name}"` : `a ${side} header name`)
}

/**
 * Sets the policy's headers. Fixed values were checked at register; what a function
 * returns (from the request, perhaps) is checked here, and only that: a value Node or
 * undici would refuse becomes the gateway's own error instead of a throw deep in a stream
 * callback (response) or a failure blamed on the target (request).
 */
function applySet (headers: Headers, set: Array<[string, HeaderValue]>, request: FastifyRequest, side: 'request' | 'response'): void {
  for (const [name, value] of set) {
    if (typeof value !== 'function') {
      headers[name] = value
      continue
    }
    const resolved = value(request)
    if (resolved === undefined) delete headers[name]
    else if (INVALID_VALUE.test(resolved)) throw badHeader(side, name)
    else headers[name] = resolved
  }
}

/**
 * Throws FST_UPSTREAM_BAD_HEADER when Node would refuse to send `headers` to the client
 * (for what a caller's own `rewriteHeaders` returned: its names and values are unchecked).
 */
export function checkResponseHeaders (headers: Headers): void {
  for (const name in headers) {
    // pseudo-headers are never copied to the reply (see the forwarder)
    if (name.charCodeAt(0) === 58) continue
    const value = headers[name]
    if (!TOKEN.test(name) || (value !== undefined && INVALID_VALUE.test(value as string))) throw badHeader('response', name)
  }
}

/** The host for X-Forwarded-Host and `host=`, or undefined when it is no plain host[:port]. */
function forwardedHost (host: string): string | undefined {
  return HOST.test(host) ? host : undefined
}

/** The scheme for X-Forwarded-Proto and `proto=`, or undefined when it is none. */
function forwardedProto (proto: string | undefined): string | undefined {
  return proto === 'http' || proto === 'https' || (proto !== undefined && SCHEME.test(proto)) ? proto : undefined
}

/**
 * One address as an RFC 7239 node: IPv4 as it is, IPv6 bracketed and quoted, `unknown` or
 * an obfuscated `_name` kept; anything else (a trusted hop may have sent any text) becomes
 * `unknown`, so that no entry can add parameters or elements of its own.
 */
function forwardedNode (address: string): string {
  const family = isIP(address)
  if (family === 4) return address
  if (family === 6) return `"[${address}]"`
  if (address.charCodeAt(0) === 91 && address.charCodeAt(address.length - 1) === 93 && isIP(address.slice(1, -1)) === 6) return `"${address}"`
  return OBFUSCATED_NODE.test(address) ? address : 'unknown'
}

export class HeaderPolicy {
  private readonly host: string
  private readonly xForwarded: boolean
  private readonly forwarded: boolean
  private readonly requestSet: Array<[string, HeaderValue]>
  private readonly requestRemove: string[]
  private readonly responseSet: Array<[string, HeaderValue]>
  private readonly responseRemove: string[]

  constructor (config: HeaderPolicyConfig) {
    this.host = config.host
    this.xForwarded = config.forwardedHeaders === 'x-forwarded' || config.forwardedHeaders === 'both'
    this.forwarded = config.forwardedHeaders === 'forwarded' || config.forwardedHeaders === 'both'
    this.requestSet = Object.entries(config.requestSet).map(([k, v]) => [k.toLowerCase(), v])
    this.requestRemove = config.requestRemove.map((k) => k.toLowerCase())
    this.responseSet = Object.entries(config.responseSet).map(([k, v]) => [k.toLowerCase(), v])
    this.responseRemove = config.responseRemove.map((k) => k.toLowerCase())
  }

  /**
   * The headers sent upstream. The forwarding headers are the gateway's own: built from
   * what Fastify's `trustProxy` trusts of the client's (and only when well formed), or
   * removed; the client's copies never pass as sent.
   */
  request (request: FastifyRequest, headers: Headers): Headers {
    stripHopByHop(headers)
    // Node has already answered `Expect: 100-continue` to the client, and undici refuses
    // to send the header: left in, any client could turn a request into a 502 counted
    // against a healthy target (and eject it with passive checks on)
    if (headers.expect !== undefined) headers.expect = undefined
    for (const name of CLIENT_FORWARDING) if (headers[name] !== undefined) headers[name] = undefined
    if (this.host === 'pass') headers.host = request.headers.host
    else if (this.host !== 'target') headers.host = this.host
    if (this.xForwarded || this.forwarded) {
      const peer = request.raw.socket?.remoteAddress ?? ''
      // Fastify's `ips` (with trustProxy): the peer, then each trusted hop, ending with the
      // first address it does not trust: the client as far as can be told
      const ips = (request as FastifyRequest & { ips?: string[] }).ips
      const proto = forwardedProto(request.protocol)
      const host = forwardedHost(request.host)
      if (this.xForwarded) {
        let chain = peer
        if (ips !== undefined && ips.length > 1) {
          chain = ips[ips.length - 1]
          for (let i = ips.length - 2; i >= 0; i--) chain += ', ' + ips[i]
        }
        headers['x-forwarded-for'] = chain
        headers['x-forwarded-proto'] = proto
        headers['x-forwarded-host'] = host
      } else {
        headers['x-forwarded-for'] = undefined
        headers['x-forwarded-proto'] = undefined
        headers['x-forwarded-host'] = undefined
      }
      if (this.forwarded) {
        let hops: string
        if (ips === undefined || ips.length === 0) {
          hops = 'for=' + forwardedNode(peer)
        } else {
          hops = 'for=' + forwardedNode(ips[ips.length - 1])
          for (let i = ips.length - 2; i >= 0; i--) hops += ', for=' + forwardedNode(ips[i])
        }
        if (proto !== undefined) hops += ';proto=' + proto
        if (host !== undefined) hops += ';host="' + host + '"'
        headers.forwarded = hops
      } else {
        headers.forwarded = undefined
      }
    } else {
      for (const name of FORWARDING) if (headers[name] !== undefined) headers[name] = undefined
    }
    for (const name of this.requestRemove) headers[name] = undefined
    applySet(headers, this.requestSet, request, 'request')
    return headers
  }

  /** The headers sent back to the client. */
  response (request: FastifyRequest, headers: Headers): Headers {
    const kept = withoutHopByHop(headers)
    for (const name of this.responseRemove) delete kept[name]
    applySet(kept, this.responseSet, request, 'response')
    return kept
  }
}
