import { performance } from 'node:perf_hooks'
import { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ForwardOptions } from '../contracts'
import { BadGatewayError, BadHeaderError, BadPathError, ConnectError, InvalidOptionError, NoTargetError, OverloadedError, TimeoutError, UnknownPoolError } from '../errors'
import { channels, type ProxyErrorEvent, type RetryEvent, type SelectEvent } from '../events'
import { closest, type PluginOptions } from '../options/schema'
import { countFailure } from '../health/outlier-detector'
import type { Pool } from '../upstream/pool'
import type { PoolRegistry } from '../upstream/registry'
import { backoff, mayRetry } from './retry'
import { LazyBody } from './replayable-body'
import { buffersResponse, readWhole, type BufferedResponseSink } from './response-buffer'
import { TOKEN_CHAR } from '../header-syntax'
import { checkResponseHeaders } from './header-policy'
import { isSafePath, originForm, pathEnd, routedPath, upstreamQuery, type RouterPathOptions } from './paths'
import type { UpstreamDispatcher } from './dispatcher'
import type { ReplyFrom } from './reply-from'
import { attemptAttributes, attemptOf, outcomeOf, type UpstreamAttempt, type UpstreamOutcome } from './outcome'
import type { Target } from '../upstream/target'

/** The keys of ForwardOptions (see contracts.ts), what `prepare` accepts: the compiler holds the two to each other. */
const FORWARD_OPTION_KEYS: Record<keyof ForwardOptions, true> = {
  url: true, queryString: true, contentType: true, onResponse: true, onError: true, body: true, rewriteHeaders: true, rewriteRequestHeaders: true, method: true, timeout: true
}
const FORWARD_OPTIONS = Object.keys(FORWARD_OPTION_KEYS)
const FORWARD_OPTION_SET = new Set(FORWARD_OPTIONS)

/**
 * Throws FST_UPSTREAM_INVALID_OPTION, naming `field`, for an option `prepare` does not
 * know: a misspelt `url` would otherwise proxy the request's own path without a word.
 */
function checkForwardOptions (options: ForwardOptions, field: string): void {
  for (const key in options) {
    if (FORWARD_OPTION_SET.has(key)) continue
    const guess = closest(key, FORWARD_OPTIONS)
    const why = key === 'retriesCount' || key === 'retryDelay' || key === 'maxRetriesOn503' || key === 'getUpstream'
      ? ': retries and the choice of target are the plugin\'s own (see the pool\'s retry option)'
      : (guess === undefined ? '' : `, did you mean \`${guess}\`?`)
    throw new InvalidOptionError(`${field}.${key}: unknown option${why}`)
  }
}

/** true when `options` holds nothing but `url` (the options prepared once then serve). */
export function onlyUrl (options: ForwardOptions): boolean {
  for (const key in options) if (key !== 'url') return false
  return true
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
export type RewriteLocation = (location: string, request: FastifyRequest) => string

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
  /** a mount's rewrite of a `Location` header back under its prefix */
  readonly rewriteLocation: RewriteLocation | undefined
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
export const kStatus = Symbol('fastify-upstream.status')
export const kTime = Symbol('fastify-upstream.time')
export const kError = Symbol('fastify-upstream.error')
export const kAttempts = Symbol('fastify-upstream.attempts')

/** The request decorations, with their initial values (or getter). */
export const requestDecorations = [
  [kTarget, null], [kPool, null], [kStart, 0], [kPrepared, null], [kPath, ''], [kRetries, 0], [kTried, null], [kBody, null], [kHeaders, null],
  [kStatus, 0], [kTime, 0], [kError, ''], [kAttempts, null], ['upstream', { getter: upstreamOf }]
] as const

interface ForwardState {
  [kTarget]: Target | null
  [kPool]: Pool | null
  [kStart]: number
  [kPrepared]: PreparedOptions | null
  [kPath]: string
  [kRetries]: number
  [kTried]: Target[] | null
  /** the client's body stream, when it is one and retries may need it again */
  [kBody]: Readable | null
  /**
   * the response headers for the client, held until the answer is sent, or the error that
   * makes them unsendable (see rewriteHeaders)
   */
  [kHeaders]: HeaderRecord | Error | null
  // the current attempt, for request.upstream: its target's status (0 for none yet), the
  // ms from its start to the response headers or to its failure, its error code ('' for none)
  [kStatus]: number
  [kTime]: number
  [kError]: string
  /** the attempts before the current one (only a retry makes one) */
  [kAttempts]: UpstreamAttempt[] | null
}

type StatefulRequest = FastifyRequest & ForwardState

/** `request.upstream`, built when read (nothing is spent on requests that nobody asks about). */
function upstreamOf (this: FastifyRequest): UpstreamOutcome | null {
  const state = this as StatefulRequest
  const pool = state[kPool]
  if (pool === null) return null
  const target = state[kTarget]
  const last = target === null ? undefined : attemptOf(target.url, state[kStatus], state[kError], state[kTime])
  return outcomeOf(pool.name, state[kAttempts], last)
}

/** The tracing span attributes of the attempt being sent for `request` (see UpstreamDispatcher). */
export function spanAttributes (request: FastifyRequest): Record<string, string | number> {
  const state = request as StatefulRequest
  return attemptAttributes((state[kPool] as Pool).name, state[kAttempts])
}

type Hooks = Pick<PluginOptions, 'onSelect' | 'onProxyError' | 'onRetry'>

// Error codes of the connection phase: nothing was sent to the target.
const CONNECT_CODES = new Set([
  'ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT',
  // the target's connection pool closed (it was removed) before the request went out
  'UND_ERR_CLOSED', 'UND_ERR_DESTROYED'
])
const TLS_CODE = /^(ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO|HOSTNAME_MISMATCH)/
// The client's own faults, found while its body streams to the target (413, 408): passed
// on as they are, and the rest of that body is never read
const CLIENT_BODY_CODES = new Set(['FST_UPSTREAM_BODY_TOO_LARGE', 'FST_UPSTREAM_BODY_TIMEOUT'])
// undici's message for a header it refuses; only a token is taken from it into the error
const UNDICI_BAD_HEADER = new RegExp(`^invalid (${TOKEN_CHAR}+) header$`)

type MappedError = Error & { code: string, statusCode: number }

/** What to set when TLS with a target fails, by Node's error code: said in the 502 and the log. */
function tlsHint (code: string): string {
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID' || code.includes('HOSTNAME_MISMATCH')) {
    return ": the target's certificate does not name the host it was checked against (the target URL's host): set tls.servername to a name it has"
  }
  if (code.startsWith('DEPTH_ZERO') || code.startsWith('SELF_SIGNED') || code.startsWith('UNABLE_TO_') || code === 'CERT_UNTRUSTED') {
    return ": the target's certificate is not signed by a trusted CA: give its CA (PEM) in the pool's tls.ca, and tls.servername if it names another host"
  }
  return ': TLS with the target failed: check the pool\'s tls options (tls.ca, tls.servername, tls.minVersion)'
}

/** Maps what reply-from or undici reported to one of the plugin's stable errors. */
export function upstreamError (error: Error & { cause?: unknown }): MappedError {
  const cause = (error.cause ?? error) as Error & { code?: string }
  const code = cause.code ?? ''
  // the client's own fault, found while streaming its body: not the target's
  if (CLIENT_BODY_CODES.has(code)) return cause as MappedError
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return new TimeoutError('no connection within the connect timeout', { cause })
  if (code === 'UND_ERR_HEADERS_TIMEOUT') return new TimeoutError('no response within the response timeout', { cause })
  if (code === 'UND_ERR_BODY_TIMEOUT') return new TimeoutError('the response body stalled past the idle timeout', { cause })
  if (TLS_CODE.test(code)) return new ConnectError(code + tlsHint(code), { cause })
  if (CONNECT_CODES.has(code)) return new ConnectError(code, { cause })
  // undici refused, before sending anything, a request the gateway built (a header from a
  // caller's rewriteRequestHeaders): the gateway's fault, and every target would refuse it
  if (code === 'UND_ERR_INVALID_ARG') {
    const header = UNDICI_BAD_HEADER.exec(cause.message)
    return new BadHeaderError(header !== null ? `request header "${header[1]}"` : 'a request header', { cause })
  }
  return new BadGatewayError(code !== '' ? code : cause.message, { cause })
}

/**
 * true for a failure that is no target's fault: the client's (its body too large, or
 * stalled: a 4xx) or the gateway's own (a header it built). Neither counts against the
 * target nor is retried.
 */
function notTheTargets (error: MappedError): boolean {
  return error.statusCode < 500 || error instanceof BadHeaderError
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
type RawResponse = FastifyReply['raw'] & { [kPool]?: Pool }

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
  private readonly registry: PoolRegistry
  private readonly dispatcher: UpstreamDispatcher
  private readonly hooks: Hooks
  private readonly router: RouterPathOptions
  /** reply-from's `from`, the plugin's own (see setUpReplyFrom) */
  private readonly from: ReplyFrom
  readonly defaults: PreparedOptions

  constructor (registry: PoolRegistry, dispatcher: UpstreamDispatcher, hooks: Hooks, router: RouterPathOptions, from: ReplyFrom) {
    this.registry = registry
    this.dispatcher = dispatcher
    this.hooks = hooks
    this.router = router
    this.from = from
    this.defaults = this.prepare(undefined)
  }

  /**
   * Prepares per-call options; an option it does not know is an error naming `field` (a
   * misspelt `url` would otherwise proxy the request's own path without a word).
   */
  prepare (options: ForwardOptions | undefined, rewriteLocation?: RewriteLocation, field = 'reply.forward options'): PreparedOptions {
    if (options !== undefined) checkForwardOptions(options, field)
    // One shape for every call (no spread, no delete): reply-from reads these options of
    // its own, and undefined is as good as absent to it. Retries and the choice of target
    // are the plugin's, so its retry and getUpstream options are never set.
    const from: ReplyFromOptions = {
      method: options?.method,
      timeout: options?.timeout,
      body: options?.body,
      contentType: options?.contentType,
      queryString: options?.queryString,
      onResponse: this.onResponse,
      onError: this.onError,
      // the pool's header policy first, then the caller's own rewrites
      rewriteRequestHeaders: this.rewriteRequestHeaders,
      rewriteHeaders: this.rewriteHeaders
    }
    return {
      from,
      onResponse: options?.onResponse as OnResponse | undefined,
      onError: options?.onError as OnError | undefined,
      rewriteRequestHeaders: options?.rewriteRequestHeaders as RewriteRequestHeaders | undefined,
      rewriteHeaders: options?.rewriteHeaders as RewriteHeaders | undefined,
      rewriteLocation
    }
  }

  /**
   * Proxies the request of `reply` to a target of pool `name`; `path` is the path (and
   * optional query) to send, by default the request's own path.
   */
  forward (reply: FastifyReply, name: string, path: string | undefined, prepared: PreparedOptions, checked = false): FastifyReply {
    const request = reply.request as StatefulRequest
    const pool = this.registry.get(name)
    if (pool === undefined) return reply.send(new UnknownPoolError(name))
    // routed to the pool from here on (request.upstream), whether a target takes it or not
    request[kPool] = pool
    const target = pool.pick(request)
    if (target === undefined) return this.unavailable(reply, pool)
    if (this.hooks.onSelect !== undefined || channels.select.hasSubscribers) this.selected(request, pool, target, 0)
    if (path === undefined) {
      // the path the router matched (an absolute-form target `GET http://host/path` sends
      // only its path); a target with a fragment is refused (see pathEnd)
      const target = originForm(request.raw.url as string) ?? ''
      const end = pathEnd(target, this.router.semicolonDelimiter)
      if (end === -1) return reply.send(new BadPathError())
      path = routedPath(target, end, this.router)
      // reply-from appends the request's own `?query`; a `;` the router took for a `?` is ours to send
      if (target.charCodeAt(end) === 59) path += upstreamQuery(target, end)
    }
    // whatever the path came from, it may not climb out of where it points (a mount has
    // checked its own already)
    if (!checked) {
      const query = path.indexOf('?')
      if (!isSafePath(query === -1 ? path : path.slice(0, query))) return reply.send(new BadPathError())
    }
    request[kPrepared] = prepared
    request[kPath] = path
    // keep a streamed body replayable when a retry may need it (and only then)
    if (request.body instanceof Readable && pool.config.retry.attempts > 0 && pool.targetList.length > 1) {
      request[kBody] = request.body
    }
    return this.send(reply, request, target)
  }

  private selected (request: StatefulRequest, pool: Pool, target: Target, attempt: number): void {
    const event: SelectEvent = { pool: pool.name, target: pool.viewOf(target), request, attempt }
    this.hooks.onSelect?.(event)
    channels.select.publish(event)
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
    dispatcher.detector = (request[kPool] as Pool).detector
    dispatcher.forwarded = request
    let thrown: unknown
    try {
      return this.from.call(reply, target.origin + target.basePath + request[kPath], (request[kPrepared] as PreparedOptions).from)
    } catch (error) {
      thrown = error
    } finally {
      dispatcher.detector = undefined
      dispatcher.forwarded = undefined
      // still set: reply-from gave up before dispatching (a rewrite threw, say)
      if (dispatcher.target !== undefined) {
        dispatcher.target = undefined
        target.finish()
      }
    }
    // a rewrite threw (or the header policy refused a value) before anything was sent: the
    // gateway's own error, no target's. Answered here, as a retry calls this from a
    // callback or a timer, where a throw would end the process.
    return reply.send(thrown instanceof Error ? thrown : new Error(String(thrown)))
  }

  private unavailable (reply: FastifyReply, pool: Pool): FastifyReply {
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
    const pool = request[kPool] as Pool
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
    // the failed attempt joins the record; the next one is under way from here (it may wait for its backoff)
    const attempts = request[kAttempts] ?? (request[kAttempts] = [])
    attempts.push(attemptOf(failed.url, request[kStatus], request[kError], request[kTime]))
    request[kTarget] = next
    request[kStatus] = 0
    request[kError] = ''
    request[kTime] = 0
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
    if (this.hooks.onSelect !== undefined || channels.select.hasSubscribers) this.selected(request, pool, next, retries)
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
    const policed = (state[kPool] as Pool).headers.request(request, headers)
    const user = (state[kPrepared] as PreparedOptions).rewriteRequestHeaders
    return user === undefined ? policed : user(request, policed)
  }

  // The headers for the client are held on the request, and reply-from copies none: only
  // onResponse knows whether this answer goes out now, after its body has been read
  // whole, or not at all (a retry). Until then the reply carries nothing of it, whatever
  // else answers meanwhile (an error of the body, a handler timeout).
  //
  // reply-from calls this inside undici's callback, where nothing may throw: a rewrite that
  // throws, or yields a header Node would refuse to send (and throw from writeHead, inside
  // a stream callback), is held as the error onResponse answers with.
  private readonly rewriteHeaders = (headers: HeaderRecord, request: FastifyRequest): HeaderRecord => {
    const state = request as StatefulRequest
    try {
      const policed = (state[kPool] as Pool).headers.response(request, headers)
      const prepared = state[kPrepared] as PreparedOptions
      const location = policed.location
      if (prepared.rewriteLocation !== undefined && typeof location === 'string') policed.location = prepared.rewriteLocation(location, request)
      const user = prepared.rewriteHeaders
      if (user === undefined) {
        state[kHeaders] = policed
      } else {
        const rewritten = user(policed, request)
        checkResponseHeaders(rewritten)
        state[kHeaders] = rewritten
      }
    } catch (error) {
      state[kHeaders] = error instanceof Error ? error : new Error(String(error))
    }
    return NO_HEADERS
  }

  private readonly onResponse = (request: FastifyRequest, reply: FastifyReply, res: UpstreamResponse): void => {
    const state = request as StatefulRequest
    const target = state[kTarget] as Target
    const pool = state[kPool] as Pool
    const now = performance.now()
    const elapsed = now - state[kStart]
    target.observeLatency(elapsed, now)
    const status = res.statusCode
    state[kStatus] = status
    state[kTime] = elapsed
    // a status that counts as a failure counts at once; a success counts once the whole
    // body has arrived (see Exchange)
    const detector = pool.detector
    if (detector !== undefined && detector.isFailureStatus(status)) countFailure(target, detector, now)
    if (pool.config.retry.statusCodes[status] === 1 && this.retry(reply, target, `status ${status}`, false)) {
      // drop this answer (its headers were never set on the reply)
      res.stream.resume()
      return
    }
    const headers = state[kHeaders]
    if (headers instanceof Error) {
      // the target answered, the gateway cannot pass the answer on: its body is read to
      // the end (no fault of the target; the connection is kept) and the client gets the
      // gateway's error, with none of the target's headers
      res.stream.resume()
      const code = (headers as { code?: unknown }).code
      if (typeof code === 'string') state[kError] = code
      reply.send(headers)
      return
    }
    const user = (state[kPrepared] as PreparedOptions).onResponse
    if (user === undefined && buffersResponse(pool.config.responseBuffer, request.raw.method, status, headers as HeaderRecord)) {
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
    if (!notTheTargets(mapped)) countFailure(request[kTarget] as Target, (request[kPool] as Pool).detector, performance.now())
    this.failed(reply, mapped, neverSent(mapped))
  }

  /** Answers an attempt that failed: with a retry when the policy allows, else with the error. */
  private failed (reply: FastifyReply, mapped: MappedError, nothingSent: boolean): void {
    const request = reply.request as StatefulRequest
    const target = request[kTarget] as Target
    const pool = request[kPool] as Pool
    request[kError] = mapped.code
    // to the failure, or to the headers when the target had answered (and its body failed)
    if (request[kStatus] === 0) request[kTime] = performance.now() - request[kStart]
    // another target would get the same invalid request, or the same client's body
    if (!notTheTargets(mapped) && this.retry(reply, target, mapped.code, nothingSent)) return
    if (this.hooks.onProxyError !== undefined || channels.proxyError.hasSubscribers) {
      const event: ProxyErrorEvent = { pool: pool.name, target: pool.viewOf(target), request, error: mapped }
      this.hooks.onProxyError?.(event)
      channels.proxyError.publish(event)
    }
    // the rest of a body that was cut off is not read: the connection cannot carry another request
    if (CLIENT_BODY_CODES.has(mapped.code)) reply.header('connection', 'close')
    const user = (request[kPrepared] as PreparedOptions).onError
    if (user !== undefined) user(reply, { error: mapped })
    else reply.send(mapped)
  }
}
