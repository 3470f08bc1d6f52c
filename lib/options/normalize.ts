import { InvalidOptionError } from '../errors'
import { DEFAULTS, statusSet, type ActiveCheckConfig, type Http2Mode, type PassiveCheckConfig, type PoolConfig, type StickyConfig, type TargetConfig } from './config'
import { OptionsSchema, PoolSchema, TargetSchema } from './schema'
import type { MetricsOptions, PluginOptions, PoolOptions, RouteOptions, StatusRouteOptions, TargetOptions } from './types'
import { check } from './validate'
import type { MirrorConfig, MirrorOptions, SplitOptions } from '../traffic/schema'

/** From the options as given to the plugin's own form (see config.ts), validated on the way. */

function isPrime (n: number): boolean {
  if (n < 2) return false
  for (let i = 2; i * i <= n; i++) if (n % i === 0) return false
  return true
}

export function normalizeTarget (input: TargetOptions, path: string): TargetConfig {
  check(TargetSchema, input, path)
  const target = typeof input === 'string' ? { url: input } : input
  // drop a trailing slash so that `http://a/` and `http://a` are one target
  const url = new URL(target.url)
  const href = url.origin + (url.pathname === '/' ? '' : url.pathname.replace(/\/+$/, ''))
  return { url: href, weight: target.weight ?? DEFAULTS.weight, backup: target.backup ?? false }
}

/**
 * Throws when the pool's protocol cannot reach `url`: `http2: 'h2c'` is HTTP/2 over
 * cleartext TCP, which an https target does not speak (`true` is HTTP/2 over TLS, and an
 * http target in a `true` pool simply speaks HTTP/1.1).
 */
export function checkTargetProtocol (url: string, http2: Http2Mode, path: string): void {
  if (http2 === 'h2c' && url.startsWith('https:')) {
    throw new InvalidOptionError(`${path}: ${url} is an https target, and http2 'h2c' is HTTP/2 over cleartext TCP: use http2: true for HTTP/2 over TLS`)
  }
}

const POOL_NAME = /^[A-Za-z0-9_.:-]{1,128}$/

/** Pool names appear in logs, metrics labels and URLs: keep them plain. */
export function checkPoolName (name: string): void {
  if (typeof name !== 'string' || !POOL_NAME.test(name)) {
    throw new InvalidOptionError(`upstreams.${String(name)}: a pool name must be 1 to 128 letters, digits, _ . : or -`)
  }
}

export function normalizePool (input: PoolOptions, path: string): PoolConfig {
  check(PoolSchema, input, path)
  // a pool with neither is most likely a mistake; `targets: []` says it is filled at run time
  if (input.targets === undefined && input.discovery === undefined) {
    throw new InvalidOptionError(`${path}.targets: is required (unless discovery is given)`)
  }
  const http2 = input.http2 ?? DEFAULTS.http2
  const seen = new Set<string>()
  const targets = (input.targets ?? []).map((t, i) => {
    const target = normalizeTarget(t as TargetOptions, `${path}.targets[${i}]`)
    checkTargetProtocol(target.url, http2, typeof t === 'string' ? `${path}.targets[${i}]` : `${path}.targets[${i}].url`)
    if (seen.has(target.url)) throw new InvalidOptionError(`${path}.targets[${i}].url: duplicate target ${target.url}`)
    seen.add(target.url)
    return target
  })
  const discovery = input.discovery
  if (http2 === 'h2c' && discovery !== undefined && 'type' in discovery && (discovery.type === 'dns' || discovery.type === 'dns-srv') && discovery.protocol === 'https') {
    throw new InvalidOptionError(`${path}.discovery.protocol: 'https' targets cannot be reached with http2 'h2c' (HTTP/2 over cleartext TCP): use http2: true for HTTP/2 over TLS`)
  }
  const balancer = input.balancer ?? DEFAULTS.balancer
  if (typeof balancer === 'object' && 'type' in balancer && balancer.type === 'consistent-hash' &&
      balancer.tableSize !== undefined && !isPrime(balancer.tableSize)) {
    throw new InvalidOptionError(`${path}.balancer.tableSize: must be a prime from 7 to 1000003`)
  }
  const active = input.healthCheck?.active
  const passive = input.healthCheck?.passive
  if (active?.type === 'grpc' && http2 === false && active.check === undefined) {
    throw new InvalidOptionError(`${path}.healthCheck.active.type: 'grpc' checks are gRPC calls, over HTTP/2: set the pool's http2 ('h2c' for cleartext targets, true for TLS)`)
  }
  const retry = input.retry ?? {}
  for (const [field, list] of [['healthCheck.active.expectedStatus', active?.expectedStatus], ['healthCheck.passive.statusCodes', passive?.statusCodes], ['retry.statusCodes', retry.statusCodes]] as const) {
    for (const [i, item] of (list ?? []).entries()) {
      if (typeof item === 'string' && Number(item.split('-')[0]) > Number(item.split('-')[1])) {
        throw new InvalidOptionError(`${path}.${field}[${i}]: the range ${item} runs backwards`)
      }
    }
  }
  const activeConfig: ActiveCheckConfig | undefined = active === undefined
    ? undefined
    : {
        type: active.type ?? DEFAULTS.active.type,
        service: active.service ?? '',
        path: active.path ?? DEFAULTS.active.path,
        method: active.method ?? DEFAULTS.active.method,
        headers: active.headers ?? {},
        expectedStatus: statusSet(active.expectedStatus ?? DEFAULTS.active.expectedStatus),
        interval: active.interval ?? DEFAULTS.active.interval,
        timeout: active.timeout ?? DEFAULTS.active.timeout,
        jitter: active.jitter ?? DEFAULTS.active.jitter,
        healthyThreshold: active.healthyThreshold ?? DEFAULTS.active.healthyThreshold,
        unhealthyThreshold: active.unhealthyThreshold ?? DEFAULTS.active.unhealthyThreshold,
        check: active.check
      }
  const passiveConfig: PassiveCheckConfig | undefined = passive === undefined
    ? undefined
    : {
        consecutiveFailures: passive.consecutiveFailures ?? DEFAULTS.passive.consecutiveFailures,
        statusCodes: statusSet(passive.statusCodes ?? DEFAULTS.passive.statusCodes),
        ejectionTime: passive.ejectionTime ?? DEFAULTS.passive.ejectionTime,
        maxEjectionTime: Math.max(passive.maxEjectionTime ?? DEFAULTS.passive.maxEjectionTime, passive.ejectionTime ?? 0),
        maxEjectionPercent: passive.maxEjectionPercent ?? DEFAULTS.passive.maxEjectionPercent
      }
  return {
    targets,
    balancer,
    active: activeConfig,
    passive: passiveConfig,
    retry: {
      attempts: retry.attempts ?? DEFAULTS.retry.attempts,
      methods: new Set(retry.methods ?? DEFAULTS.retry.methods),
      idempotencyKey: retry.idempotencyKey === false ? undefined : (retry.idempotencyKey ?? DEFAULTS.retry.idempotencyKey).toLowerCase(),
      statusCodes: statusSet(retry.statusCodes ?? DEFAULTS.retry.statusCodes),
      backoffBase: retry.backoff?.base ?? DEFAULTS.retry.backoff.base,
      backoffMax: Math.max(retry.backoff?.max ?? DEFAULTS.retry.backoff.max, retry.backoff?.base ?? 0),
      budgetPercent: retry.budget?.percent ?? DEFAULTS.retry.budget.percent,
      budgetMinRetries: retry.budget?.minRetries ?? DEFAULTS.retry.budget.minRetries,
      hedgeDelay: retry.hedge?.delay ?? 0
    },
    timeout: { ...DEFAULTS.timeout, ...input.timeout },
    slowStartWindow: input.slowStart?.window ?? DEFAULTS.slowStart.window,
    slowStartMinWeight: (input.slowStart?.minWeightPercent ?? DEFAULTS.slowStart.minWeightPercent) / 100,
    panicThreshold: input.panicThreshold ?? DEFAULTS.panicThreshold,
    maxConnections: input.maxConnections,
    maxPending: input.maxPending ?? DEFAULTS.maxPending,
    keepAliveTimeout: input.keepAliveTimeout ?? DEFAULTS.keepAliveTimeout,
    http2,
    http2Settings: {
      maxConcurrentStreams: input.http2Settings?.maxConcurrentStreams ?? DEFAULTS.http2Settings.maxConcurrentStreams,
      pingInterval: input.http2Settings?.pingInterval ?? DEFAULTS.http2Settings.pingInterval
    },
    drainTimeout: input.drainTimeout ?? DEFAULTS.drainTimeout,
    responseBuffer: input.responseBuffer ?? DEFAULTS.responseBuffer,
    tls: input.tls ?? {},
    discovery: input.discovery,
    discoveryInterval: (input.discovery !== undefined && 'interval' in input.discovery ? input.discovery.interval : undefined) ?? DEFAULTS.discoveryInterval,
    sticky: normalizeSticky(input.sticky, path),
    mirror: normalizeMirror(input.mirror),
    headerPolicy: {
      host: input.host ?? DEFAULTS.host,
      forwardedHeaders: input.forwardedHeaders ?? DEFAULTS.forwardedHeaders,
      requestSet: input.headers?.set ?? {},
      requestRemove: input.headers?.remove ?? [],
      responseSet: input.responseHeaders?.set ?? {},
      responseRemove: input.responseHeaders?.remove ?? []
    }
  }
}

/** A mirror's options after defaults (checked by the schema of the pool or route that holds them). */
export function normalizeMirror (input: MirrorOptions | undefined): MirrorConfig | undefined {
  if (input === undefined) return undefined
  const defaults = DEFAULTS.mirror
  return {
    pool: input.pool,
    fraction: (input.percent ?? defaults.percent) / 100,
    body: input.body ?? defaults.body,
    maxConcurrent: input.maxConcurrent ?? defaults.maxConcurrent,
    timeout: input.timeout ?? defaults.timeout,
    header: (input.header ?? defaults.header).toLowerCase()
  }
}

function normalizeSticky (input: PoolOptions['sticky'], path: string): StickyConfig | undefined {
  if (input === undefined) return undefined
  const cookie = { ...DEFAULTS.sticky, ...input.cookie }
  // browsers drop a SameSite=None cookie that is not Secure
  if (cookie.sameSite === 'None' && !cookie.secure) throw new InvalidOptionError(`${path}.sticky.cookie.secure: must be true with sameSite 'None'`)
  let attributes = `; Path=${cookie.path}`
  if (cookie.domain !== undefined) attributes += `; Domain=${cookie.domain}`
  if (cookie.maxAge !== undefined) attributes += `; Max-Age=${cookie.maxAge}`
  if (cookie.httpOnly) attributes += '; HttpOnly'
  if (cookie.secure) attributes += '; Secure'
  attributes += `; SameSite=${cookie.sameSite}`
  return { name: cookie.name, attributes }
}

export interface NormalizedOptions {
  pools: Map<string, PoolOptions>
  routes: RouteOptions[]
  /** every split, named (a mount's own split is named after its prefix), with where its options are */
  splits: Map<string, { options: SplitOptions, path: string }>
  onSelect: PluginOptions['onSelect']
  onProxyError: PluginOptions['onProxyError']
  onTargetStateChange: PluginOptions['onTargetStateChange']
  onRetry: PluginOptions['onRetry']
  onSplitChange: PluginOptions['onSplitChange']
  etcd: PluginOptions['etcd']
  statusRoute: StatusRouteOptions | undefined
  metrics: MetricsOptions | false
}

/** The split a mount sends to: the one its `upstream` names, or its own, named after its prefix. */
export function splitNameOf (route: RouteOptions): string {
  return typeof route.upstream === 'string' ? route.upstream : route.prefix
}

export function normalizeOptions (input: PluginOptions | undefined): NormalizedOptions {
  const options = input ?? {}
  check(OptionsSchema, options, '')
  // pools are normalised by the registry as it adds them; names are checked here for routes
  const pools = new Map<string, PoolOptions>()
  for (const [name, pool] of Object.entries(options.upstreams ?? {})) {
    checkPoolName(name)
    pools.set(name, pool)
  }
  const splits = new Map<string, { options: SplitOptions, path: string }>()
  for (const [name, split] of Object.entries(options.splits ?? {})) {
    checkPoolName(name)
    if (pools.has(name)) throw new InvalidOptionError(`splits.${name}: a pool has that name`)
    splits.set(name, { options: split, path: `splits.${name}` })
  }
  const routes = options.routes ?? []
  routes.forEach((route, i) => {
    const upstream = route.upstream
    if (typeof upstream === 'string') {
      // with pools from etcd, a pool may come after register
      if (!pools.has(upstream) && !splits.has(upstream) && options.etcd === undefined) {
        throw new InvalidOptionError(`routes[${i}].upstream: unknown pool or split "${upstream}"`)
      }
      return
    }
    const name = splitNameOf(route)
    if (splits.has(name)) throw new InvalidOptionError(`routes[${i}].upstream: a split named "${name}" exists already; name the split in \`splits\` and use it from each route`)
    splits.set(name, { options: Array.isArray(upstream) ? { branches: upstream } : upstream, path: `routes[${i}].upstream` })
  })
  return {
    pools,
    routes,
    splits,
    onSelect: options.onSelect,
    onProxyError: options.onProxyError,
    onTargetStateChange: options.onTargetStateChange,
    onRetry: options.onRetry,
    onSplitChange: options.onSplitChange,
    etcd: options.etcd,
    statusRoute: typeof options.statusRoute === 'string' ? { url: options.statusRoute } : options.statusRoute,
    metrics: options.metrics === false ? false : (options.metrics === true || options.metrics === undefined ? {} : options.metrics)
  }
}
