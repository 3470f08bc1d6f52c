import type { IncomingHttpHeaders } from 'node:http'
import { performance } from 'node:perf_hooks'
import type { FastifyRequest } from 'fastify'
import type { Dispatcher } from 'undici'
import { undiciRequests } from '../channels'
import type { RetryConfig } from '../options/config'
import type { Target } from '../upstream/target'
import { Exchange, isLegacy, relayRequestStart, relayResponseData, relayResponseEnd, relayResponseError, relayResponseStart } from './exchange'
import type { Forwarding, PoolProxy } from './forwarding'
import { budgetAllows, hasIdempotencyKey } from './retry'
import { dispatchTraced, type DispatchOptions } from './tracing'
import { HEDGE_CANCELLED, hedgeCancelled, upstreamError } from './upstream-error'

type Handler = Dispatcher.DispatchHandler
type Controller = Dispatcher.DispatchController

/**
 * Hedged requests (`retry.hedge.delay`), as Envoy's `hedge_on_per_try_timeout`: when the
 * first attempt of a request that may be sent twice has no response headers `delay` ms
 * after it was dispatched, the same request goes to another target of the pool as well,
 * and whichever answers first (final response headers, status 200 or more) is the answer.
 *
 * - **Which requests**: the first attempt (not a retry) of a request whose method is one of
 *   `retry.methods`, or that carries the Idempotency-Key header (`retry.idempotencyKey`),
 *   with no body or a body of bytes (a parsed body, which reply-from serialises: a stream
 *   cannot be read twice at once), and no upgrade; in a pool with another target to pick
 *   (`pool.pick(request, [first])`), while the client is still there. The method and the
 *   key are read from the request as it is sent (after the caller's rewrites).
 * - **The retry budget**: a hedge is a retry to the budget (`retry.budget`): it is sent only
 *   while the retries in flight are under it, and holds it until its exchange ends. It
 *   does not count against `retry.attempts`: when both attempts fail, the forwarder may
 *   retry on a third target, avoiding both.
 * - **The race**: the first attempt's final headers win. The other attempt is aborted
 *   through its undici controller with the reason `hedgeCancelled` (code
 *   `FST_UPSTREAM_HEDGE_CANCELLED`), which is no failure of its target (see targetsFault):
 *   no passive-check failure, no latency sample (it had no headers). Over HTTP/1.1 the
 *   abort closes that attempt's connection; an attempt still queued for a connection is
 *   aborted when it gets one (undici takes nothing back from its queue). An attempt that fails
 *   before headers while the other is pending is a failure of its target (its Exchange
 *   counts it) but not the request's: the other one may still answer. When both fail,
 *   the last error goes to reply-from like any attempt's (the forwarder retries or answers).
 * - **The client leaving** while both are pending cancels both (same reason): nobody waits
 *   for either answer. Before the hedge is sent, and after a winner is known, a request
 *   behaves as any other.
 * - **The record** (`request.upstream`): the winner is the request's current attempt; the
 *   other appears as an earlier attempt, with no status and the error
 *   `FST_UPSTREAM_HEDGE_CANCELLED` when it was cancelled, or its own error code when it
 *   failed first. A retry after both failed lists both, then the retry.
 * - **Counters** (`poolProxy(pool).hedges`): `sent`, hedged second attempts sent; `won`,
 *   those whose answer was the one passed on (they answered first, or the first attempt
 *   had failed).
 * - **Hooks**: a hedge publishes no onRetry or onSelect event: they are the forwarder's
 *   (the dispatcher does not hold them), and a hedge is no retry in their numbering
 *   (`attempt`, the retries so far). Its attempt's tracing span
 *   (when undici is traced) carries the pool's name like a first attempt's.
 *
 * Mechanics: reply-from dispatches one undici request per attempt, through
 * UpstreamDispatcher, which hands an eligible one to a Hedge instead of wrapping it in an
 * Exchange. The Hedge sends the request as its first arm (an Exchange wrapping an Arm of
 * the Hedge), and a second arm if the timer fires; it relays the calls of one arm to
 * reply-from's handler (the winner's, or the only one's), translated as an Exchange
 * translates them (the `relay` functions), with itself as the controller: abort, pause
 * and resume go to that arm, and an abort before any answer cancels both.
 */

/** true when `options` may be sent twice at once under `config` (see the rules above). */
export function hedgeable (config: RetryConfig, options: DispatchOptions): boolean {
  if (options.upgrade != null || options.method === 'CONNECT') return false
  const body = options.body
  if (body != null && typeof body !== 'string' && !(body instanceof Uint8Array)) return false
  if (config.methods.has(options.method)) return true
  const headers = options.headers
  return headers != null && !Array.isArray(headers) && !(Symbol.iterator in headers) && hasIdempotencyKey(config, headers as Record<string, unknown>)
}

/** host[:port] of a target's URL, as reply-from sets the Host header from it */
function hostOf (target: Target): string {
  const origin = target.origin
  return origin.slice(origin.indexOf('//') + 2)
}

/**
 * The second arm's options: the first's, sent to `second` (its origin, base path and TLS
 * name, and its host in the Host header when that named the first target's: the header
 * policy's `host: 'target'`); undefined when the path does not start with the first
 * target's base path (then there is no telling where it goes).
 */
export function secondOptions (options: DispatchOptions, first: Target, second: Target): DispatchOptions | undefined {
  const path = options.path
  if (!path.startsWith(first.basePath)) return undefined
  let headers = options.headers
  if (headers != null && !Array.isArray(headers) && !(Symbol.iterator in headers)) {
    const copy: Record<string, unknown> = { ...headers }
    if (copy.host === hostOf(first)) copy.host = hostOf(second)
    headers = copy as IncomingHttpHeaders
  }
  return { ...options, origin: second.origin, path: second.basePath + path.slice(first.basePath.length), headers, servername: second.servername }
}

/** Sends one arm, traced when something instruments undici (as UpstreamDispatcher sends). */
function send (connection: Dispatcher, options: DispatchOptions, exchange: Exchange, request: FastifyRequest, forwarding: Forwarding): boolean {
  if (undiciRequests.hasSubscribers) return dispatchTraced(connection, options, exchange, request, forwarding)
  return connection.dispatch(options, exchange)
}

/** What closes when the client goes away: its HTTP/2 stream, else its connection. */
type Closing = NodeJS.EventEmitter & { destroyed?: boolean }

function clientOf (request: FastifyRequest): Closing | undefined {
  const raw = request.raw as unknown as { stream?: Closing, socket?: Closing | null }
  return raw.stream ?? raw.socket ?? undefined
}

// A shared timer callback, not a closure per request.
function fire (hedge: Hedge): void {
  hedge.fire()
}

/** One attempt of a hedged request: the handler of its Exchange, reporting to the Hedge. */
class Arm implements Handler {
  readonly hedge: Hedge
  readonly target: Target
  readonly exchange: Exchange
  /** undici's controller of the attempt, from its start */
  controller: Controller | null = null
  /** undici reported the attempt over (an end or an error) */
  done = false
  /** the reason it was cancelled with, null unless it was (applied on its start when it had not started) */
  cancelled: Error | null = null

  constructor (hedge: Hedge, forwarding: Forwarding, target: Target) {
    this.hedge = hedge
    this.target = target
    this.exchange = new Exchange(this, forwarding, target)
  }

  /** Aborts the attempt with `reason`, now or, while it waits for a connection, when it gets one. */
  cancel (reason: Error): void {
    if (this.done || this.cancelled !== null) return
    this.cancelled = reason
    this.controller?.abort(reason)
  }

  onRequestStart (controller: Controller, context: unknown): void {
    this.controller = controller
    if (this.cancelled !== null) {
      controller.abort(this.cancelled)
      return
    }
    this.hedge.started(context)
  }

  onResponseStart (_controller: Controller, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    this.hedge.headers(this, statusCode, headers, statusMessage)
  }

  onResponseData (_controller: Controller, chunk: Buffer): void {
    this.hedge.data(this, chunk)
  }

  onResponseEnd (_controller: Controller, trailers: IncomingHttpHeaders): void {
    this.done = true
    this.hedge.ended(this, trailers)
  }

  onResponseError (_controller: Controller, error: Error): void {
    this.done = true
    this.hedge.failed(this, error)
  }
}

/**
 * A hedged request, from its dispatch to its end: its arms, the timer of the second, and
 * the one controller reply-from's handler sees (this object).
 */
export class Hedge implements Controller {
  private readonly handler: Handler
  /** reply-from's handler has only the deprecated calls (see isLegacy) */
  private readonly legacy: boolean
  private readonly forwarding: Forwarding
  private readonly request: FastifyRequest
  private readonly options: DispatchOptions
  private readonly first: Arm
  private second: Arm | null = null
  /** the arm whose final headers came first */
  private winner: Arm | null = null
  /** the arm whose calls are relayed, and which the controller calls go to */
  private lead: Arm
  private timer: ReturnType<typeof setTimeout> | undefined = undefined
  /** reply-from's handler got its start, and its end or error */
  private startSent = false
  private finished = false
  /** why the request was aborted before any answer, null unless it was */
  private abortReason: Error | null = null
  /** the client's stream or connection, watched while the arms race */
  private client: Closing | undefined = undefined
  private onClientClose: (() => void) | undefined = undefined
  /** the pool whose retry budget the second arm holds, until it ends */
  private budget: PoolProxy | null = null

  constructor (handler: Handler, forwarding: Forwarding, request: FastifyRequest, options: DispatchOptions, target: Target) {
    this.handler = handler
    this.legacy = isLegacy(handler)
    this.forwarding = forwarding
    this.request = request
    this.options = options
    this.first = this.lead = new Arm(this, forwarding, target)
  }

  /** Sends the first arm on `connection`, and sets the timer of the second. */
  dispatch (connection: Dispatcher): boolean {
    const first = this.first
    const options = this.options
    options.servername = first.target.servername
    const queued = send(connection, options, first.exchange, this.request, this.forwarding)
    // undici reports some failures within dispatch(): no hedge for those
    if (!first.done) {
      this.timer = setTimeout(fire, this.forwarding.pool.config.retry.hedgeDelay, this)
      this.timer.unref()
    }
    return queued
  }

  /** The hedge delay is over and the first arm has no answer: the second arm, when it may go. */
  fire (): void {
    this.timer = undefined
    const first = this.first
    if (first.done || this.winner !== null || this.finished || this.abortReason !== null) return
    const request = this.request
    const client = clientOf(request)
    if (client === undefined || client.destroyed === true) return
    const forwarding = this.forwarding
    const pool = forwarding.pool
    const proxy = forwarding.proxy
    if (!budgetAllows(pool.config.retry, pool.inflight, proxy.retriesInFlight)) return
    const target = pool.pick(request, [first.target])
    if (target === undefined) return
    // a pool closed or removed meanwhile has no connections to give
    const connection = target.connection ?? target.connections?.connect(target)
    if (connection === undefined) return
    const options = secondOptions(this.options, first.target, target)
    if (options === undefined) return
    proxy.retriesInFlight++
    this.budget = proxy
    proxy.hedges.sent++
    const second = this.second = new Arm(this, forwarding, target)
    // the race: neither arm writes the request's record; the winner's is written when it answers
    forwarding.exchange = this
    const onClose = this.onClientClose = () => { this.abort(hedgeCancelled('the client went away')) }
    this.client = client
    client.once('close', onClose)
    send(connection, options, second.exchange, request, forwarding)
  }

  // ---- the arms' reports ---------------------------------------------------------

  /** An arm got its connection: reply-from's handler gets its start from the first to. */
  started (context: unknown): void {
    if (this.startSent) return
    this.startSent = true
    relayRequestStart(this.handler, this.legacy, this, context)
  }

  headers (arm: Arm, statusCode: number, headers: IncomingHttpHeaders, statusMessage: string | undefined): void {
    if (this.finished) return
    if (this.winner === null) {
      if (statusCode < 200) {
        // a 1xx decides nothing, and is passed on only from an arm that runs alone
        const other = arm === this.first ? this.second : this.first
        if (other !== null && !other.done) return
      } else {
        this.decide(arm)
      }
    } else if (arm !== this.winner) {
      return
    }
    this.lead = arm
    relayResponseStart(this.handler, this.legacy, this, statusCode, headers, statusMessage)
  }

  data (arm: Arm, chunk: Buffer): void {
    if (arm === this.winner && !this.finished) relayResponseData(this.handler, this.legacy, this, chunk)
  }

  ended (arm: Arm, trailers: IncomingHttpHeaders): void {
    this.release(arm)
    if (arm !== this.winner || this.finished) return
    this.finished = true
    relayResponseEnd(this.handler, this.legacy, this, trailers)
  }

  failed (arm: Arm, error: Error): void {
    this.release(arm)
    if (this.finished) return
    const winner = this.winner
    if (winner !== null) {
      // the loser's cancel is its own business; the winner's failure (its body broke off) is the request's
      if (arm !== winner) return
      this.finished = true
      relayResponseError(this.handler, this.legacy, this, error)
      return
    }
    const other = arm === this.first ? this.second : this.first
    if (other !== null && !other.done) {
      // the other arm may still answer: this failure (counted against its target by its
      // Exchange, unless it was a cancel) is recorded, not reported; the other is the
      // request's current attempt from now on
      const forwarding = this.forwarding
      forwarding.sideAttempt(arm.target, errorCode(error), performance.now() - arm.exchange.start)
      forwarding.target = other.target
      forwarding.exchange = other.exchange
      this.lead = other
      return
    }
    // nothing left that may answer: the error goes the way of any attempt's
    this.settle()
    this.finished = true
    relayResponseError(this.handler, this.legacy, this, error)
  }

  /** `arm` answered first: it is the request's current attempt; the other is cancelled and recorded before it. */
  private decide (arm: Arm): void {
    this.winner = arm
    this.settle()
    const second = this.second
    // no hedge was sent: the first arm's Exchange keeps the record, as any attempt's
    if (second === null) return
    const forwarding = this.forwarding
    const now = performance.now()
    const loser = arm === second ? this.first : second
    if (!loser.done) {
      forwarding.sideAttempt(loser.target, HEDGE_CANCELLED, now - loser.exchange.start)
      loser.cancel(hedgeCancelled('the other attempt answered first'))
    }
    if (arm === second) forwarding.proxy.hedges.won++
    if (forwarding.exchange === this) {
      forwarding.target = arm.target
      forwarding.exchange = arm.exchange
      forwarding.status = arm.exchange.status
      forwarding.time = now - arm.exchange.start
    }
  }

  /** The race is over (or never began): no timer, no watching the client. */
  private settle (): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer)
      this.timer = undefined
    }
    const client = this.client
    if (client !== undefined) {
      client.off('close', this.onClientClose as () => void)
      this.client = undefined
      this.onClientClose = undefined
    }
  }

  /** An arm is over: the second gives back its retry budget. */
  private release (arm: Arm): void {
    const budget = this.budget
    if (arm === this.second && budget !== null) {
      this.budget = null
      budget.retriesInFlight--
    }
  }

  // ---- the controller reply-from's handler sees --------------------------------------

  /** After an answer, aborts the winner; before, cancels both arms (the client went away, say). */
  abort (reason: Error): void {
    const winner = this.winner
    if (winner !== null) {
      winner.controller?.abort(reason)
      return
    }
    if (this.finished || this.abortReason !== null) return
    // (the deprecated handlers' abort() may come with no reason)
    const cancel = (reason as { code?: unknown } | undefined)?.code === HEDGE_CANCELLED ? reason : hedgeCancelled('the request was aborted')
    this.abortReason = reason ?? cancel
    this.settle()
    this.first.cancel(cancel)
    this.second?.cancel(cancel)
  }

  pause (): void {
    this.lead.controller?.pause()
  }

  resume (): void {
    this.lead.controller?.resume()
  }

  get aborted (): boolean {
    return this.abortReason !== null || this.lead.controller?.aborted === true
  }

  get paused (): boolean {
    return this.lead.controller?.paused === true
  }

  get reason (): Error | null {
    return this.abortReason ?? this.lead.controller?.reason ?? null
  }

  get rawHeaders (): Controller['rawHeaders'] {
    return this.lead.controller?.rawHeaders
  }

  get rawTrailers (): Controller['rawTrailers'] {
    return this.lead.controller?.rawTrailers
  }
}

/** The code an arm's failure is recorded with in `request.upstream`. */
function errorCode (error: Error): string {
  return upstreamError(error).code
}
