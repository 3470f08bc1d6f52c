import type { BalancerOptions } from '../balancers/schema'
import type { MirrorConfig } from '../traffic/schema'
import { METHODS } from './schema'
import type { ActiveCheckOptions, DiscoveryOptions, HeaderPolicyOptions, TimeoutOptions, TlsOptions } from './types'

/**
 * The plugin's own form of the options, after defaults: what the parts read. The
 * defaults have this one home (the README's tables say the same).
 */

/** A request or response header to set: a fixed value, or a function of the request (as the option takes it). */
export type HeaderValue = NonNullable<HeaderPolicyOptions['set']>[string]

/** The normalised header options of a pool (see HeaderPolicy). */
export interface HeaderPolicyConfig {
  host: string
  forwardedHeaders: 'x-forwarded' | 'forwarded' | 'both' | 'none'
  requestSet: Record<string, HeaderValue>
  requestRemove: string[]
  responseSet: Record<string, HeaderValue>
  responseRemove: string[]
}

/** The normalised form of a target after defaults. */
export interface TargetConfig { url: string, weight: number, backup: boolean }

/** A status list (`[502, '500-599']`) compiled to a lookup over 100..599. */
export type StatusSet = Uint8Array

export interface ActiveCheckConfig {
  type: 'http' | 'tcp' | 'grpc'
  /** the service a 'grpc' check asks about */
  service: string
  path: string
  method: string
  headers: Record<string, string>
  expectedStatus: StatusSet
  interval: number
  timeout: number
  jitter: number
  healthyThreshold: number
  unhealthyThreshold: number
  check: ActiveCheckOptions['check']
}

export interface PassiveCheckConfig {
  consecutiveFailures: number
  statusCodes: StatusSet
  ejectionTime: number
  maxEjectionTime: number
  maxEjectionPercent: number
}

export interface RetryConfig {
  attempts: number
  methods: Set<string>
  /** the Idempotency-Key header's name, lower-case; undefined when turned off */
  idempotencyKey: string | undefined
  statusCodes: StatusSet
  backoffBase: number
  backoffMax: number
  budgetPercent: number
  budgetMinRetries: number
  /** ms without response headers before a hedged second attempt; 0: no hedging */
  hedgeDelay: number
}

/** The normalised form of a pool after defaults. */
export interface PoolConfig {
  targets: TargetConfig[]
  balancer: BalancerOptions
  active: ActiveCheckConfig | undefined
  passive: PassiveCheckConfig | undefined
  retry: RetryConfig
  timeout: Required<TimeoutOptions>
  slowStartWindow: number
  slowStartMinWeight: number
  panicThreshold: number
  maxConnections: number | undefined
  maxPending: number
  keepAliveTimeout: number
  /** HTTP/2 to the targets: false (HTTP/1.1), true (h2 by ALPN on https targets), 'h2c' (cleartext, prior knowledge) */
  http2: Http2Mode
  http2Settings: Http2Settings
  drainTimeout: number
  /** responses with a Content-Length up to this many bytes are read whole before answering; 0: none */
  responseBuffer: number
  tls: TlsOptions
  headerPolicy: HeaderPolicyConfig
  discovery: DiscoveryOptions | undefined
  discoveryInterval: number
  /** sticky sessions by a gateway cookie; undefined when off */
  sticky: StickyConfig | undefined
  /** copies of sampled requests to another pool; undefined when off */
  mirror: MirrorConfig | undefined
}

/** How a pool speaks to its targets (the `http2` option). */
export type Http2Mode = false | true | 'h2c'

/** The HTTP/2 connection settings after defaults (read only when `http2` is not false). */
export interface Http2Settings {
  /** the most streams (requests in flight) on one connection */
  maxConcurrentStreams: number
  /** ms between PING frames on each connection; 0: none */
  pingInterval: number
}

/** The sticky cookie, normalised: its name and the attributes every Set-Cookie carries. */
export interface StickyConfig {
  name: string
  /** `; Path=/; HttpOnly; SameSite=Lax`, and so on, rendered once */
  attributes: string
}

export const DEFAULTS = {
  weight: 1,
  balancer: 'round-robin',
  timeout: { connect: 5000, response: 30000, idle: 60000 },
  active: {
    type: 'http', path: '/', method: 'GET', expectedStatus: ['200-399'], interval: 5000, timeout: 1000, jitter: 0, healthyThreshold: 2, unhealthyThreshold: 3
  },
  passive: { consecutiveFailures: 5, statusCodes: [], ejectionTime: 30000, maxEjectionTime: 300000, maxEjectionPercent: 50 },
  retry: {
    attempts: 2,
    methods: ['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE'],
    statusCodes: [],
    idempotencyKey: 'idempotency-key',
    backoff: { base: 25, max: 250 },
    budget: { percent: 20, minRetries: 10 }
  },
  slowStart: { window: 0, minWeightPercent: 10 },
  panicThreshold: 0,
  maxPending: 0,
  keepAliveTimeout: 4000,
  http2: false,
  http2Settings: { maxConcurrentStreams: 100, pingInterval: 30000 },
  drainTimeout: 30000,
  responseBuffer: 65536,
  host: 'target',
  forwardedHeaders: 'x-forwarded',
  discoveryInterval: 30000,
  sticky: { path: '/', httpOnly: true, secure: false, sameSite: 'Lax' },
  mirror: { percent: 100, body: 65536, maxConcurrent: 50, timeout: 5000, header: 'x-upstream-mirror' },
  split: { weight: 1, fallback: true },
  methods: METHODS
} as const

export function statusSet (list: ReadonlyArray<number | string>): StatusSet {
  const set = new Uint8Array(600)
  for (const item of list) {
    if (typeof item === 'number') {
      set[item] = 1
    } else {
      const [from, to] = item.split('-').map(Number)
      for (let code = from; code <= to; code++) set[code] = 1
    }
  }
  return set
}
