// Over 300 lines for a reason: one job, the forwarder's answers to reply-from's callbacks
// (select, send, retry or answer), which share the per-request state and the retry
// decision. Header hooks, body streaming, error mapping and options are in files of
// their own.
import { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { channels } from '../channels'
import { BadPathError, NoTargetError, OverloadedError, UnknownPoolError } from '../errors'
import type { ProxyErrorEvent, RetryEvent, SelectEvent } from '../events'
import type { MirrorConfig } from '../traffic/schema'
import type { PluginOptions } from '../options/types'
import type { Pool } from '../upstream/pool'
import type { PoolRegistry } from '../upstream/registry'
import type { Target } from '../upstream/target'
import type { MatchRequest } from '../traffic/match'
import type { Branch, Split } from '../traffic/split'
import type { UpstreamDispatcher } from './dispatcher'
import {
  checkForwardOptions, type ForwardOptions, type HeaderRecord, type OnError, type OnResponse, type PreparedOptions,
  type ReplyFromOptions, type RewriteHeaders, type RewriteLocation, type RewriteRequestHeaders, type UpstreamResponse
} from './forward-options'
import { Forwarding, kForwarding, poolProxy, type ForwardedRequest, type PoolProxy } from './forwarding'
import { Exchange } from './exchange'
import { grpcAnswer, isGrpc, holdToDeadline, sendError, sendGrpcError } from './grpc'
import { applyHeaders, forwardingOf, rewriteHeaders, rewriteRequestHeaders } from './header-hooks'
import { acceptsTrailers } from './header-policy'
import { mirrorRequest } from './mirror'
import { isSafePath, originForm, pathEnd, routedPath, upstreamQuery, type RouterPathOptions } from './paths'
import { RequestBody } from './replayable-body'
import type { ReplyFrom } from './reply-from'
import { buffersResponse, readWhole, streamBody, type ResponseBodySink } from './response-buffer'
import { backoff, hasIdempotencyKey, mayRetry } from './retry'
import { CLIENT_BODY_CODES, neverSent, notTheTargets, upstreamError, type MappedError } from './upstream-error'

type Hooks = Pick<PluginOptions, 'onSelect' | 'onProxyError' | 'onRetry'>

/** true when the request body can be sent again */
function bodyReplayable (request: FastifyRequest, forwarding: Forwarding): boolean {
  const body = forwarding.body
  if (body !== null) return body.replayable()
  // no body, or a parsed one that reply-from serialises anew
  return !(request.body instanceof Readable)
}

/** true for a `text/event-stream` content type (server-sent events) */
function isEventStream (type: unknown): boolean {
  return typeof type === 'string' && type.toLowerCase().startsWith('text/event-stream')
}

// A shared listener: the headers of an event stream's response, once Fastify has set them.
function flushOnPipe (this: FastifyReply['raw']): void {
  this.flushHeaders()
}

/** The answer when no target of `pool` can take a request: 503, with Retry-After when known. */
export function unavailable (reply: FastifyReply, pool: Pool): FastifyReply {
  if (pool.saturated) {
    reply.header('retry-after', 1)
    return sendError(reply, new OverloadedError(pool.name))
  }
  const after = pool.retryAfter()
  if (after !== undefined) reply.header('retry-after', after)
  return sendError(reply, new NoTargetError(pool.name))
}

/** The retry budget a retried request's response holds until it closes. */
const kRetryBudget = Symbol('fastify-upstream.retry-budget')
type RawResponse = FastifyReply['raw'] & { [kRetryBudget]?: PoolProxy }

// A shared listener, not a closure per request: when the response to a retried request
// closes (finished, failed or aborted), it gives back its retry budget.
function onRetriedResponseClosed (this: RawResponse): void {
  const budget = this[kRetryBudget]
  if (budget !== undefined) {
    this[kRetryBudget] = undefined
    budget.retriesInFlight--
  }
}

/**
 * Glue to `@fastify/reply-from`: selects a target, sends each attempt, and on each outcome
 * decides between a retry and the answer. What an attempt records (in-flight counts,
 * latency, status, failures and successes) is its Exchange's to record.
 */
export class Forwarder implements ResponseBodySink {
  private readonly registry: PoolRegistry
  private readonly dispatcher: UpstreamDispatcher
  private readonly hooks: Hooks
  private readonly router: RouterPathOptions
  /** reply-from's `from`, the plugin's own (see setUpReplyFrom) */
  private readonly from: ReplyFrom
  readonly defaults: PreparedOptions

  /** pools may come later (from etcd): a name that is no pool yet is unavailable, not unknown */
  private readonly poolsMayAppear: boolean

  constructor (registry: PoolRegistry, dispatcher: UpstreamDispatcher, hooks: Hooks, router: RouterPathOptions, from: ReplyFrom, poolsMayAppear = false) {
    this.registry = registry
    this.dispatcher = dispatcher
    this.hooks = hooks
    this.router = router
    this.from = from
    this.poolsMayAppear = poolsMayAppear
    this.defaults = this.prepare(undefined)
  }

  /**
   * The answer for a name that is no pool nor split: 500 FST_UPSTREAM_UNKNOWN_POOL, or, while
   * pools may still come (from etcd), 503 FST_UPSTREAM_NO_TARGET.
   */
  missing (name: string): Error {
    return this.poolsMayAppear ? new NoTargetError(name) : new UnknownPoolError(name)
  }

  /** The pool of that name, if any. */
  pool (name: string): Pool | undefined {
    return this.registry.get(name)
  }

  /** The split of that name, if any. */
  split (name: string): Split | undefined {
    return this.registry.splits.get(name)
  }

  /**
   * Where a WebSocket handshake goes: pool `name`, or the pool of the branch a split
   * chooses, falling back as for any request while a branch's pool is missing or has no
   * target; when no branch can take it, the chosen branch's pool (whose answer is a 503).
   * The error to answer with when there is no pool at all.
   */
  upgradeRoute (request: FastifyRequest, name: string): { pool: Pool, branch: Branch | null } | Error {
    const split = this.registry.splits.get(name)
    if (split === undefined) {
      const pool = this.registry.get(name)
      return pool === undefined ? this.missing(name) : { pool, branch: null }
    }
    const chosen = split.choose(request as unknown as MatchRequest)
    let branch: Branch | undefined = chosen
    const tried: Branch[] = []
    while (branch !== undefined) {
      const pool = this.registry.get(branch.pool)
      if (pool !== undefined && pool.pick(request) !== undefined) {
        branch.requests++
        if (tried.length > 0) branch.fallbacks++
        return { pool, branch }
      }
      tried.push(branch)
      branch = split.fallbackFor(tried)
    }
    const pool = this.registry.get(chosen.pool)
    return pool === undefined ? new NoTargetError(chosen.pool) : { pool, branch: chosen }
  }

  /**
   * Prepares per-call options; an option it does not know is an error naming `field` (a
   * misspelt `url` would otherwise proxy the request's own path without a word).
   */
  prepare (options: ForwardOptions | undefined, rewriteLocation?: RewriteLocation, field = 'reply.forward options', mirror?: MirrorConfig): PreparedOptions {
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
      rewriteRequestHeaders,
      rewriteHeaders
    }
    return {
      from,
      onResponse: options?.onResponse as OnResponse | undefined,
      onError: options?.onError as OnError | undefined,
      rewriteRequestHeaders: options?.rewriteRequestHeaders as RewriteRequestHeaders | undefined,
      rewriteHeaders: options?.rewriteHeaders as RewriteHeaders | undefined,
      rewriteLocation,
      mirror
    }
  }

  /**
   * Proxies the request of `reply` to a target of pool or split `name`; `path` is the path
   * (and optional query) to send, by default the request's own path.
   */
  forward (reply: FastifyReply, name: string, path: string | undefined, prepared: PreparedOptions, checked = false): FastifyReply {
    const forwarding = this.route(reply, name)
    if (forwarding === undefined) return reply
    if (path === undefined) {
      const request = reply.request
      // the path the router matched (an absolute-form target `GET http://host/path` sends
      // only its path); a target with a fragment is refused (see pathEnd)
      const target = originForm(request.raw.url as string) ?? ''
      const end = pathEnd(target, this.router.semicolonDelimiter)
      if (end === -1) return sendError(reply, new BadPathError())
      path = routedPath(target, end, this.router)
      // reply-from appends the request's own `?query`; a `;` the router took for a `?` is ours to send
      if (target.charCodeAt(end) === 59) path += upstreamQuery(target, end)
    }
    // a split's branch may send to another path of its pool (here, before the path the caller gave)
    const prefix = forwarding.branch?.rewritePrefix
    if (prefix !== undefined) path = prefix + path
    return this.start(reply, forwarding, path, prepared, checked)
  }

  /**
   * Routes the request to pool or split `name`: its Forwarding, with a target picked;
   * undefined when none can take it (the request is answered then). From here on the
   * request is routed to the pool (`request.upstream`), whether a target takes it or not.
   */
  route (reply: FastifyReply, name: string): Forwarding | undefined {
    const request = reply.request as ForwardedRequest
    const pool = this.registry.get(name)
    if (pool === undefined) {
      const split = this.registry.splits.get(name)
      if (split !== undefined) return this.routeSplit(reply, split)
      sendError(reply, this.missing(name))
      return undefined
    }
    const forwarding = request[kForwarding] = new Forwarding(pool, poolProxy(pool), null)
    const target = pool.pick(request)
    if (target === undefined) {
      unavailable(reply, pool)
      return undefined
    }
    return this.picked(request, forwarding, target)
  }

  /** The split's branch for the request, falling back to others while their pools have no target (as the split allows). */
  private routeSplit (reply: FastifyReply, split: Split): Forwarding | undefined {
    const request = reply.request as ForwardedRequest
    const chosen = split.choose(request as unknown as MatchRequest)
    let branch = chosen
    let tried: Branch[] | undefined
    for (;;) {
      const pool = this.registry.get(branch.pool)
      const target = pool?.pick(request)
      if (pool !== undefined && target !== undefined) {
        branch.requests++
        if (tried !== undefined) branch.fallbacks++
        const forwarding = request[kForwarding] = new Forwarding(pool, poolProxy(pool), branch)
        return this.picked(request, forwarding, target)
      }
      (tried ??= []).push(branch)
      const next = split.fallbackFor(tried)
      if (next === undefined) break
      branch = next
    }
    // none could take it: the answer of the branch chosen first
    const pool = this.registry.get(chosen.pool)
    if (pool === undefined) {
      sendError(reply, new NoTargetError(chosen.pool))
      return undefined
    }
    request[kForwarding] = new Forwarding(pool, poolProxy(pool), chosen)
    unavailable(reply, pool)
    return undefined
  }

  private picked (request: FastifyRequest, forwarding: Forwarding, target: Target): Forwarding {
    forwarding.target = target
    if (this.hooks.onSelect !== undefined || channels.select.hasSubscribers) this.selected(request, forwarding.pool, target, 0)
    return forwarding
  }

  /** Sends the first attempt of a routed request to `path` (and query) on its target. */
  start (reply: FastifyReply, forwarding: Forwarding, path: string, prepared: PreparedOptions, checked: boolean): FastifyReply {
    const request = reply.request
    const pool = forwarding.pool
    // whatever the path came from, it may not climb out of where it points (a mount has
    // checked its own already)
    if (!checked) {
      const query = path.indexOf('?')
      if (!isSafePath(query === -1 ? path : path.slice(0, query))) return sendError(reply, new BadPathError())
    }
    forwarding.prepared = prepared
    forwarding.path = path
    // keep a streamed body replayable when a retry may need it (and only then), recorded
    // as it goes when a retry may follow a target's reading it: a retried method or key,
    // or HTTP/2, where a target may refuse a stream it has read part of (GOAWAY, REFUSED_STREAM)
    const retryConfig = pool.config.retry
    if (request.body instanceof Readable && retryConfig.attempts > 0 && pool.targetList.length > 1) {
      const record = retryConfig.methods.has(request.raw.method as string) || hasIdempotencyKey(retryConfig, request.headers) || pool.config.http2 !== false
      forwarding.body = new RequestBody(request.body, record)
    }
    // a copy to the mount's or the pool's mirror, if any: it goes out after this attempt (see mirror.ts)
    const mirror = prepared.mirror ?? pool.config.mirror
    if (mirror !== undefined) mirrorRequest(this.registry, reply, forwarding, mirror)
    // the target's trailers go to a client that takes them (see Exchange.onResponseEnd)
    if (acceptsTrailers(request)) {
      forwarding.trailersTo = reply.raw
      if (isGrpc(request)) holdToDeadline(reply, forwarding, this.deadlinePassed)
    }
    return this.send(reply, forwarding, forwarding.target as Target)
  }

  /**
   * A gRPC call's deadline passed: the attempt in flight is cancelled (its failure then
   * answers DEADLINE_EXCEEDED, or breaks off an answer under way); a call between
   * attempts is answered at once.
   */
  private readonly deadlinePassed = (reply: FastifyReply, forwarding: Forwarding, error: Error): void => {
    const exchange = forwarding.exchange
    if (exchange instanceof Exchange && exchange.cancel(error)) return
    if (reply.sent || reply.raw.destroyed) return
    forwarding.error = (error as MappedError).code
    this.report(forwarding, reply.request, error as MappedError)
    sendGrpcError(reply, error)
  }

  private selected (request: FastifyRequest, pool: Pool, target: Target, attempt: number): void {
    const event: SelectEvent = { pool: pool.name, target: pool.viewOf(target), request, attempt }
    this.hooks.onSelect?.(event)
    channels.select.publish(event)
  }

  /**
   * One attempt: reply-from builds the request and dispatches it at once to the
   * UpstreamDispatcher, which sends it to `target` in an Exchange (see there).
   */
  private send (reply: FastifyReply, forwarding: Forwarding, target: Target): FastifyReply {
    const body = forwarding.body
    if (body !== null) reply.request.body = body.attempt()
    const dispatcher = this.dispatcher
    dispatcher.forwarding = forwarding
    dispatcher.forwardedRequest = reply.request
    let thrown: unknown
    try {
      return this.from.call(reply, target.origin + target.basePath + forwarding.path, (forwarding.prepared as PreparedOptions).from)
    } catch (error) {
      thrown = error
    } finally {
      // still set when reply-from gave up before dispatching (a rewrite threw, say)
      dispatcher.forwarding = undefined
      dispatcher.forwardedRequest = undefined
    }
    // a rewrite threw (or the header policy refused a value) before anything was sent: the
    // gateway's own error, no target's. Answered here, as a retry calls this from a
    // callback or a timer, where a throw would end the process.
    return sendError(reply, thrown instanceof Error ? thrown : new Error(String(thrown)))
  }

  /**
   * Tries the request again on another target when the policy allows it; false when it
   * does not (the caller then answers with what it has).
   */
  private retry (reply: FastifyReply, forwarding: Forwarding, reason: string, nothingSent: boolean): boolean {
    const request = reply.request
    const pool = forwarding.pool
    const failed = forwarding.target as Target
    // nobody to answer: a client that has gone gets no retry (nor holds retry budget)
    if (reply.sent || reply.raw.destroyed || this.registry.get(pool.name) !== pool) return false
    const config = pool.config.retry
    const facts = {
      retries: forwarding.retries,
      method: request.raw.method as string,
      keyed: hasIdempotencyKey(config, request.headers),
      neverSent: nothingSent,
      bodyReplayable: bodyReplayable(request, forwarding)
    }
    const budget = forwarding.proxy
    if (!mayRetry(config, { inflight: pool.inflight, retriesInFlight: budget.retriesInFlight }, facts)) return false
    // always another target (as NGINX's next upstream): the same one would likely fail again
    const next = pool.pick(request, forwarding.triedTargets())
    if (next === undefined) return false
    failed.retries++
    const retries = ++forwarding.retries
    // the failed attempt joins the record; the next one is under way from here (it may wait for its backoff)
    forwarding.nextAttempt(next)
    const raw = reply.raw as RawResponse
    if (raw[kRetryBudget] === undefined) {
      raw[kRetryBudget] = budget
      budget.retriesInFlight++
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
      this.send(reply, forwarding, next)
    } else {
      // while it waits, the request is in no target's in-flight count (nor sent anywhere
      // if the client leaves meanwhile); it still holds its retry budget
      setTimeout(() => {
        // the client left, or the call's deadline passed meanwhile
        if (reply.raw.destroyed || reply.sent) return
        this.send(reply, forwarding, next)
      }, delay)
    }
    return true
  }

  private readonly onResponse = (request: FastifyRequest, reply: FastifyReply, res: UpstreamResponse): void => {
    const forwarding = forwardingOf(request)
    const pool = forwarding.pool
    const status = res.statusCode
    if (pool.config.retry.statusCodes[status] === 1 && this.retry(reply, forwarding, `status ${status}`, false)) {
      // drop this answer (its headers were never set on the reply)
      res.stream.resume()
      return
    }
    const headers = forwarding.headers
    if (headers instanceof Error) {
      // the target answered, the gateway cannot pass the answer on: its body is read to
      // the end (no fault of the target; the connection is kept) and the client gets the
      // gateway's error, with none of the target's headers
      res.stream.resume()
      const code = (headers as { code?: unknown }).code
      if (typeof code === 'string') forwarding.error = code
      sendError(reply, headers)
      return
    }
    const user = (forwarding.prepared as PreparedOptions).onResponse
    if (user === undefined && buffersResponse(pool.config.responseBuffer, request.raw.method, status, headers as HeaderRecord)) {
      readWhole(res.stream, reply, this)
      return
    }
    if (user !== undefined) {
      applyHeaders(reply, forwarding)
      user(request, reply, res)
      return
    }
    // an event stream's client waits for the headers: they go at once, not with the first event
    streamBody(res.stream, reply, this, isEventStream((headers as HeaderRecord)['content-type']))
  }

  readonly bodyRead = (reply: FastifyReply, body: Buffer): void => {
    if (applyHeaders(reply, forwardingOf(reply.request))) reply.send()
    else reply.send(body)
  }

  readonly bodyStarts = (reply: FastifyReply, stream: Readable, now: boolean): void => {
    const forwarding = forwardingOf(reply.request)
    if (applyHeaders(reply, forwarding)) {
      // a gRPC Trailers-Only answer: no body (see applyHeaders)
      stream.resume()
      reply.send()
      return
    }
    // Fastify writes the headers with the first bytes it pipes; an event stream's (sent
    // `now`) go as soon as the piping starts, which may be within send() (see flushOnPipe)
    if (now) reply.raw.on('pipe', flushOnPipe)
    // a gRPC answer that breaks off ends with a status the client reads (see grpcAnswer)
    reply.send(forwarding.trailersTo !== null && isGrpc(reply.request) ? grpcAnswer(stream, reply) : stream)
  }

  readonly bodyBroke = (reply: FastifyReply, error: Error): void => {
    // the client has part of the answer: Fastify aborts its response (never a clean end
    // of a truncated body; a gRPC call's ends with UNAVAILABLE instead); the exchange
    // counted the failure, this reports it
    const forwarding = forwardingOf(reply.request)
    const mapped = upstreamError(error)
    forwarding.error = mapped.code
    this.report(forwarding, reply.request, mapped)
  }

  readonly bodyFailed = (reply: FastifyReply, error: Error): void => {
    // the exchange counted the failure; the client has seen nothing yet, so the answer is
    // a retry on another target or an error of the plugin's own
    this.failed(reply, upstreamError(error), false)
  }

  private readonly onError = (reply: FastifyReply, { error }: { error: Error }): void => {
    const mapped = upstreamError(error)
    this.failed(reply, mapped, neverSent(mapped))
  }

  /** Tells the onProxyError hook and the diagnostics channel of a failure the client sees. */
  private report (forwarding: Forwarding, request: FastifyRequest, error: MappedError): void {
    if (this.hooks.onProxyError === undefined && !channels.proxyError.hasSubscribers) return
    const pool = forwarding.pool
    const event: ProxyErrorEvent = { pool: pool.name, target: pool.viewOf(forwarding.target as Target), request, error }
    this.hooks.onProxyError?.(event)
    channels.proxyError.publish(event)
  }

  /** Answers an attempt that failed: with a retry when the policy allows, else with the error. */
  private failed (reply: FastifyReply, mapped: MappedError, nothingSent: boolean): void {
    const forwarding = forwardingOf(reply.request)
    forwarding.error = mapped.code
    // another target would get the same invalid request, or the same client's body
    if (!notTheTargets(mapped) && this.retry(reply, forwarding, mapped.code, nothingSent)) return
    this.report(forwarding, reply.request, mapped)
    // the rest of a body that was cut off is not read: the connection cannot carry another request
    if (CLIENT_BODY_CODES.has(mapped.code) && reply.request.raw.httpVersionMajor === 1) reply.header('connection', 'close')
    const user = (forwarding.prepared as PreparedOptions).onError
    if (user !== undefined) user(reply, { error: mapped })
    else sendError(reply, mapped)
  }
}
