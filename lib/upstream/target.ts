import type { Dispatcher } from 'undici'
import { LATENCY_MEMORY, type BalancerTarget } from '../balancers/types'
import type { TargetState, TargetStatus, TargetView } from '../contracts'
import type { TargetConfig } from '../options/config'

/** A long-lived exchange on a target (a WebSocket tunnel): the pool closes it when the target goes. */
export interface OpenStream {
  close (): void
}

/** Where a target gets its connection pool on its first request (see TargetConnections). */
export interface ConnectionSource {
  connect (target: Target): Dispatcher | undefined
}

/** Peak-EWMA time constant for the latency every target keeps (ms). */
const LATENCY_DECAY = 10_000
/** Weight of each new sample in the mean latency: about the last ten answers count. */
const MEAN_LATENCY_WEIGHT = 0.1

/** Upper bounds (ms) of the latency histogram buckets exported as metrics. */
export const LATENCY_BUCKETS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]

/**
 * One target of one pool: its configuration, its state and its counters. The state is
 * derived from independent flags, so that each part (operator, drain, active and passive
 * checks) sets only its own flag and the most restrictive one wins:
 * draining > disabled > ejected > unhealthy > healthy.
 */
export class Target implements BalancerTarget {
  readonly url: string
  /** scheme://host:port, the key of the target's connection pool */
  readonly origin: string
  /** path prefix of the target URL ('' for none), prepended to every upstream path */
  readonly basePath: string
  /**
   * The TLS name of the target: the pool's `tls.servername`, else the URL's host (for an
   * IP address no SNI is sent, see `connector`). Every request to the target carries it,
   * so that undici never derives one from the Host header sent upstream (which the
   * client writes with `host: 'pass'`).
   */
  readonly servername: string
  /** serves only while no primary may (discovery may change it) */
  backup: boolean
  /** the target's value of the pool's sticky cookie ('' when the pool has none) */
  stickyId = ''
  configuredWeight: number
  /** the weight balancers use */
  weight: number

  disabled = false
  draining = false
  unhealthy = false
  ejected = false

  /**
   * requests one connection to the target carries at once: 1 over HTTP/1.1, the pool's
   * `http2Settings.maxConcurrentStreams` over HTTP/2 (set by TargetConnections, and again
   * by each connection a `http2: true` pool opens, from the protocol ALPN agreed on)
   */
  perConnection = 1

  inflight = 0
  requests = 0
  failures = 0
  /** requests retried away from this target */
  retries = 0
  latency = 0
  /** mean of recent latencies (EWMA by sample): steadier than the peak-EWMA `latency` */
  meanLatency = 0
  latencyUpdatedAt = 0
  /** latency histogram: counts per bucket of LATENCY_BUCKETS (the last is +Inf), sum in ms */
  readonly latencyCounts = new Float64Array(LATENCY_BUCKETS.length + 1)
  latencySum = 0

  // active checks: consecutive results, reset by the opposite result
  probeSuccesses = 0
  probeFailures = 0
  // passive checks
  consecutiveFailures = 0
  ejections = 0
  /** ejections in a row without a quiet spell between them: doubles the ejection time */
  ejectionStreak = 0
  /** when the current ejection ends (performance.now() ms), 0 when not ejected */
  ejectedUntil = 0
  /** when slow start began (performance.now() ms), 0 when the weight is not ramping */
  slowStartAt = 0

  /**
   * the keep-alive connection pool the target's requests go through: made by its first
   * request and dropped after an idle spell (see TargetConnections)
   */
  connection: Dispatcher | undefined = undefined
  /** the connection pools of the target's upstream pool, while the target is in it */
  connections: ConnectionSource | undefined = undefined

  /** tunnels open on the target (each also counts in flight) */
  readonly openStreams = new Set<OpenStream>()

  /** resolves a pending drain when the last in-flight request ends */
  onIdle: (() => void) | undefined = undefined

  constructor (config: TargetConfig, servername?: string) {
    const url = new URL(config.url)
    this.url = config.url
    this.origin = url.origin
    this.basePath = url.pathname === '/' ? '' : url.pathname
    this.servername = servername ?? url.hostname.replace(/^\[|\]$/g, '')
    this.backup = config.backup
    this.configuredWeight = config.weight
    this.weight = config.weight
  }

  get state (): TargetState {
    if (this.draining) return 'draining'
    if (this.disabled) return 'disabled'
    if (this.ejected) return 'ejected'
    if (this.unhealthy) return 'unhealthy'
    return 'healthy'
  }

  /** may take new requests */
  get available (): boolean {
    return !this.draining && !this.disabled && !this.ejected && !this.unhealthy
  }

  start (): void {
    this.inflight++
    this.requests++
  }

  finish (): void {
    this.inflight--
    if (this.inflight === 0 && this.onIdle !== undefined) this.onIdle()
  }

  /**
   * Two estimates: the peak-EWMA `latency` takes a slower sample at once and blends a
   * faster one in with time (for the ewma balancer, which must react to a spike);
   * `meanLatency` blends every sample in by a fixed weight, so that one spike moves it
   * a little and ten slow answers in a row move it most of the way, and starts afresh
   * after LATENCY_MEMORY without answers.
   */
  observeLatency (ms: number, now: number): void {
    let bucket = 0
    while (bucket < LATENCY_BUCKETS.length && ms > LATENCY_BUCKETS[bucket]) bucket++
    this.latencyCounts[bucket]++
    this.latencySum += ms
    // after a silence the old mean says little: a target that was slow and so got no
    // requests must not stay "slow" for the dozens of answers blending would take
    this.meanLatency = this.meanLatency === 0 || now - this.latencyUpdatedAt > LATENCY_MEMORY
      ? ms
      : this.meanLatency + (ms - this.meanLatency) * MEAN_LATENCY_WEIGHT
    if (this.latency === 0 || ms > this.latency) {
      this.latency = ms
    } else {
      const w = Math.exp(-(now - this.latencyUpdatedAt) / LATENCY_DECAY)
      this.latency = this.latency * w + ms * (1 - w)
    }
    this.latencyUpdatedAt = now
  }
}

/** A live read-only view over a target (one per target, created once). */
export function viewOf (target: Target): TargetView {
  return Object.freeze({
    get url () { return target.url },
    get weight () { return target.configuredWeight },
    get effectiveWeight () { return target.weight },
    get backup () { return target.backup },
    get state () { return target.state },
    get inflight () { return target.inflight },
    get requests () { return target.requests },
    get failures () { return target.failures },
    get retries () { return target.retries },
    get ejections () { return target.ejections },
    get websockets () { return target.openStreams.size },
    get latency () { return target.latency },
    toJSON () { return statusOf(target) }
  })
}

export function statusOf (target: Target): TargetStatus {
  return {
    url: target.url,
    weight: target.configuredWeight,
    effectiveWeight: target.weight,
    backup: target.backup,
    state: target.state,
    inflight: target.inflight,
    requests: target.requests,
    failures: target.failures,
    retries: target.retries,
    ejections: target.ejections,
    websockets: target.openStreams.size,
    latency: Math.round(target.latency * 1000) / 1000
  }
}
