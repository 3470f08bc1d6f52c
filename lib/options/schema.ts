import { Type, FormatRegistry, type Static } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import type { TargetView } from '../contracts'
import { BalancerSchema } from '../balancers/schema'
import { EtcdDiscoverySchema, EtcdPoolsSchema } from '../etcd/schema'
import { MirrorSchema, MountUpstreamSchema, SplitSchema } from '../traffic/schema'
import { TOKEN_CHAR, VALUE_CHARS } from '../header-syntax'
import { typed } from '../typed-schema'

// Options are TypeBox schemas: the TypeScript types (types.ts) are derived from them, and the
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
  type: Type.Optional(Type.Union([Type.Literal('http'), Type.Literal('tcp'), Type.Literal('grpc')], { errorMessage: "must be 'http', 'tcp' or 'grpc'" })),
  /** the service a 'grpc' check asks about ('' for the server as a whole) */
  service: Type.Optional(Type.String()),
  path: Type.Optional(Type.String({ pattern: '^/', errorMessage: "must be a path starting with '/'" })),
  method: Type.Optional(AnyMethod),
  headers: Type.Optional(Type.Record(Type.String(), Type.String(), { errorMessage: 'must be an object of header strings' })),
  expectedStatus: Type.Optional(StatusList),
  interval: Type.Optional(Ms),
  timeout: Type.Optional(Ms),
  jitter: Type.Optional(Type.Integer({ minimum: 0, maximum: 2_147_483_647, errorMessage: 'must be an integer >= 0 (milliseconds)' })),
  healthyThreshold: Type.Optional(Count),
  unhealthyThreshold: Type.Optional(Count),
  /** a custom probe: resolve true when the target is healthy */
  check: Type.Optional(typed<(target: TargetView) => boolean | Promise<boolean>>(Type.Function([Type.Any()], Type.Any())))
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
  /** a request of another method that carries this header is retried as an idempotent one; false: never */
  idempotencyKey: Type.Optional(Type.Union([Type.String({ pattern: `^${TOKEN_CHAR}+$` }), Type.Literal(false)], {
    errorMessage: 'must be a header name, or false to turn it off'
  })),
  backoff: Type.Optional(Type.Object({
    base: Type.Optional(Type.Integer({ minimum: 0, maximum: 60_000, errorMessage: 'must be an integer from 0 to 60000 (milliseconds)' })),
    max: Type.Optional(Type.Integer({ minimum: 0, maximum: 60_000, errorMessage: 'must be an integer from 0 to 60000 (milliseconds)' }))
  }, { additionalProperties: false })),
  budget: Type.Optional(Type.Object({
    percent: Type.Optional(Percent),
    minRetries: Type.Optional(Type.Integer({ minimum: 0, maximum: 100_000, errorMessage: 'must be an integer >= 0' }))
  }, { additionalProperties: false })),
  /** a second attempt at another target when the first has no response headers after `delay` ms (idempotent requests) */
  hedge: Type.Optional(Type.Object({
    delay: Ms
  }, { additionalProperties: false, errorMessage: 'must be an object { delay }' }))
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

/**
 * HTTP/2 to the targets: `true` offers h2 by ALPN on https targets (HTTP/1.1 when a
 * target declines, and on http targets), `'h2c'` speaks cleartext HTTP/2 with prior
 * knowledge to http targets (an https target is an error).
 */
export const Http2Schema = Type.Union([Type.Boolean(), Type.Literal('h2c')], { errorMessage: "must be false, true or 'h2c'" })

export const Http2SettingsSchema = Type.Object({
  /** the most requests (streams) one HTTP/2 connection carries at once */
  maxConcurrentStreams: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000, errorMessage: 'must be an integer from 1 to 1000000' })),
  /** ms between HTTP/2 PING frames on each connection; 0: none */
  pingInterval: Type.Optional(Type.Union([
    Type.Literal(0),
    Type.Integer({ minimum: 1000, maximum: 2_147_483_647 })
  ], { errorMessage: 'must be 0 (no PING) or an integer from 1000 to 2147483647 (milliseconds)' }))
}, { additionalProperties: false, errorMessage: 'must be an object { maxConcurrentStreams, pingInterval }' })

const HeaderName = `^${TOKEN_CHAR}+$`
// Names and fixed values are checked once, here (Node's rules: a token; tab, visible ASCII
// and obs-text); at request time only what a function returns is checked (see security.ts)
export const HeaderPolicySchema = Type.Object({
  set: Type.Optional(Type.Record(Type.String({ pattern: HeaderName }), Type.Union([
    Type.String({ pattern: `^[${VALUE_CHARS}]*$`, errorMessage: 'must be a header value: no CR, LF, NUL or other control character, nothing above U+00FF' }),
    typed<(request: FastifyRequest) => string | undefined>(Type.Function([Type.Any()], Type.Union([Type.String(), Type.Undefined()])))
  ], { errorMessage: 'must be a string or a function (request) => string | undefined' }), {
    // a name that is no token reaches this schema, whose message names it
    additionalProperties: Type.Never({ errorMessage: 'is not a valid header name' }),
    errorMessage: 'must be an object of header names to strings, or functions (request) => string'
  })),
  remove: Type.Optional(Type.Array(Type.String({ pattern: HeaderName, errorMessage: 'is not a valid header name' }), { errorMessage: 'must be an array of header names' }))
}, { additionalProperties: false })

/**
 * (Written here, beside the schema that takes one, as its methods are no schema's to derive.)
 * Discovery: where a pool's targets come from when they change at run time. A source is
 * a small interface, `resolve()` returning the current targets (and, when it knows, how
 * long they stay valid), so that DNS, Consul, Kubernetes or etcd all plug in the same way.
 */
export interface DiscoveredTargets {
  targets: Array<Static<typeof TargetSchema>>
  /** seconds the answer stays valid (a DNS TTL); the next lookup comes no later */
  ttl?: number
}

export interface DiscoverySource {
  resolve (): Promise<DiscoveredTargets | Array<Static<typeof TargetSchema>>>
  /**
   * a source that tells of changes itself (etcd): called once, after the first resolve(),
   * with a listener for every later answer; the source is then not polled
   */
  watch? (listener: (answer: DiscoveredTargets | Array<Static<typeof TargetSchema>>) => void): void
  /** called on close: cancel lookups in flight */
  close? (): void
}

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
  EtcdDiscoverySchema,
  typed<DiscoverySource & { interval?: number }>(Type.Object({ resolve: Fn, interval: Type.Optional(Ms) }, { additionalProperties: true }))
], { errorMessage: "must be { type: 'dns', hostname, port }, { type: 'dns-srv', name }, { type: 'etcd', endpoints, prefix } or an object with resolve()" })

/** Sticky sessions: a cookie the gateway sets, naming the target that answered (see upstream/sticky.ts). */
export const StickySchema = Type.Object({
  cookie: Type.Object({
    name: Type.String({ pattern: `^${TOKEN_CHAR}+$`, errorMessage: 'must be a cookie name (a token)' }),
    path: Type.Optional(Type.String({ pattern: '^/[\\x21-\\x3a\\x3c-\\x7e]*$', errorMessage: "must be a path starting with '/', with no ';', space or control character" })),
    domain: Type.Optional(Type.String({ pattern: '^\\.?[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*$', errorMessage: 'must be a domain name' })),
    maxAge: Type.Optional(Type.Integer({ minimum: 0, maximum: 34_560_000, errorMessage: 'must be an integer of seconds from 0 to 34560000 (400 days)' })),
    httpOnly: Type.Optional(Type.Boolean({ errorMessage: 'must be a boolean' })),
    secure: Type.Optional(Type.Boolean({ errorMessage: 'must be a boolean' })),
    sameSite: Type.Optional(Type.Union([Type.Literal('Strict'), Type.Literal('Lax'), Type.Literal('None')], { errorMessage: "must be 'Strict', 'Lax' or 'None'" }))
  }, { additionalProperties: false })
}, { additionalProperties: false })

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
  http2: Type.Optional(Http2Schema),
  http2Settings: Type.Optional(Http2SettingsSchema),
  drainTimeout: Type.Optional(Ms),
  responseBuffer: Type.Optional(Type.Integer({ minimum: 0, maximum: 16_777_216, errorMessage: 'must be an integer from 0 to 16777216 (bytes)' })),
  tls: Type.Optional(TlsSchema),
  host: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9.:\\[\\]-]+$', errorMessage: "must be 'target', 'pass' or a host name" })),
  forwardedHeaders: Type.Optional(Type.Union([
    Type.Literal('x-forwarded'), Type.Literal('forwarded'), Type.Literal('both'), Type.Literal('none')
  ], { errorMessage: "must be 'x-forwarded', 'forwarded', 'both' or 'none'" })),
  headers: Type.Optional(HeaderPolicySchema),
  responseHeaders: Type.Optional(HeaderPolicySchema),
  discovery: Type.Optional(DiscoverySchema),
  sticky: Type.Optional(StickySchema),
  mirror: Type.Optional(MirrorSchema)
}, { additionalProperties: false })

export const METHODS = ['DELETE', 'GET', 'HEAD', 'PATCH', 'POST', 'PUT', 'OPTIONS'] as const
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
  upstream: MountUpstreamSchema,
  /** a copy of sampled requests of the mount to another pool (instead of the pool's own mirror) */
  mirror: Type.Optional(MirrorSchema),
  rewritePrefix: Type.Optional(Type.String({ pattern: '^(/.*)?$', errorMessage: "must be '' or a path starting with '/'" })),
  methods: Type.Optional(Type.Array(Method, { minItems: 1, errorMessage: 'must be a non-empty array of HTTP methods' })),
  /** per-call options passed to `reply.from` (rewriteRequestHeaders, rewriteHeaders, ...) */
  replyOptions: Type.Optional(Type.Object({}, { additionalProperties: true, errorMessage: 'must be an object' })),
  /** refuse paths that a normalising target may read as another path: `//` and `;` (see README, Security) */
  strictPaths: Type.Optional(Type.Boolean({ errorMessage: 'must be a boolean' })),
  /** also proxy WebSocket (Upgrade) requests to the pool */
  websocket: Type.Optional(Type.Boolean({ errorMessage: 'must be a boolean' })),
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
  splits: Type.Optional(Type.Record(Type.String(), SplitSchema, { errorMessage: 'must be an object of splits' })),
  onSelect: Type.Optional(Fn),
  onProxyError: Type.Optional(Fn),
  onTargetStateChange: Type.Optional(Fn),
  onRetry: Type.Optional(Fn),
  onSplitChange: Type.Optional(Fn),
  etcd: Type.Optional(EtcdPoolsSchema),
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
