import { buildConnector, Dispatcher, Pool } from 'undici'
import { Exchange } from './exchange'
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

  override dispatch (options: DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const target = this.target
    if (target === undefined || target.connection === undefined) {
      // a request from outside the forwarder: undici reports a throw from dispatch() to
      // the request's callback, like a refused connection
      throw Object.assign(new Error(`no connection pool for ${String(options.origin)}`), { code: 'ECONNREFUSED' })
    }
    const exchange = new Exchange(handler, target, this.detector)
    this.target = undefined
    this.detector = undefined
    // a fixed name per target: undici reconnects when a request's servername differs from
    // the connection's, and would derive one from each request's Host header
    options.servername = target.servername
    return target.connection.dispatch(options, exchange)
  }

  // the connection pools belong to the upstream pools, which close them
  override async close (): Promise<void> {}
  override async destroy (): Promise<void> {}
}
