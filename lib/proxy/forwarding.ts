import type { FastifyRequest } from 'fastify'
import type { Branch } from '../traffic/split'
import type { Pool } from '../upstream/pool'
import type { Target } from '../upstream/target'
import type { HeaderRecord, PreparedOptions } from './forward-options'
import { HeaderPolicy, type TrailerSink } from './header-policy'
import type { RequestBody } from './replayable-body'
import { attemptAttributes, attemptOf, outcomeOf, type UpstreamAttempt, type UpstreamOutcome } from './outcome'

/** The one request decoration the plugin adds: the request's Forwarding, null until it is routed to a pool. */
export const kForwarding = Symbol('fastify-upstream.forwarding')

/** A request as the plugin sees it. */
export type ForwardedRequest = FastifyRequest & { [kForwarding]: Forwarding | null }

/**
 * A pool's proxy-side state, kept beside the pool (the upstream model knows nothing of
 * proxying): its header policy and the retries holding its budget.
 */
export interface PoolProxy {
  readonly headers: HeaderPolicy
  /** retries in flight (for the retry budget) */
  retriesInFlight: number
  /** copies of requests mirrored to this pool: in flight, and counted by outcome (see mirror.ts) */
  readonly mirrors: { inflight: number, sent: number, dropped: number, failed: number }
  /** hedged second attempts sent to this pool's targets, and how many answered first (see hedge.ts) */
  readonly hedges: { sent: number, won: number }
}

const proxies = new WeakMap<Pool, PoolProxy>()

/** The proxy-side state of `pool`, made by its first request. */
export function poolProxy (pool: Pool): PoolProxy {
  let proxy = proxies.get(pool)
  if (proxy === undefined) {
    proxy = {
      headers: new HeaderPolicy(pool.config.headerPolicy),
      retriesInFlight: 0,
      mirrors: { inflight: 0, sent: 0, dropped: 0, failed: 0 },
      hedges: { sent: 0, won: 0 }
    }
    proxies.set(pool, proxy)
  }
  return proxy
}

/**
 * The state of one request routed to a pool, made when `forward()` takes it: a fixed
 * shape, one object per proxied request, nothing on requests the plugin does not proxy.
 * Its current attempt's fields (target, start, status, time) are written by that
 * attempt's Exchange; the forwarder reads them to decide between a retry and an answer.
 */
export class Forwarding {
  readonly pool: Pool
  readonly proxy: PoolProxy
  /** the branch of a split that chose the pool, null when the request named the pool */
  readonly branch: Branch | null
  prepared: PreparedOptions | null = null
  /** the path (and query) sent upstream */
  path = ''
  /** the current attempt's target; null until one is picked */
  target: Target | null = null
  /**
   * the Exchange of the current attempt (earlier attempts' late reports are theirs alone);
   * while a hedge's two attempts race, the Hedge, which writes the winner's record (see hedge.ts)
   */
  exchange: object | null = null
  /** when the current attempt was sent (performance.now() ms) */
  start = 0
  /** the current attempt's final status, 0 until its headers arrive */
  status = 0
  /** ms from the current attempt's start to its response headers or its failure */
  time = 0
  /** the current attempt's error code, '' for none */
  error = ''
  retries = 0
  /** the targets tried already (only a retry or a hedge makes the list) */
  tried: Target[] | null = null
  /** the attempts before the current one (only a retry or a hedge makes the list) */
  attempts: UpstreamAttempt[] | null = null
  /** the client's body stream, when it is one and retries may need it again */
  body: RequestBody | null = null
  /**
   * the response headers for the client, held until the answer is sent, or the error that
   * makes them unsendable (see the forwarder's rewriteHeaders)
   */
  headers: HeaderRecord | Error | null = null
  /** where the target's trailers go: the client's response, when the client takes trailers (see acceptsTrailers) */
  trailersTo: TrailerSink | null = null

  constructor (pool: Pool, proxy: PoolProxy, branch: Branch | null) {
    this.pool = pool
    this.proxy = proxy
    this.branch = branch
  }

  /** Marks the current target as tried; returns every target tried so far (for the next pick to avoid). */
  triedTargets (): readonly Target[] {
    const tried = this.tried ?? (this.tried = [])
    tried.push(this.target as Target)
    return tried
  }

  /** The current attempt becomes one of the earlier ones; the next, to `next`, starts with a clean record. */
  nextAttempt (next: Target): void {
    const attempts = this.attempts ?? (this.attempts = [])
    attempts.push(attemptOf((this.target as Target).url, this.status, this.error, this.time))
    this.target = next
    this.exchange = null
    this.status = 0
    this.error = ''
    this.time = 0
  }

  /**
   * An attempt that ran beside the current one and ended first (a hedge's cancelled loser,
   * or its attempt that failed while the other went on): recorded before the current one,
   * and tried (a retry avoids its target).
   */
  sideAttempt (target: Target, error: string, time: number): void {
    (this.attempts ??= []).push(attemptOf(target.url, 0, error, time))
    ;(this.tried ??= []).push(target)
  }

  /** `request.upstream`: what the upstream did for the request. */
  outcome (): UpstreamOutcome {
    const target = this.target
    const last = target === null ? undefined : attemptOf(target.url, this.status, this.error, this.time)
    return outcomeOf(this.pool.name, this.attempts, last)
  }

  /** The tracing span attributes of the attempt being sent (see UpstreamDispatcher). */
  spanAttributes (): Record<string, string | number> {
    return attemptAttributes(this.pool.name, this.attempts)
  }
}

/** `request.upstream`, built when read (nothing is spent on requests that nobody asks about). */
function upstreamOf (this: FastifyRequest): UpstreamOutcome | null {
  const forwarding = (this as ForwardedRequest)[kForwarding]
  return forwarding === null ? null : forwarding.outcome()
}

/** The request decorations, with their initial values (or getter). */
export const requestDecorations = [[kForwarding, null], ['upstream', { getter: upstreamOf }]] as const
