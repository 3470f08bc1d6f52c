import { Type, FormatRegistry, Kind, type Static, type TSchema } from '@sinclair/typebox'
import { Value, ValueErrorType, type ValueError } from '@sinclair/typebox/value'
import { InvalidOptionError } from '../errors'
import type { Balancer, BalancerFactory, SelectRequest } from '../balancers/types'
import { TOKEN_CHAR, VALUE_CHARS } from '../header-syntax'

// Options are TypeBox schemas: the TypeScript types below are derived from them, and the
// same schemas validate at register. `errorMessage` on a schema node replaces TypeBox's
// generic message for that node, so every error reads "path: what was wrong".

const URL_FORMAT = 'fastify-upstream-http-url'
FormatRegistry.Set(URL_FORMAT, isHttpUrl)

export function isHttpUrl (value: string): boolean {
  if (!/^https?:\/\//i.test(value)) return false
  try {
    const url = new URL(value)
    return url.hostname !== '' && url.username === '' && url.password === '' && url.search === '' && url.hash === ''
  } catch {
    return false
  }
}

const Fn = Type.Function([Type.Any()], Type.Any())
const Weight = Type.Integer({ minimum: 1, maximum: 1000, errorMessage: 'must be an integer from 1 to 1000' })
const Url = Type.String({ format: URL_FORMAT, errorMessage: 'must be an http(s) URL with no credentials, query or fragment' })

export const TargetSchema = Type.Union([
  Url,
  Type.Object({
    url: Url,
    weight: Type.Optional(Weight),
    backup: Type.Optional(Type.Boolean({ errorMessage: 'must be a boolean' }))
  }, { additionalProperties: false })
], { errorMessage: 'must be an http(s) URL string or an object { url, weight, backup }' })

const HashKey = Type.Union([
  Type.Literal('ip'),
  Type.Literal('url'),
  Type.String({ pattern: '^(header|cookie|query):[^\\s]+$' }),
  Type.Function([Type.Any()], Type.Union([Type.String(), Type.Undefined()]))
], { errorMessage: "must be 'ip', 'url', 'header:NAME', 'cookie:NAME', 'query:NAME' or a function (request) => string" })

const BalancerName = Type.Union([
  Type.Literal('round-robin'),
  Type.Literal('random'),
  Type.Literal('least-request'),
  Type.Literal('ewma'),
  Type.Literal('consistent-hash')
], { errorMessage: "must be one of 'round-robin', 'random', 'least-request', 'ewma', 'consistent-hash', an object { type, ...options } or a custom balancer" })

const BalancerSchema = Type.Union([
  BalancerName,
  Type.Object({ type: Type.Literal('round-robin') }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('random') }, { additionalProperties: false }),
  Type.Object({
    type: Type.Literal('least-request'),
    choices: Type.Optional(Type.Integer({ minimum: 2, maximum: 8, errorMessage: 'must be an integer from 2 to 8' })),
    slowRatio: Type.Optional(Type.Union([Type.Literal(0), Type.Number({ minimum: 1 })], { errorMessage: 'must be 0 (off) or a number >= 1' }))
  }, { additionalProperties: false }),
  Type.Object({
    type: Type.Literal('ewma'),
    decay: Type.Optional(Type.Number({ exclusiveMinimum: 0, errorMessage: 'must be a positive number of milliseconds' })),
    initialLatency: Type.Optional(Type.Number({ minimum: 0, errorMessage: 'must be a number of milliseconds >= 0' }))
  }, { additionalProperties: false }),
  Type.Object({
    type: Type.Literal('consistent-hash'),
    key: Type.Optional(HashKey),
    tableSize: Type.Optional(Type.Integer({ minimum: 7, maximum: 1_000_003, errorMessage: 'must be a prime from 7 to 1000003' }))
  }, { additionalProperties: false }),
  // a custom balancer: an object implementing the interface, or a factory returning one
  Type.Object({ pick: Fn, update: Fn }, { additionalProperties: true }),
  Fn
], { errorMessage: 'must be a balancer name, an object { type, ...options }, an object with pick() and update(), or a factory function' })

const Milliseconds = (errorMessage: string) => Type.Integer({ minimum: 1, maximum: 2_147_483_647, errorMessage })

export const TimeoutSchema = Type.Object({
  connect: Type.Optional(Milliseconds('must be a positive integer (milliseconds)')),
  response: Type.Optional(Milliseconds('must be a positive integer (milliseconds)')),
  idle: Type.Optional(Milliseconds('must be a positive integer (milliseconds)'))
}, { additionalProperties: false })

const Ms = Milliseconds('must be a positive integer (milliseconds)')
const Percent = Type.Number({ minimum: 0, maximum: 100, errorMessage: 'must be a percentage from 0 to 100' })
const Count = Type.Integer({ minimum: 1, maximum: 1000, errorMessage: 'must be an integer from 1 to 1000' })
const StatusCode = Type.Integer({ minimum: 100, maximum: 599, errorMessage: 'must be an HTTP status code (100-599)' })
const StatusRange = Type.String({ pattern: '^[1-5][0-9][0-9]-[1-5][0-9][0-9]$', errorMessage: "must be a status code or a range such as '200-399'" })
const StatusList = Type.Array(Type.Union([StatusCode, StatusRange], { errorMessage: "must be a status code or a range such as '200-399'" }), {
  errorMessage: 'must be an array of status codes'
})
const AnyMethod = Type.String({ pattern: '^[A-Z]+$', errorMessage: 'must be an upper-case HTTP method' })

export const ActiveCheckSchema = Type.Object({
  type: Type.Optional(Type.Union([Type.Literal('http'), Type.Literal('tcp')], { errorMessage: "must be 'http' or 'tcp'" })),
  path: Type.Optional(Type.String({ pattern: '^/', errorMessage: "must be a path starting with '/'" })),
  method: Type.Optional(AnyMethod),
  headers: Type.Optional(Type.Record(Type.String(), Type.String(), { errorMessage: 'must be an object of header strings' })),
  expectedStatus: Type.Optional(StatusList),
  interval: Type.Optional(Ms),
  timeout: Type.Optional(Ms),
  jitter: Type.Optional(Type.Integer({ minimum: 0, maximum: 2_147_483_647, errorMessage: 'must be an integer >= 0 (milliseconds)' })),
  healthyThreshold: Type.Optional(Count),
  unhealthyThreshold: Type.Optional(Count),
  check: Type.Optional(Type.Function([Type.Any()], Type.Any()))
}, { additionalProperties: false })

export const PassiveCheckSchema = Type.Object({
  consecutiveFailures: Type.Optional(Count),
  statusCodes: Type.Optional(StatusList),
  ejectionTime: Type.Optional(Ms),
  maxEjectionTime: Type.Optional(Ms),
  maxEjectionPercent: Type.Optional(Percent)
}, { additionalProperties: false })

export const RetrySchema = Type.Object({
  attempts: Type.Optional(Type.Integer({ minimum: 0, maximum: 10, errorMessage: 'must be an integer from 0 to 10' })),
  methods: Type.Optional(Type.Array(AnyMethod, { errorMessage: 'must be an array of HTTP methods' })),
  statusCodes: Type.Optional(StatusList),
  backoff: Type.Optional(Type.Object({
    base: Type.Optional(Type.Integer({ minimum: 0, maximum: 60_000, errorMessage: 'must be an integer from 0 to 60000 (milliseconds)' })),
    max: Type.Optional(Type.Integer({ minimum: 0, maximum: 60_000, errorMessage: 'must be an integer from 0 to 60000 (milliseconds)' }))
  }, { additionalProperties: false })),
  budget: Type.Optional(Type.Object({
    percent: Type.Optional(Percent),
    minRetries: Type.Optional(Type.Integer({ minimum: 0, maximum: 100_000, errorMessage: 'must be an integer >= 0' }))
  }, { additionalProperties: false }))
}, { additionalProperties: false })

const PemValue = Type.Union([Type.String(), Type.Uint8Array()])
const PemList = Type.Union([PemValue, Type.Array(PemValue)], { errorMessage: 'must be a PEM string or Buffer, or an array of them' })

export const TlsSchema = Type.Object({
  ca: Type.Optional(PemList),
  cert: Type.Optional(PemList),
  key: Type.Optional(PemList),
  passphrase: Type.Optional(Type.String({ errorMessage: 'must be a string' })),
  servername: Type.Optional(Type.String({ minLength: 1, errorMessage: 'must be a host name' })),
  rejectUnauthorized: Type.Optional(Type.Boolean({ errorMessage: 'must be a boolean' })),
  minVersion: Type.Optional(Type.Union([Type.Literal('TLSv1.2'), Type.Literal('TLSv1.3')], { errorMessage: "must be 'TLSv1.2' or 'TLSv1.3'" }))
}, { additionalProperties: false })

const HeaderName = `^${TOKEN_CHAR}+$`
// Names and fixed values are checked once, here (Node's rules: a token; tab, visible ASCII
// and obs-text); at request time only what a function returns is checked (see security.ts)
const HeaderPolicySchema = Type.Object({
  set: Type.Optional(Type.Record(Type.String({ pattern: HeaderName }), Type.Union([
    Type.String({ pattern: `^[${VALUE_CHARS}]*$`, errorMessage: 'must be a header value: no CR, LF, NUL or other control character, nothing above U+00FF' }),
    Type.Function([Type.Any()], Type.Union([Type.String(), Type.Undefined()]))
  ], { errorMessage: 'must be a string or a function (request) => string | undefined' }), {
    // a name that is no token reaches this schema, whose message names it
    additionalProperties: Type.Never({ errorMessage: 'is not a valid header name' }),
    errorMessage: 'must be an object of header names to strings, or functions (request) => string'
  })),
  remove: Type.Optional(Type.Array(Type.String({ pattern: HeaderName, errorMessage: 'is not a valid header name' }), { errorMessage: 'must be an array of header names' }))
}, { additionalProperties: false })

const DnsServers = Type.Array(Type.String({ minLength: 1 }), { minItems: 1, errorMessage: "must be a non-empty array of resolver addresses ('127.0.0.1:53', '[::1]:5353')" })
const Protocol = Type.Union([Type.Literal('http'), Type.Literal('https')], { errorMessage: "must be 'http' or 'https'" })

export const DiscoverySchema = Type.Union([
  Type.Object({
    type: Type.Literal('dns'),
    hostname: Type.String({ minLength: 1, errorMessage: 'must be a host name' }),
    port: Type.Integer({ minimum: 1, maximum: 65535, errorMessage: 'must be a port number' }),
    protocol: Type.Optional(Protocol),
    family: Type.Optional(Type.Union([Type.Literal(0), Type.Literal(4), Type.Literal(6)], { errorMessage: 'must be 0, 4 or 6' })),
    interval: Type.Optional(Ms),
    timeout: Type.Optional(Ms),
    servers: Type.Optional(DnsServers)
  }, { additionalProperties: false }),
  Type.Object({
    type: Type.Literal('dns-srv'),
    name: Type.String({ minLength: 1, errorMessage: 'must be an SRV record name' }),
    protocol: Type.Optional(Protocol),
    interval: Type.Optional(Ms),
    timeout: Type.Optional(Ms),
    servers: Type.Optional(DnsServers)
  }, { additionalProperties: false }),
  Type.Object({ resolve: Fn, interval: Type.Optional(Ms) }, { additionalProperties: true })
], { errorMessage: "must be { type: 'dns', hostname, port }, { type: 'dns-srv', name } or an object with resolve()" })

export const PoolSchema = Type.Object({
  // optional when `discovery` is given (checked in normalizePool)
  targets: Type.Optional(Type.Array(TargetSchema, { errorMessage: 'must be an array of targets' })),
  balancer: Type.Optional(BalancerSchema),
  healthCheck: Type.Optional(Type.Object({
    active: Type.Optional(ActiveCheckSchema),
    passive: Type.Optional(PassiveCheckSchema)
  }, { additionalProperties: false })),
  retry: Type.Optional(RetrySchema),
  timeout: Type.Optional(TimeoutSchema),
  slowStart: Type.Optional(Type.Object({
    window: Type.Optional(Type.Integer({ minimum: 0, maximum: 2_147_483_647, errorMessage: 'must be an integer >= 0 (milliseconds)' })),
    minWeightPercent: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 100, errorMessage: 'must be a percentage above 0, up to 100' }))
  }, { additionalProperties: false })),
  panicThreshold: Type.Optional(Percent),
  maxConnections: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, errorMessage: 'must be an integer from 1 to 65535' })),
  maxPending: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000, errorMessage: 'must be an integer from 0 to 1000000' })),
  keepAliveTimeout: Type.Optional(Ms),
  drainTimeout: Type.Optional(Ms),
  responseBuffer: Type.Optional(Type.Integer({ minimum: 0, maximum: 16_777_216, errorMessage: 'must be an integer from 0 to 16777216 (bytes)' })),
  tls: Type.Optional(TlsSchema),
  host: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9.:\\[\\]-]+$', errorMessage: "must be 'target', 'pass' or a host name" })),
  forwardedHeaders: Type.Optional(Type.Union([
    Type.Literal('x-forwarded'), Type.Literal('forwarded'), Type.Literal('both'), Type.Literal('none')
  ], { errorMessage: "must be 'x-forwarded', 'forwarded', 'both' or 'none'" })),
  headers: Type.Optional(HeaderPolicySchema),
  responseHeaders: Type.Optional(HeaderPolicySchema),
  discovery: Type.Optional(DiscoverySchema)
}, { additionalProperties: false })

const METHODS = ['DELETE', 'GET', 'HEAD', 'PATCH', 'POST', 'PUT', 'OPTIONS'] as const
const Method = Type.Union(METHODS.map((m) => Type.Literal(m)), { errorMessage: `must be one of ${METHODS.join(', ')}` })
const Prefix = Type.String({ pattern: '^/', errorMessage: "must be a path starting with '/'" })

const HookFn = Type.Function([Type.Any()], Type.Any(), { errorMessage: 'must be a function' })
const Hook = Type.Union([HookFn, Type.Array(HookFn)], { errorMessage: 'must be a function or an array of functions' })
const AnObject = Type.Object({}, { additionalProperties: true, errorMessage: 'must be an object' })

/**
 * Fastify's own route options that the plugin passes through to `fastify.route()` (for a
 * mount's routes, and the status route): checked here for their shape, typed as Fastify
 * types them (see RouteOptions and StatusRouteOptions).
 */
const FastifyRouteFields = {
  onRequest: Type.Optional(Hook),
  preParsing: Type.Optional(Hook),
  preValidation: Type.Optional(Hook),
  preHandler: Type.Optional(Hook),
  preSerialization: Type.Optional(Hook),
  onSend: Type.Optional(Hook),
  onResponse: Type.Optional(Hook),
  onTimeout: Type.Optional(Hook),
  onError: Type.Optional(Hook),
  onRequestAbort: Type.Optional(Hook),
  errorHandler: Type.Optional(HookFn),
  config: Type.Optional(AnObject),
  logLevel: Type.Optional(Type.String({ minLength: 1, errorMessage: 'must be a log level' })),
  constraints: Type.Optional(AnObject),
  exposeHeadRoute: Type.Optional(Type.Boolean({ errorMessage: 'must be a boolean' }))
}

/**
 * The status and metrics routes: `url`, and the Fastify route options that make sense for
 * two fixed GET routes (their schema and handlers are the plugin's). A misspelt hook must
 * fail here: otherwise the page it was meant to guard is served to anyone.
 */
export const StatusRouteSchema = Type.Object({
  url: Prefix,
  ...FastifyRouteFields
}, { additionalProperties: false })

export const RouteSchema = Type.Object({
  prefix: Prefix,
  upstream: Type.String({ minLength: 1, errorMessage: 'must be the name of a pool' }),
  rewritePrefix: Type.Optional(Type.String({ pattern: '^(/.*)?$', errorMessage: "must be '' or a path starting with '/'" })),
  methods: Type.Optional(Type.Array(Method, { minItems: 1, errorMessage: 'must be a non-empty array of HTTP methods' })),
  /** per-call options passed to `reply.from` (rewriteRequestHeaders, rewriteHeaders, ...) */
  replyOptions: Type.Optional(Type.Object({}, { additionalProperties: true, errorMessage: 'must be an object' })),
  /** refuse paths that a normalising target may read as another path: `//` and `;` (see README, Security) */
  strictPaths: Type.Optional(Type.Boolean({ errorMessage: 'must be a boolean' })),
  /** longest pause (ms) of a client sending a proxied body before 408 */
  bodyTimeout: Type.Optional(Type.Integer({ minimum: 1, errorMessage: 'must be an integer >= 1 (milliseconds)' })),
  // Fastify's route options, passed through to `fastify.route()`
  ...FastifyRouteFields,
  schema: Type.Optional(AnObject),
  bodyLimit: Type.Optional(Type.Integer({ minimum: 0, errorMessage: 'must be an integer >= 0' })),
  handlerTimeout: Type.Optional(Type.Integer({ minimum: 1, errorMessage: 'must be an integer >= 1 (milliseconds)' })),
  attachValidation: Type.Optional(Type.Boolean({ errorMessage: 'must be a boolean' })),
  validatorCompiler: Type.Optional(HookFn),
  serializerCompiler: Type.Optional(HookFn),
  schemaErrorFormatter: Type.Optional(HookFn),
  childLoggerFactory: Type.Optional(HookFn),
  logSerializers: Type.Optional(AnObject),
  prefixTrailingSlash: Type.Optional(Type.Union(['slash', 'no-slash', 'both'].map((v) => Type.Literal(v)), { errorMessage: "must be 'slash', 'no-slash' or 'both'" }))
}, { additionalProperties: false })

export const OptionsSchema = Type.Object({
  upstreams: Type.Optional(Type.Record(Type.String(), PoolSchema, { errorMessage: 'must be an object of pools' })),
  routes: Type.Optional(Type.Array(RouteSchema, { errorMessage: 'must be an array of routes' })),
  onSelect: Type.Optional(Fn),
  onProxyError: Type.Optional(Fn),
  onTargetStateChange: Type.Optional(Fn),
  onRetry: Type.Optional(Fn),
  statusRoute: Type.Optional(Type.Union([Prefix, StatusRouteSchema], {
    errorMessage: "must be a path starting with '/' or an object { url, ...route hooks }"
  })),
  metrics: Type.Optional(Type.Union([
    Type.Boolean(),
    Type.Object({
      registry: Type.Optional(Type.Object({ registerMetric: Fn, metrics: Fn }, { additionalProperties: true, errorMessage: 'must be a prom-client Registry' })),
      prefix: Type.Optional(Type.String({ pattern: '^[a-zA-Z_:][a-zA-Z0-9_:]*$', errorMessage: 'must be a valid metric name prefix' }))
    }, { additionalProperties: false })
  ], { errorMessage: 'must be a boolean or { registry, prefix }' }))
}, { additionalProperties: false })

// --- derived types -----------------------------------------------------------------

export type TargetOptions = Static<typeof TargetSchema>
export type TimeoutOptions = Static<typeof TimeoutSchema>
export type HashKeyOption = 'ip' | 'url' | `header:${string}` | `cookie:${string}` | `query:${string}` | ((request: SelectRequest) => string | undefined)
export type BalancerOptions =
  | 'round-robin' | 'random' | 'least-request' | 'ewma' | 'consistent-hash'
  | { type: 'round-robin' }
  | { type: 'random' }
  | { type: 'least-request', choices?: number, slowRatio?: number }
  | { type: 'ewma', decay?: number, initialLatency?: number }
  | { type: 'consistent-hash', key?: HashKeyOption, tableSize?: number }
  | Balancer
  | BalancerFactory
export type PoolOptions = Omit<Static<typeof PoolSchema>, 'targets' | 'balancer' | 'healthCheck' | 'headers' | 'responseHeaders' | 'discovery'> & ({
  /** the targets; may be empty and filled at run time */
  targets: TargetOptions[]
  /** where targets come from at run time: DNS A/AAAA, DNS SRV, or a source of your own */
  discovery?: DiscoveryOptions
} | {
  /** targets besides the discovered ones (default none) */
  targets?: TargetOptions[]
  /** where targets come from at run time: DNS A/AAAA, DNS SRV, or a source of your own */
  discovery: DiscoveryOptions
}) & {
  balancer?: BalancerOptions
  /** headers set on (or removed from) every request sent upstream */
  headers?: HeaderPolicyOptions
  /** headers set on (or removed from) every response sent back */
  responseHeaders?: HeaderPolicyOptions
  healthCheck?: { active?: ActiveCheckOptions, passive?: PassiveCheckOptions }
}
/** The plugin's own route options; the others are Fastify's route options, typed as Fastify types them. */
type OwnRouteKeys = 'prefix' | 'upstream' | 'rewritePrefix' | 'methods' | 'replyOptions' | 'strictPaths' | 'bodyTimeout'
export type RouteOptions = Pick<Static<typeof RouteSchema>, Exclude<OwnRouteKeys, 'replyOptions'>> &
Pick<import('fastify').RouteShorthandOptions, Exclude<keyof Static<typeof RouteSchema>, OwnRouteKeys>> & {
  /** per-call options of `reply.from` for every request of the mount (as `reply.forward` takes them, without `url`) */
  replyOptions?: Omit<import('../contracts').ForwardOptions, 'url'>
}
export type ActiveCheckOptions = Omit<Static<typeof ActiveCheckSchema>, 'check'> & {
  /** a custom probe: resolve true when the target is healthy */
  check?: (target: import('../upstream/target').TargetView) => boolean | Promise<boolean>
}
export type PassiveCheckOptions = Static<typeof PassiveCheckSchema>
export type RetryOptions = Static<typeof RetrySchema>
export type TlsOptions = Static<typeof TlsSchema>
export type DiscoveryOptions =
  | Extract<Static<typeof DiscoverySchema>, { type: 'dns' | 'dns-srv' }>
  | (import('../upstream/discovery').DiscoverySource & { interval?: number })
type HeaderSetValue = string | ((request: import('fastify').FastifyRequest) => string | undefined)
export interface HeaderPolicyOptions { set?: Record<string, HeaderSetValue>, remove?: string[] }

/** The normalised form of a target after defaults. */
export interface TargetConfig { url: string, weight: number, backup: boolean }

/** A status list (`[502, '500-599']`) compiled to a lookup over 100..599. */
export type StatusSet = Uint8Array

export interface ActiveCheckConfig {
  type: 'http' | 'tcp'
  path: string
  method: string
  headers: Record<string, string>
  expectedStatus: StatusSet
  interval: number
  timeout: number
  jitter: number
  healthyThreshold: number
  unhealthyThreshold: number
  check: ((target: import('../upstream/target').TargetView) => boolean | Promise<boolean>) | undefined
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
  statusCodes: StatusSet
  backoffBase: number
  backoffMax: number
  budgetPercent: number
  budgetMinRetries: number
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
  drainTimeout: number
  /** responses with a Content-Length up to this many bytes are read whole before answering; 0: none */
  responseBuffer: number
  tls: TlsOptions
  headerPolicy: import('../proxy/header-policy').HeaderPolicyConfig
  discovery: DiscoveryOptions | undefined
  discoveryInterval: number
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
    backoff: { base: 25, max: 250 },
    budget: { percent: 20, minRetries: 10 }
  },
  slowStart: { window: 0, minWeightPercent: 10 },
  panicThreshold: 0,
  maxPending: 0,
  keepAliveTimeout: 4000,
  drainTimeout: 30000,
  responseBuffer: 65536,
  host: 'target',
  forwardedHeaders: 'x-forwarded',
  discoveryInterval: 30000,
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

// --- validation ----------------------------------------------------------------------

/** Converts a JSON pointer (`/upstreams/users/targets/1/url`) to `upstreams.users.targets[1].url`. */
function fieldPath (base: string, pointer: string): string {
  let out = base
  for (const raw of pointer.split('/').slice(1)) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~')
    out += /^\d+$/.test(part) ? `[${part}]` : (out === '' ? part : `.${part}`)
  }
  return out
}

function kindOf (value: unknown): string {
  if (Array.isArray(value)) return 'array'
  if (value === null) return 'null'
  return typeof value
}

function schemaKind (schema: TSchema): string | undefined {
  if (schema.const !== undefined) return typeof schema.const
  if (schema.type === 'integer') return 'number'
  if (typeof schema.type === 'string') return schema.type
  if ((schema as unknown as Record<symbol, unknown>)[Kind] === 'Function') return 'function'
  if (Array.isArray(schema.anyOf)) {
    // a union whose members are all of one kind (a set of literals) is of that kind
    const kinds = new Set((schema.anyOf as TSchema[]).map(schemaKind))
    if (kinds.size === 1) return [...kinds][0]
  }
  return undefined
}

/**
 * The most precise message for one error. A union error is resolved into the one variant
 * of the value's own kind when there is exactly one (a string target is checked as a URL,
 * an object target as `{ url, weight, backup }`), so the message points at the real field.
 */
function describe (error: ValueError, base: string): string {
  if (error.type === ValueErrorType.Union) {
    const variants = (error.schema.anyOf as TSchema[]).filter((s) => schemaKind(s) === kindOf(error.value))
    const objectVariants = kindOf(error.value) === 'object' && (error.value as { type?: unknown }).type !== undefined
      ? variants.filter((s) => s.properties?.type?.const === (error.value as { type?: unknown }).type)
      : variants
    const only = objectVariants.length === 1 ? objectVariants[0] : (variants.length === 1 ? variants[0] : undefined)
    if (only !== undefined && schemaKind(only) !== 'string' && schemaKind(only) !== 'function') {
      const first = Value.Errors(only, error.value).First()
      if (first !== undefined) return describe(first, fieldPath(base, error.path))
    } else if (only !== undefined && schemaKind(only) === 'string' && only.const === undefined) {
      const first = Value.Errors(only, error.value).First()
      if (first !== undefined) return `${fieldPath(base, error.path)}: ${first.schema.errorMessage ?? error.schema.errorMessage ?? first.message}`
    }
  }
  const path = fieldPath(base, error.path)
  if (error.type === ValueErrorType.ObjectAdditionalProperties) {
    const known = Object.keys((error.schema.properties ?? {}) as Record<string, unknown>)
    const key = (error.path.split('/').pop() ?? '').replace(/~1/g, '/').replace(/~0/g, '~')
    const guess = closest(key, known)
    return `${path}: unknown option` + (guess === undefined ? '' : `, did you mean \`${guess}\`?`)
  }
  if (error.type === ValueErrorType.ObjectRequiredProperty) return `${path}: is required`
  const message = (error.schema.errorMessage as string | undefined) ?? error.message
  return `${path}: ${message}`
}

/** The known key nearest to a misspelt one (at most two edits away), if any. */
export function closest (key: string, known: readonly string[]): string | undefined {
  let best: string | undefined
  let bestDistance = 3
  for (const candidate of known) {
    const distance = editDistance(key.toLowerCase(), candidate.toLowerCase())
    if (distance < bestDistance) {
      best = candidate
      bestDistance = distance
    }
  }
  return best
}

/** Levenshtein distance, one row at a time. */
function editDistance (a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2) return Infinity
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = row
  }
  return previous[b.length]
}

/** Throws FST_UPSTREAM_INVALID_OPTION naming the first invalid field. */
export function check (schema: TSchema, value: unknown, base: string): void {
  const first = Value.Errors(schema, value).First()
  if (first !== undefined) throw new InvalidOptionError(describe(first, base))
}

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
  const seen = new Set<string>()
  const targets = (input.targets ?? []).map((t, i) => {
    const target = normalizeTarget(t as TargetOptions, `${path}.targets[${i}]`)
    if (seen.has(target.url)) throw new InvalidOptionError(`${path}.targets[${i}].url: duplicate target ${target.url}`)
    seen.add(target.url)
    return target
  })
  const balancer = input.balancer ?? DEFAULTS.balancer
  if (typeof balancer === 'object' && 'type' in balancer && balancer.type === 'consistent-hash' &&
      balancer.tableSize !== undefined && !isPrime(balancer.tableSize)) {
    throw new InvalidOptionError(`${path}.balancer.tableSize: must be a prime from 7 to 1000003`)
  }
  const active = input.healthCheck?.active
  const passive = input.healthCheck?.passive
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
        path: active.path ?? DEFAULTS.active.path,
        method: active.method ?? DEFAULTS.active.method,
        headers: active.headers ?? {},
        expectedStatus: statusSet(active.expectedStatus ?? DEFAULTS.active.expectedStatus),
        interval: active.interval ?? DEFAULTS.active.interval,
        timeout: active.timeout ?? DEFAULTS.active.timeout,
        jitter: active.jitter ?? DEFAULTS.active.jitter,
        healthyThreshold: active.healthyThreshold ?? DEFAULTS.active.healthyThreshold,
        unhealthyThreshold: active.unhealthyThreshold ?? DEFAULTS.active.unhealthyThreshold,
        check: active.check as ActiveCheckConfig['check']
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
      statusCodes: statusSet(retry.statusCodes ?? DEFAULTS.retry.statusCodes),
      backoffBase: retry.backoff?.base ?? DEFAULTS.retry.backoff.base,
      backoffMax: Math.max(retry.backoff?.max ?? DEFAULTS.retry.backoff.max, retry.backoff?.base ?? 0),
      budgetPercent: retry.budget?.percent ?? DEFAULTS.retry.budget.percent,
      budgetMinRetries: retry.budget?.minRetries ?? DEFAULTS.retry.budget.minRetries
    },
    timeout: { ...DEFAULTS.timeout, ...input.timeout },
    slowStartWindow: input.slowStart?.window ?? DEFAULTS.slowStart.window,
    slowStartMinWeight: (input.slowStart?.minWeightPercent ?? DEFAULTS.slowStart.minWeightPercent) / 100,
    panicThreshold: input.panicThreshold ?? DEFAULTS.panicThreshold,
    maxConnections: input.maxConnections,
    maxPending: input.maxPending ?? DEFAULTS.maxPending,
    keepAliveTimeout: input.keepAliveTimeout ?? DEFAULTS.keepAliveTimeout,
    drainTimeout: input.drainTimeout ?? DEFAULTS.drainTimeout,
    responseBuffer: input.responseBuffer ?? DEFAULTS.responseBuffer,
    tls: input.tls ?? {},
    discovery: input.discovery,
    discoveryInterval: input.discovery?.interval ?? DEFAULTS.discoveryInterval,
    headerPolicy: {
      host: input.host ?? DEFAULTS.host,
      forwardedHeaders: input.forwardedHeaders ?? DEFAULTS.forwardedHeaders,
      requestSet: (input.headers?.set ?? {}) as import('../proxy/header-policy').HeaderPolicyConfig['requestSet'],
      requestRemove: input.headers?.remove ?? [],
      responseSet: (input.responseHeaders?.set ?? {}) as import('../proxy/header-policy').HeaderPolicyConfig['responseSet'],
      responseRemove: input.responseHeaders?.remove ?? []
    }
  }
}

export interface PluginOptions {
  /** named pools of targets */
  upstreams?: Record<string, PoolOptions>
  /** prefix mounts proxied to a pool */
  routes?: RouteOptions[]
  /** called after each selection (also on diagnostics channel `fastify-upstream:select`) */
  onSelect?: (event: import('../events').SelectEvent) => void
  /** called when proxying fails (also on diagnostics channel `fastify-upstream:proxy-error`) */
  onProxyError?: (event: import('../events').ProxyErrorEvent) => void
  /** called when a target changes state (also on diagnostics channel `fastify-upstream:target-state`) */
  onTargetStateChange?: (event: import('../events').TargetStateEvent) => void
  /** called before a failed request is tried again (also on diagnostics channel `fastify-upstream:retry`) */
  onRetry?: (event: import('../events').RetryEvent) => void
  /** serves the status (JSON, or HTML to a browser) here, and Prometheus metrics at `/metrics` below it */
  statusRoute?: string | import('../status/route').StatusRouteOptions
  /**
   * Prometheus metrics (default true): served at `${statusRoute}/metrics`, and added to
   * `registry` when one is given, with or without a status route; `false` turns them off
   */
  metrics?: boolean | import('../status/metrics').MetricsOptions
}

export interface NormalizedOptions {
  pools: Map<string, PoolOptions>
  routes: RouteOptions[]
  onSelect: PluginOptions['onSelect']
  onProxyError: PluginOptions['onProxyError']
  onTargetStateChange: PluginOptions['onTargetStateChange']
  onRetry: PluginOptions['onRetry']
  statusRoute: import('../status/route').StatusRouteOptions | undefined
  metrics: import('../status/metrics').MetricsOptions | false
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
  const routes = options.routes ?? []
  routes.forEach((route, i) => {
    if (!pools.has(route.upstream)) {
      throw new InvalidOptionError(`routes[${i}].upstream: unknown pool "${route.upstream}"`)
    }
  })
  return {
    pools,
    routes,
    onSelect: options.onSelect,
    onProxyError: options.onProxyError,
    onTargetStateChange: options.onTargetStateChange,
    onRetry: options.onRetry,
    statusRoute: typeof options.statusRoute === 'string' ? { url: options.statusRoute } : options.statusRoute,
    metrics: options.metrics === false ? false : (options.metrics === true || options.metrics === undefined ? {} : options.metrics)
  }
}
