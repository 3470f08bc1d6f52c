// Request mirroring (shadow traffic): a sampled share of a pool's or a mount's requests is
// copied to another pool, whose answers are read and dropped. The copy must never cost the
// client anything: it goes out only after the main attempt has been dispatched (on the
// next turn of the event loop, or once a streamed body has been read whole by the main
// attempt, see RequestBody.copyTo), it fails on its own, and a slow or dead mirror pool
// holds at most `maxConcurrent` copies (their bodies included) before copies are dropped.
//
// Counted in the mirror pool's `poolProxy().mirrors`: `inflight` from the decision to copy
// (a streamed body waiting to be read whole holds its place) to the copy's end; `sent` when
// the mirror target answered in full, whatever the status (a 5xx was still delivered);
// `failed` for a transport error, a reset or a timeout; `dropped` for a sampled request not
// copied (mirror pool full, no target, body over the limit or cut off, headers refused).
// Unsampled requests, and requests already carrying the marker header (a copy come back
// through the gateway), count nothing; neither does a mirror naming no pool.
import { Readable } from 'node:stream'
import type { ServerResponse } from 'node:http'
import { stringify } from 'node:querystring'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Dispatcher } from 'undici'
import type { Logger } from '../contracts'
import type { RouteOptions } from '../options/types'
import type { MirrorConfig } from '../traffic/schema'
import type { Pool } from '../upstream/pool'
import type { PoolRegistry } from '../upstream/registry'
import type { Target } from '../upstream/target'
import type { HeaderRecord, PreparedOptions } from './forward-options'
import { poolProxy, type Forwarding, type PoolProxy } from './forwarding'
import { http2Request } from './header-policy'
import { RequestBody, type BodyCopy } from './replayable-body'

type Counts = PoolProxy['mirrors']

/** The copy waiting for the streamed body of the request a response answers. */
const kCopy = Symbol('fastify-upstream.mirror-copy')
type ClientResponse = ServerResponse & { [kCopy]?: Copy }

/** The body of a copy: none (null), or the bytes and the content type reply-from would send. */
interface Payload { data: string | Uint8Array | null, type: string | undefined }
const NO_BODY: Payload = Object.freeze({ data: null, type: undefined })

const MEDIA_TYPE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+\/[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

/**
 * A body already in memory, as reply-from serialises it: `reply.forward`'s `body` option
 * (JSON unless a content type is given), else the parsed body (JSON for application/json,
 * as it is otherwise). Undefined when it cannot be sent as bytes.
 */
function payloadOf (request: FastifyRequest, prepared: PreparedOptions | null): Payload | undefined {
  const from = prepared?.from
  let data: unknown
  let type: string | undefined
  if (from !== undefined && from.body !== undefined) {
    if (from.body === null) return NO_BODY
    if (typeof from.contentType === 'string' && from.contentType !== '') {
      data = from.body
      type = from.contentType
    } else {
      data = JSON.stringify(from.body)
      type = 'application/json'
    }
  } else {
    data = request.body
    // reply-from sends nothing for an empty body
    if (data === undefined || data === null || data === '' || data === false || data === 0) return NO_BODY
    const header = request.headers['content-type']
    type = header === undefined ? 'application/octet-stream' : header.split(';', 1)[0].trim().toLowerCase()
    if (!MEDIA_TYPE.test(type)) return undefined
    if (type === 'application/json') data = JSON.stringify(data)
  }
  return typeof data === 'string' || data instanceof Uint8Array ? { data, type } : undefined
}

/**
 * The copy's headers: the client's, without hop-by-hop ones, through the mirror pool's
 * header policy (Host, forwarding headers, the pool's own), marked with `marker`.
 * Undefined when the policy refuses a value: the mirror pool's affair, never the client's.
 */
function copyHeaders (request: FastifyRequest, proxy: PoolProxy, marker: string): HeaderRecord | undefined {
  const source = request.headers
  const headers: HeaderRecord = {}
  // no HTTP/2 pseudo-headers
  for (const name in source) if (name.charCodeAt(0) !== 58) headers[name] = source[name]
  // the names the client's Connection header lists are hop-by-hop too
  const listed = source.connection
  if (listed !== undefined) for (const name of listed.split(',')) if (name.trim() !== '') headers[name.trim().toLowerCase()] = undefined
  // undici sets Host from the connection unless the policy sets one; the length is the copy's
  headers.host = undefined
  headers['content-length'] = undefined
  try {
    const policed = proxy.headers.request(request, headers)
    policed[marker] = '1'
    return policed
  } catch {
    return undefined
  }
}

/**
 * The copy's path and query on `target`, as reply-from builds the main request's: the
 * path the main request is sent to, with the client's own query when it carries none
 * (or reply.forward's `queryString` option).
 */
function copyPath (target: Target, path: string, request: FastifyRequest, queryString: unknown): string {
  const url = new URL(target.origin + target.basePath + path)
  const raw = request.raw.url as string
  let query: string
  if (typeof queryString === 'function') {
    const made: unknown = queryString(url.search, raw, request)
    query = typeof made === 'string' && made !== '' ? '?' + made : ''
  } else if (typeof queryString === 'object' && queryString !== null) {
    const made = stringify(queryString as Record<string, string>)
    query = made === '' ? '' : '?' + made
  } else if (url.search !== '') {
    query = url.search
  } else {
    const at = raw.indexOf('?')
    query = at > 0 ? raw.slice(at) : ''
  }
  return url.pathname + query
}

// shared callbacks (no closure per copy)
function sendCopy (copy: Copy): void { copy.send() }
function expireCopy (copy: Copy): void { copy.expire() }
function onClientClosed (this: ClientResponse): void { this[kCopy]?.bodyRecorded(null) }

/**
 * One copy of one request: its undici handler (the answer is read and dropped) and, for a
 * streamed body, the recording's recipient. It ends once, counted sent, failed or dropped.
 */
class Copy implements Dispatcher.DispatchHandler, BodyCopy {
  private readonly config: MirrorConfig
  private readonly pool: Pool
  private readonly counts: Counts
  private readonly request: FastifyRequest
  private readonly forwarding: Forwarding
  private readonly headers: HeaderRecord
  private body: string | Uint8Array | null
  private target: Target | null = null
  private timer: NodeJS.Timeout | undefined = undefined
  private controller: Dispatcher.DispatchController | null = null
  private expired = false
  private ended = false
  /** the client's response while the copy waits for the streamed body */
  private response: ClientResponse | null = null

  constructor (pool: Pool, config: MirrorConfig, request: FastifyRequest, forwarding: Forwarding, headers: HeaderRecord, body: string | Uint8Array | null) {
    this.config = config
    this.pool = pool
    this.counts = poolProxy(pool).mirrors
    this.request = request
    this.forwarding = forwarding
    this.headers = headers
    this.body = body
    this.counts.inflight++
  }

  get limit (): number {
    return this.config.body
  }

  /** Waits for the body the client streams to the main target (see RequestBody.copyTo). */
  waitForBody (body: RequestBody, response: ClientResponse): void {
    body.copyTo(this)
    this.response = response
    response[kCopy] = this
    response.once('close', onClientClosed)
  }

  /** The whole streamed body, or null when it cannot be had (the client's answer was sent first, say). */
  bodyRecorded (body: Buffer | null): void {
    const response = this.response
    if (response === null) return
    this.response = null
    response[kCopy] = undefined
    if (body === null) {
      this.end('dropped')
      return
    }
    this.body = body
    this.headers['content-length'] = String(body.length)
    setImmediate(sendCopy, this)
  }

  /** Sends the copy to a target the mirror pool picks (its balancer, health and limits). */
  send (): void {
    const target = this.pool.pick(this.request)
    const connection = target === undefined ? undefined : target.connection ?? target.connections?.connect(target)
    if (target === undefined || connection === undefined) {
      this.end('dropped')
      return
    }
    const from = (this.forwarding.prepared as PreparedOptions).from
    let path: string
    try {
      path = copyPath(target, this.forwarding.path, this.request, from.queryString)
    } catch {
      this.end('dropped')
      return
    }
    // in the target's in-flight count, as any request: least-request, limits and drains see it
    this.target = target
    target.start()
    const timeout = this.config.timeout
    this.timer = setTimeout(expireCopy, timeout, this)
    this.timer.unref()
    const options = {
      path,
      // reply.forward's `method` option, as reply-from sends it
      method: (typeof from.method === 'string' && from.method !== '' ? from.method : this.request.raw.method) as Dispatcher.HttpMethod,
      headers: this.headers as Record<string, string>,
      body: this.body,
      headersTimeout: timeout,
      bodyTimeout: timeout,
      // a fixed name per target (see UpstreamDispatcher)
      servername: target.servername
    } as Dispatcher.DispatchOptions
    if (this.pool.config.http2 !== false) http2Request(options)
    try {
      connection.dispatch(options, this)
    } catch (error) {
      this.onResponseError(null, error as Error)
    }
  }

  /** The copy's whole time is up: aborted now, or as soon as undici starts it. */
  expire (): void {
    this.timer = undefined
    this.expired = true
    if (this.controller !== null) this.onRequestStart(this.controller)
  }

  onRequestStart (controller: Dispatcher.DispatchController): void {
    this.controller = controller
    if (this.expired) controller.abort(new Error(`mirrored copy timed out after ${this.config.timeout} ms`))
  }

  // the answer is read and dropped
  onResponseData (): void {}

  onResponseEnd (): void {
    this.end('sent')
  }

  onResponseError (_controller: unknown, _error: Error): void {
    this.end('failed')
  }

  /** The copy's end, counted once (a dropped copy has no target and no timer). */
  private end (outcome: 'sent' | 'failed' | 'dropped'): void {
    if (this.ended) return
    this.ended = true
    clearTimeout(this.timer)
    this.timer = undefined
    this.controller = null
    this.body = null
    this.target?.finish()
    this.counts.inflight--
    this.counts[outcome]++
  }
}

/**
 * Copies the request `reply` answers to `config`'s pool when it is sampled; called by the
 * forwarder just before the main attempt is sent, and never throws.
 */
export function mirrorRequest (registry: PoolRegistry, reply: FastifyReply, forwarding: Forwarding, config: MirrorConfig): void {
  if (Math.random() >= config.fraction) return
  const request = reply.request
  if (request.headers[config.header] !== undefined) return
  const pool = registry.get(config.pool)
  if (pool === undefined) return
  const proxy = poolProxy(pool)
  const counts = proxy.mirrors
  if (counts.inflight >= config.maxConcurrent) {
    counts.dropped++
    return
  }
  const body = request.body
  // reply.forward's `body` option replaces the client's, as reply-from sends it
  const streamed = body instanceof Readable && forwarding.prepared?.from.body === undefined
  const payload = streamed ? NO_BODY : payloadOf(request, forwarding.prepared)
  // a body over the limit is not copied (a streamed one that says so is not even recorded)
  const size = streamed ? Number(request.headers['content-length'] ?? 0) : Buffer.byteLength(payload?.data ?? '')
  const headers = payload === undefined || size > config.body ? undefined : copyHeaders(request, proxy, config.header)
  if (payload === undefined || headers === undefined) {
    counts.dropped++
    return
  }
  if (payload.data !== null) {
    headers['content-length'] = String(Buffer.byteLength(payload.data))
    headers['content-type'] = payload.type
  }
  const copy = new Copy(pool, config, request, forwarding, headers, payload.data)
  if (streamed) {
    // recorded as it streams to the main target: the RequestBody the retries may have made, or one of its own
    const recording = forwarding.body ?? (forwarding.body = new RequestBody(body, false))
    copy.waitForBody(recording, reply.raw as ClientResponse)
  } else {
    setImmediate(sendCopy, copy)
  }
}

/**
 * Warns of each mirror that names a pool that does not exist (yet): its copies are not
 * sent (nor counted) until a pool of that name is added.
 */
export function warnOfUnknownMirrors (log: Logger, registry: PoolRegistry, routes: readonly RouteOptions[]): void {
  const mirrors: Array<[string, string]> = []
  for (const pool of registry) if (pool.config.mirror !== undefined) mirrors.push([`upstreams.${pool.name}.mirror.pool`, pool.config.mirror.pool])
  routes.forEach((route, i) => { if (route.mirror !== undefined) mirrors.push([`routes[${i}].mirror.pool`, route.mirror.pool]) })
  for (const [field, name] of mirrors) {
    if (!registry.has(name)) log.warn({ field, pool: name }, `no pool "${name}" to mirror to: copies are sent once a pool of that name is added`)
  }
}
