import { Transform, type TransformCallback } from 'node:stream'
import type { FastifyRequest } from 'fastify'
import { BodyTooLargeError } from './errors'

/**
 * Security policies for the hop upstream: which headers go up and come back (paths are
 * checked in paths.ts). Each pool compiles its options into one `HeaderPolicy` at creation;
 * the forwarder applies it to every request and response with no per-request closures.
 */

type HeaderValue = string | ((request: FastifyRequest) => string | undefined)

export interface HeaderPolicyConfig {
  host: string
  forwardedHeaders: 'x-forwarded' | 'forwarded' | 'both' | 'none'
  requestSet: Record<string, HeaderValue>
  requestRemove: string[]
  responseSet: Record<string, HeaderValue>
  responseRemove: string[]
}

type Headers = Record<string, string | string[] | number | undefined>

// RFC 9110 7.6.1, plus the proxy-era names every proxy strips
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade'])

const REQUEST_HOP_BY_HOP = [...HOP_BY_HOP]

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

function applySet (headers: Headers, set: Array<[string, HeaderValue]>, request: FastifyRequest): void {
  for (const [name, value] of set) {
    const resolved = typeof value === 'function' ? value(request) : value
    if (resolved === undefined) delete headers[name]
    else headers[name] = resolved
  }
}

/** A quoted-string for Forwarded when the value needs it (IPv6, ports). */
function forwardedNode (address: string): string {
  return address.includes(':') ? `"[${address}]"` : address
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
   * The headers sent upstream. Client-sent forwarding headers are kept only as far as
   * Fastify's `trustProxy` trusts the hops that sent them; otherwise they are replaced.
   */
  request (request: FastifyRequest, headers: Headers): Headers {
    stripHopByHop(headers)
    // Node has already answered `Expect: 100-continue` to the client, and undici refuses
    // to send the header: left in, any client could turn a request into a 502 counted
    // against a healthy target (and eject it with passive checks on)
    if (headers.expect !== undefined) headers.expect = undefined
    if (this.host === 'pass') headers.host = request.headers.host
    else if (this.host !== 'target') headers.host = this.host
    if (this.xForwarded || this.forwarded) {
      const peer = request.raw.socket?.remoteAddress ?? ''
      // Fastify's `ips` (with trustProxy): the peer, then each trusted hop, ending with the
      // first address it does not trust: the client as far as can be told
      const ips = (request as FastifyRequest & { ips?: string[] }).ips
      const proto = request.protocol
      const host = request.host
      if (this.xForwarded) {
        headers['x-forwarded-for'] = ips === undefined || ips.length < 2 ? peer : [...ips].reverse().join(', ')
        headers['x-forwarded-proto'] = proto
        headers['x-forwarded-host'] = host
      } else {
        headers['x-forwarded-for'] = undefined
        headers['x-forwarded-proto'] = undefined
        headers['x-forwarded-host'] = undefined
      }
      if (this.forwarded) {
        const chain = ips === undefined || ips.length === 0 ? [peer] : [...ips].reverse()
        const hops = chain.map((address) => `for=${forwardedNode(address)}`)
        hops[hops.length - 1] += `;proto=${proto};host="${host.replace(/["\\]/g, '')}"`
        headers.forwarded = hops.join(', ')
      } else {
        headers.forwarded = undefined
      }
    }
    for (const name of this.requestRemove) headers[name] = undefined
    applySet(headers, this.requestSet, request)
    return headers
  }

  /** The headers sent back to the client. */
  response (request: FastifyRequest, headers: Headers): Headers {
    const kept = withoutHopByHop(headers)
    for (const name of this.responseRemove) delete kept[name]
    applySet(kept, this.responseSet, request)
    return kept
  }
}

// ---- bodies ---------------------------------------------------------------------------

/** Passes a streamed body through, failing with 413 once it grows past `limit` bytes. */
export class BodyLimit extends Transform {
  private readonly limit: number
  private seen = 0

  constructor (limit: number) {
    super()
    this.limit = limit
  }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.seen += chunk.length
    if (this.seen > this.limit) callback(new BodyTooLargeError(this.limit))
    else callback(null, chunk)
  }
}
