import { performance } from 'node:perf_hooks'
import { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { FastifyReplyFromHooks } from '@fastify/reply-from'
import { BadGatewayError, BadPathError, ConnectError, NoTargetError, OverloadedError, TimeoutError, UnknownPoolError } from './errors'
import { channels, type ProxyErrorEvent, type RetryEvent } from './events'
import type { PluginOptions } from './options'
import { countFailure } from './outlier-detector'
import type { UpstreamPool } from './pool'
import type { UpstreamRegistry } from './registry'
import { backoff, mayRetry } from './retry'
import { LazyBody } from './replayable-body'
import { buffersResponse, readWhole, type BufferedResponseSink } from './response-buffer'
import { isSafePath, originForm } from './paths'
import type { UpstreamDispatcher } from './dispatcher'
import type { Target } from './target'

/** Per-call options of `reply.forward`: `url` plus the per-call options of `reply.from`. */
export interface ForwardOptions extends FastifyReplyFromHooks {
  /** the path (and optional query) sent upstream; default: the request's own path */
  url?: string
  [option: string]: unknown
}

// reply-from's hook types are generic over every server type; the plugin works with the
// default HTTP/1 ones and hands the callbacks through untouched.
type ReplyFromOptions = Record<string, unknown>
interface UpstreamResponse { statusCode: number, headers: Record<string, unknown>, stream: Readable }
type OnResponse = (request: FastifyRequest, reply: FastifyReply, res: UpstreamResponse) => void
type OnError = (reply: FastifyReply, error: { error: Error }) => void
type HeaderRecord = Record<string, string | string[] | number | undefined>
type RewriteRequestHeaders = (request: FastifyRequest, headers: HeaderRecord) => HeaderRecord
type RewriteHeaders = (headers: HeaderRecord, request: FastifyRequest) => HeaderRecord

/**
 * Options prepared once (per route, or per `reply.forward` call with options): the object
 * handed to `reply.from`, with this module's callbacks in place of the user's, which are
 * kept beside it and called from there.
 */
export interface PreparedOptions {
  readonly from: ReplyFromOptions
  readonly onResponse: OnResponse | undefined
  readonly onError: OnError | undefined
  readonly rewriteRequestHeaders: RewriteRequestHeaders | undefined
  readonly rewriteHeaders: RewriteHeaders | undefined
}

// Per-request state lives in request decorations declared at register (stable shapes,
// no per-request closures or objects on the path without retries).
export const kTarget = Symbol('fastify-upstream.target')
export const kPool = Symbol('fastify-upstream.pool')
export const kStart = Symbol('fastify-upstream.start')
export const kPrepared = Symbol('fastify-upstream.prepared')
export const kPath = Symbol('fastify-upstream.path')
export const kRetries = Symbol('fastify-upstream.retries')
export const kTried = Symbol('fastify-upstream.tried')
export const kBody = Symbol('fastify-upstream.body')
export const kHeaders = Symbol('fastify-upstream.headers')

/** The request decorations, with their initial values. */
export const requestDecorations = [
  [kTarget, null], [kPool, null], [kStart, 0], [kPrepared, null], [kPath, ''], [kRetries, 0], [kTried, null], [kBody, null], [kHeaders, null]
] as const

interface ForwardState {
  [kTarget]: Target | null
  [kPool]: UpstreamPool | null
  [kStart]: number
  [kPrepared]: PreparedOptions | null
  [kPath]: string
  [kRetries]: number
  [kTried]: Target[] | null
  /** the client's body stream, when it is one and retries may need it again */
  [kBody]: Readable | null
  /** the response headers for the client, held until the answer is sent (see rewriteHeaders) */
  [kHeaders]: HeaderRecord | null
}

type StatefulRequest = FastifyRequest & ForwardState

type Hooks = Pick<PluginOptions, 'onSelect' | 'onProxyError' | 'onRetry'>

// Error codes of the connection phase: nothing was sent to the target.
const CONNECT_CODES = new Set([
  'ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT',
  // the target's connection pool closed (it was removed) before the request went out
  'UND_ERR_CLOSED', 'UND_ERR_DESTROYED'
])
const TLS_CODE = /^(ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO|HOSTNAME_MISMATCH)/

type MappedError = Error & { code: string, statusCode: number }

/** Maps what reply-from or undici reported to one of the plugin's stable errors. */
export function upstreamError (error: Error & { cause?: unknown }): MappedError {
  const cause = (error.cause ?? error) as Error & { code?: string }
  const code = cause.code ?? ''
  // the client's own fault, found while streaming its body: not the target's
  if (code === 'FST_UPSTREAM_BODY_TOO_LARGE') return cause as MappedError
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return new TimeoutError('no connection within the connect timeout', { cause })
  if (code === 'UND_ERR_HEADERS_TIMEOUT') return new TimeoutError('no response within the response timeout', { cause })
  if (code === 'UND_ERR_BODY_TIMEOUT') return new TimeoutError('the response body stalled past the idle timeout', { cause })
  if (CONNECT_CODES.has(code) || TLS_CODE.test(code)) return new ConnectError(code, { cause })
  return new BadGatewayError(code !== '' ? code : cause.message, { cause })
}

/** true when the failure happened before any byte of the request reached the target */
function neverSent (error: MappedError): boolean {
  const code = (error.cause as { code?: string } | undefined)?.code
  return error instanceof ConnectError || code === 'UND_ERR_CONNECT_TIMEOUT'
}

/** true when the request body can be sent again */
function bodyReplayable (request: StatefulRequest, nothingSent: boolean): boolean {
  const stream = request[kBody]
  if (stream !== null) return nothingSent && !stream.readableDidRead && !stream.destroyed
  // no body, or a parsed one that reply-from serialises anew
  return !(request.body instanceof Readable)
}

/** What reply-from copies to the reply itself: nothing (see rewriteHeaders). */
const NO_HEADERS: HeaderRecord = Object.freeze({})

/** Sets the response headers held for `request` on its reply (as reply-from would have). */
function applyHeaders (reply: FastifyReply, request: StatefulRequest): void {
  const headers = request[kHeaders] as HeaderRecord
  for (const name in headers) {
    // as reply-from: no HTTP/2 pseudo-headers
    if (name.charCodeAt(0) !== 58) reply.header(name, headers[name])
  }
}

/** The raw response of a retried request carries the pool whose retry budget it holds. */
type RawResponse = FastifyReply['raw'] & { [kPool]?: UpstreamPool }

// A shared listener, not a closure per request: when the response to a retried request
// closes (finished, failed or aborted), it gives back its retry budget.
function onRetriedResponseClosed (this: RawResponse): void {
  const retried = this[kPool]
  if (retried !== undefined) {
    this[kPool] = undefined
    retried.retriesInFlight--
  }
}

/** Glue to `@fastify/reply-from`: selects a target, proxies, retries, and accounts for the outcome. */
export class Forwarder implements BufferedResponseSink {
  private readonly registry: UpstreamRegistry
  private readonly dispatcher: UpstreamDispatcher
  private readonly hooks: Hooks
  readonly defaults: PreparedOptions

  constructor (registry: UpstreamRegistry, dispatcher: UpstreamDispatcher, hooks: Hooks) {
    this.registry = registry
    this.dispatcher = dispatcher
    this.hooks = hooks
    this.defaults = this.prepare(undefined)
  }

  prepare (options: ForwardOptions | undefined): PreparedOptions {
    const from: ReplyFromOptions = {
      ...options,
      onResponse: this.onResponse,
      onError: this.onError,
      // the pool's header policy first, then the caller's own rewrites
      rewriteRequestHeaders: this.rewriteRequestHeaders,
      rewriteHeaders: this.rewriteHeaders
    }
    // retries and failover are the plugin's own: reply-from would retry the same target
    // (its own retries are off for every method, see the registration in index.ts)
    delete from.url
    delete from.retryDelay
    delete from.retriesCount
    delete from.maxRetriesOn503
    return Object.freeze({
      from: Object.freeze(from),
      onResponse: options?.onResponse as OnResponse | undefined,
      onError: options?.onError as OnError | undefined,
      rewriteRequestHeaders: options?.rewriteRequestHeaders as RewriteRequestHeaders | undefined,
      rewriteHeaders: options?.rewriteHeaders as RewriteHeaders | undefined
    })
  }

  /**
   * Proxies the request of `reply` to a target of pool `name`; `path` is the path (and
   * optional query) to send, by default the request's own path.
   */
  forward (reply: FastifyReply, name: string, path: string | undefined, prepared: PreparedOptions, checked = false): FastifyReply {
    const request = reply.request as StatefulRequest
    const pool = this.registry.get(name)
    if (pool === undefined) return reply.send(new UnknownPoolError(name))
    const target = pool.pick(request)
    if (target === undefined) return this.unavailable(reply, pool)
    if (this.hooks.onSelect !== undefined || channels.select.hasSubscribers) {
      const event = { pool: name, target: pool.viewOf(target), request }
      this.hooks.onSelect?.(event)
      channels.select.publish(event)
    }
    if (path === undefined) {
      // an absolute-form request target (`GET http://host/path`) sends only its path
      const url = originForm(request.raw.url as string) ?? ''
      const query = url.indexOf('?')
      path = query === -1 ? url : url.slice(0, query)
    }
    // whatever the path came from, it may not climb out of where it points (a mount has
    // checked its own already)
    if (!checked) {
      const query = path.indexOf('?')
      if (!isSafePath(query === -1 ? path : path.slice(0, query))) return reply.send(new BadPathError())
    }
    request[kPool] = pool
    request[kPrepared] = prepared
    request[kPath] = path
    // keep a streamed body replayable when a retry may need it (and only then)
    if (request.body instanceof Readable && pool.config.retry.attempts > 0 && pool.targetList.length > 1) {
      request[kBody] = request.body
    }
    return this.send(reply, request, target)
  }

  /**
   * One attempt: the target takes the request in flight until undici reports the
   * exchange over (see Exchange), or at once if nothing was sent.
   */
  private send (reply: FastifyReply, request: StatefulRequest, target: Target): FastifyReply {
    request[kTarget] = target
    request[kStart] = performance.now()
    target.start()
    const body = request[kBody]
    if (body !== null) request.body = new LazyBody(body)
    const dispatcher = this.dispatcher
    dispatcher.target = target
    dispatcher.detector = (request[kPool] as UpstreamPool).detector
    try {
      return reply.from(target.origin + target.basePath + request[kPath], (request[kPrepared] as PreparedOptions).from as never)
    } finally {
      dispatcher.detector = undefined
      // still set: reply-from gave up before dispatching (a rewrite threw, say)
      if (dispatcher.target !== undefined) {
        dispatcher.target = undefined
        target.finish()
      }
    }
  }

  private unavailable (reply: FastifyReply, pool: UpstreamPool): FastifyReply {
    if (pool.saturated) {
      reply.header('retry-after', 1)
      return reply.send(new OverloadedError(pool.name))
    }
    const after = pool.retryAfter()
    if (after !== undefined) reply.header('retry-after', after)
    return reply.send(new NoTargetError(pool.name))
  }

  /**
   * Tries the request again on another target when the policy allows it; false when it
   * does not (the caller then answers with what it has).
   */
  private retry (reply: FastifyReply, failed: Target, reason: string, nothingSent: boolean): boolean {
    const request = reply.request as StatefulRequest
    const pool = request[kPool] as UpstreamPool
    // nobody to answer: a client that has gone gets no retry (nor holds retry budget)
    if (reply.sent || reply.raw.destroyed || this.registry.get(pool.name) !== pool) return false
    const facts = {
      retries: request[kRetries],
      method: request.raw.method as string,
      neverSent: nothingSent,
      bodyReplayable: bodyReplayable(request, nothingSent)
    }
    if (!mayRetry(pool.config.retry, pool, facts)) return false
    const tried = request[kTried] ?? (request[kTried] = [])
    tried.push(failed)
    // always another target (as NGINX's next upstream): the same one would likely fail again
    const next = pool.pick(request, tried)
    if (next === undefined) return false
    failed.retries++
    const retries = ++request[kRetries]
    const raw = reply.raw as RawResponse
    if (raw[kPool] === undefined) {
      raw[kPool] = pool
      pool.retriesInFlight++
      raw.once('close', onRetriedResponseClosed)
    }
    if (this.hooks.onRetry !== undefined || channels.retry.hasSubscribers) {
      const event: RetryEvent = { pool: pool.name, request, attempt: retries, from: pool.viewOf(failed), to: pool.viewOf(next), reason }
      this.hooks.onRetry?.(event)
      channels.retry.publish(event)
    }
    const delay = backoff(pool.config.retry, retries)
    if (delay === 0) {
      this.send(reply, request, next)
    } else {
      // while it waits, the request is in no target's in-flight count (nor sent anywhere
      // if the client leaves meanwhile); it still holds its retry budget
      setTimeout(() => {
        if (reply.raw.destroyed) return
        this.send(reply, request, next)
      }, delay)
    }
    return true
  }

  private readonly rewriteRequestHeaders = (request: FastifyRequest, headers: HeaderRecord): HeaderRecord => {
    const state = request as StatefulRequest
    const policed = (state[kPool] as UpstreamPool).headers.request(request, headers)
    const user = (state[kPrepared] as PreparedOptions).rewriteRequestHeaders
    return user === undefined ? policed : user(request, policed)
  }

  // The headers for the client are held on the request, and reply-from copies none: only
  // onResponse knows whether this answer goes out now, after its body has been read
  // whole, or not at all (a retry). Until then the reply carries nothing of it, whatever
  // else answers meanwhile (an error of the body, a handler timeout).
  private readonly rewriteHeaders = (headers: HeaderRecord, request: FastifyRequest): HeaderRecord => {
    const state = request as StatefulRequest
    const policed = (state[kPool] as UpstreamPool).headers.response(request, headers)
    const user = (state[kPrepared] as PreparedOptions).rewriteHeaders
    state[kHeaders] = user === undefined ? policed : user(policed, request)
    return NO_HEADERS
  }

  private readonly onResponse = (request: FastifyRequest, reply: FastifyReply, res: UpstreamResponse): void => {
    const state = request as StatefulRequest
    const target = state[kTarget] as Target
    const pool = state[kPool] as UpstreamPool
    const now = performance.now()
    target.observeLatency(now - state[kStart], now)
    const status = res.statusCode
    // a status that counts as a failure counts at once; a success counts once the whole
    // body has arrived (see Exchange)
    const detector = pool.detector
    if (detector !== undefined && detector.isFailureStatus(status)) countFailure(target, detector, now)
    if (pool.config.retry.statusCodes[status] === 1 && this.retry(reply, target, `status ${status}`, false)) {
      // drop this answer (its headers were never set on the reply)
      res.stream.resume()
      return
    }
    const user = (state[kPrepared] as PreparedOptions).onResponse
    if (user === undefined && buffersResponse(pool.config.responseBuffer, request.raw.method, status, state[kHeaders] as HeaderRecord)) {
      readWhole(res.stream, reply, this)
      return
    }
    applyHeaders(reply, state)
    if (user !== undefined) user(request, reply, res)
    else reply.send(res.stream)
  }

  readonly bodyRead = (reply: FastifyReply, body: Buffer): void => {
    applyHeaders(reply, reply.request as StatefulRequest)
    reply.send(body)
  }

  readonly bodyFailed = (reply: FastifyReply, error: Error): void => {
    // the exchange counted the failure (see Exchange); the client has seen nothing yet, so
    // the answer is a retry on another target or an error of the plugin's own
    this.failed(reply, upstreamError(error), false)
  }

  private readonly onError = (reply: FastifyReply, { error }: { error: Error }): void => {
    const request = reply.request as StatefulRequest
    const mapped = upstreamError(error)
    countFailure(request[kTarget] as Target, (request[kPool] as UpstreamPool).detector, performance.now())
    this.failed(reply, mapped, neverSent(mapped))
  }

  /** Answers an attempt that failed: with a retry when the policy allows, else with the error. */
  private failed (reply: FastifyReply, mapped: MappedError, nothingSent: boolean): void {
    const request = reply.request as StatefulRequest
    const target = request[kTarget] as Target
    const pool = request[kPool] as UpstreamPool
    if (this.retry(reply, target, mapped.code, nothingSent)) return
    if (this.hooks.onProxyError !== undefined || channels.proxyError.hasSubscribers) {
      const event: ProxyErrorEvent = { pool: pool.name, target: pool.viewOf(target), request, error: mapped }
      this.hooks.onProxyError?.(event)
      channels.proxyError.publish(event)
    }
    const user = (request[kPrepared] as PreparedOptions).onError
    if (user !== undefined) user(reply, { error: mapped })
    else reply.send(mapped)
  }
}
