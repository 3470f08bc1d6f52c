import type { FastifyRequest } from 'fastify'
import { buildConnector, Dispatcher, Pool } from 'undici'
import { otel, undiciRequests, type OtelApi, type OtelContext } from './events'
import { Exchange } from './exchange'
import { spanAttributes } from './forward'
import type { PoolConfig } from './options'
import type { OutlierDetector } from './outlier-detector'
import type { Target } from './target'

/**
 * How connections to a pool's targets are opened, shared by traffic and active checks.
 * TLS certificates are verified unless the pool opts out (`tls.rejectUnauthorized: false`).
 *
 * The TLS name (SNI, and the name the certificate must match) is the pool's
 * `tls.servername`, else the host of the target's URL, with no SNI for an IP address.
 * undici would take it from each request's Host header, which `host: 'pass'` lets the
 * client write: a certificate for any name the client picks would then be accepted. So
 * the name undici passes in is dropped, and undici falls back to the connector's own
 * `servername` and then to the origin's host.
 */
export function connector (config: PoolConfig): buildConnector.connector {
  const connect = buildConnector({
    minVersion: 'TLSv1.2',
    ...config.tls,
    rejectUnauthorized: config.tls.rejectUnauthorized !== false,
    timeout: config.timeout.connect
  } as buildConnector.BuildOptions)
  return (options, callback) => { connect({ ...options, servername: undefined }, callback) }
}

/**
 * One upstream pool's keep-alive connection pools, one per target origin, built with that
 * pool's settings (timeouts, connection limit, TLS). Two upstream pools that list the same
 * URL have separate connections, so that each keeps its own TLS settings.
 */
export class TargetConnections {
  private readonly pools = new Map<string, { pool: Pool, refs: number }>()
  private readonly config: PoolConfig

  constructor (config: PoolConfig) {
    this.config = config
  }

  /** Opens (or shares, for a second target on the same origin) the pool of `origin`. */
  acquire (origin: string): Pool {
    const entry = this.pools.get(origin)
    if (entry !== undefined) {
      entry.refs++
      return entry.pool
    }
    const config = this.config
    const pool = new Pool(origin, {
      connections: config.maxConnections ?? null,
      keepAliveTimeout: config.keepAliveTimeout,
      headersTimeout: config.timeout.response,
      bodyTimeout: config.timeout.idle,
      connect: connector(config)
    })
    this.pools.set(origin, { pool, refs: 1 })
    return pool
  }

  /** Lets go of `origin`; the last user closes its pool once its requests have finished. */
  release (origin: string): Promise<void> {
    const entry = this.pools.get(origin)
    if (entry === undefined) return Promise.resolve()
    entry.refs--
    if (entry.refs > 0) return Promise.resolve()
    this.pools.delete(origin)
    return entry.pool.close()
  }

  /** Closes every connection pool: gracefully (in-flight requests finish) or at once. */
  async close (graceful: boolean): Promise<void> {
    const pools = [...this.pools.values()]
    this.pools.clear()
    await Promise.all(pools.map((entry) => graceful ? entry.pool.close() : entry.pool.destroy()))
  }
}

/** undici's Request takes `servername`, which its types leave out. */
type DispatchOptions = Dispatcher.DispatchOptions & { servername?: string }

/**
 * The undici dispatcher handed to `@fastify/reply-from` (registered once, with no `base`):
 * it passes each request to the connection pool of the target it was sent to, wrapped in
 * an `Exchange` that accounts for it. reply-from dispatches synchronously inside
 * `reply.from()`, so the forwarder names the target in `target` for the length of the
 * call: no lookup, nothing added to the request. `dispatch()` takes it, so the forwarder
 * can tell afterwards whether the request went out at all.
 */
export class UpstreamDispatcher extends Dispatcher {
  /** the target being sent to, set by the forwarder around `reply.from()` */
  target: Target | undefined = undefined
  /** the passive checks of that target's pool, if any */
  detector: OutlierDetector | undefined = undefined
  /** the request being forwarded (read only when undici is traced) */
  forwarded: FastifyRequest | undefined = undefined

  override dispatch (options: DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const target = this.target
    if (target === undefined || target.connection === undefined) {
      // a request from outside the forwarder: undici reports a throw from dispatch() to
      // the request's callback, like a refused connection
      throw Object.assign(new Error(`no connection pool for ${String(options.origin)}`), { code: 'ECONNREFUSED' })
    }
    const exchange = new Exchange(handler, target, this.detector)
    const request = this.forwarded
    this.target = undefined
    this.detector = undefined
    this.forwarded = undefined
    // a fixed name per target: undici reconnects when a request's servername differs from
    // the connection's, and would derive one from each request's Host header
    options.servername = target.servername
    if (undiciRequests.hasSubscribers && request !== undefined) return dispatchTraced(target.connection, options, exchange, request)
    return target.connection.dispatch(options, exchange)
  }

  // the connection pools belong to the upstream pools, which close them
  override async close (): Promise<void> {}
  override async destroy (): Promise<void> {}
}

/** The trace headers every tracer hooked into undici writes (W3C Trace Context). */
const TRACE_HEADERS = ['traceparent', 'tracestate']

/**
 * Sends an attempt while something instruments undici (see undiciRequests). The tracer
 * adds its own trace headers to the request undici builds, after the forwarded ones: the
 * client's copies would reach the target beside them (two `traceparent`s, which the
 * target's tracer rejects, starting a new trace). So those headers, and the others that
 * OpenTelemetry's propagator writes, are not forwarded: the target gets the attempt's,
 * which continue the client's trace when the gateway's server span does. Without a
 * tracer on undici the client's headers pass through untouched (see dispatch).
 */
function dispatchTraced (connection: Dispatcher, options: DispatchOptions, exchange: Exchange, request: FastifyRequest): boolean {
  const api = otel()
  const headers = options.headers as Record<string, unknown> | null | undefined
  if (headers != null && !Array.isArray(headers)) {
    // reply-from hands over a copy of its own; an undefined value is one undici leaves out
    for (const name of TRACE_HEADERS) headers[name] = undefined
    if (api !== null) for (const name of api.propagation.fields()) headers[name] = undefined
  }
  if (api === null) return connection.dispatch(options, exchange)
  return api.context.with(new AttemptContext(api, request), connection.dispatch, connection, options, exchange)
}

/**
 * The active context while an attempt is dispatched under OpenTelemetry. undici's
 * instrumentation starts the attempt's CLIENT span in the active context and then sets it
 * into that context to inject its headers: this one hands everything to the context the
 * request runs in and, seeing the span set into it, names the pool, the attempt and why on
 * it. The instrumentation hands its spans to no one else, and this way needs no setting of it.
 */
class AttemptContext implements OtelContext {
  private readonly api: OtelApi
  private readonly parent: OtelContext
  private request: FastifyRequest | undefined

  constructor (api: OtelApi, request: FastifyRequest) {
    let parent = api.context.active()
    // no span of the gateway's for the request (nothing traces its server side): the attempt
    // continues the caller's trace itself, as a child of the caller's span
    if (api.trace.getSpan(parent) === undefined) parent = api.propagation.extract(parent, request.headers)
    this.api = api
    this.parent = parent
    this.request = request
  }

  getValue (key: symbol): unknown {
    return this.parent.getValue(key)
  }

  setValue (key: symbol, value: unknown): OtelContext {
    const next = this.parent.setValue(key, value)
    const request = this.request
    if (request !== undefined) {
      const span = this.api.trace.getSpan(next)
      if (span !== undefined && span === value && span !== this.api.trace.getSpan(this.parent)) {
        this.request = undefined
        span.setAttributes(spanAttributes(request))
      }
    }
    return next
  }

  deleteValue (key: symbol): OtelContext {
    return this.parent.deleteValue(key)
  }
}
