import type { LookupFunction } from 'node:net'
import { buildConnector, Pool } from 'undici'
import { Http2Client } from './http2-client'
import type { PoolConfig } from '../options/config'
import { skipUnaskedContinue } from './interim'
import { NameLookup } from './name-lookup'
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
 *
 * Host names are resolved by `lookup` when given (the pool's DNS discovery servers, see
 * NameLookup), and every connection drops the unasked `100 Continue` undici would fail
 * on (see interim.ts).
 *
 * With `http2`, the connections speak the pool's `http2` option: `true` offers h2 and
 * http/1.1 by ALPN on https targets (the target chooses; an http target speaks HTTP/1.1),
 * `'h2c'` takes every cleartext connection as HTTP/2 with prior knowledge. Traffic goes
 * through an Http2Client, which reads the protocol ALPN agreed on; active checks through
 * undici's Client, which speaks HTTP/2 on a socket whose `alpnProtocol` is 'h2', as its
 * buildConnector sets it when told here (undici's Client options `allowH2` and `useH2c` do
 * not reach a connector of one's own). Without it, every connection is HTTP/1.1
 * (WebSocket tunnels use such a one).
 */
export function connector (config: PoolConfig, lookup?: LookupFunction, http2 = false): buildConnector.connector {
  const connect = buildConnector({
    minVersion: 'TLSv1.2',
    ...config.tls,
    rejectUnauthorized: config.tls.rejectUnauthorized !== false,
    timeout: config.timeout.connect,
    ...(http2 && config.http2 === true ? { allowH2: true } : {}),
    ...(http2 && config.http2 === 'h2c' ? { useH2c: true } : {}),
    // passed on to net.connect / tls.connect
    ...(lookup === undefined ? {} : { lookup })
  } as buildConnector.BuildOptions)
  return (options, callback) => {
    connect({ ...options, servername: undefined }, (error, socket) => {
      if (socket != null) skipUnaskedContinue(socket)
      callback(error as Error, socket as never)
    })
  }
}

/**
 * How often a pool's connection pools are looked over for idle ones (ms). One that had no
 * request and no open connection for a whole period is closed: it is gone one to two
 * periods after its last use (its keep-alive connections close first, after
 * `keepAliveTimeout`), and a target that gets a request now and then keeps its own.
 */
export const IDLE_SWEEP_INTERVAL = 60_000

/**
 * true when the pool's connections to `origin` are HTTP/2 (or may be, by ALPN): `'h2c'`,
 * or `true` for an https origin; an http origin of a `true` pool speaks HTTP/1.1 (there is
 * no ALPN to offer h2 with).
 */
function speaksHttp2 (config: PoolConfig, origin: string): boolean {
  return config.http2 === 'h2c' || (config.http2 === true && origin.startsWith('https:'))
}

/** What the targets of one origin send through: undici's Pool over HTTP/1.1, an Http2Client with `http2`. */
type ConnectionPool = Pool | Http2Client

/** The targets of one origin in one upstream pool, and their connection pool while it lives. */
interface OriginEntry {
  /** the targets on this origin (more than one when their paths differ) */
  readonly targets: Target[]
  /** the connection pool (undici's, or an Http2Client), made by the first request; undefined until then and once idle */
  pool: ConnectionPool | undefined
  /** the targets' request count at the last sweep (-1: not swept since the pool was made) */
  requests: number
}

/**
 * One upstream pool's keep-alive connection pools, one per target origin, built with that
 * pool's settings (timeouts, connection limit, TLS). Two upstream pools that list the same
 * URL have separate connections, so that each keeps its own TLS settings.
 *
 * An undici `Pool` holds about 18 KB even with no connection open, and discovery can
 * list thousands of targets that mostly sit idle, so a connection pool is made by the
 * first request to its origin (`UpstreamDispatcher.dispatch`) and closed again after an
 * idle spell. Idle pools are found by a sweep every IDLE_SWEEP_INTERVAL, run only while
 * some connection pool exists and unref'd: it reads the targets' request counters, which
 * every request bumps anyway, and undici's own counts, so a request pays nothing for it
 * (a last-use time or an idle timer per pool would cost a clock read or a timer reset per
 * request, and undici's `disconnect` events a listener and a timer per pool).
 */
export class TargetConnections {
  private readonly origins = new Map<string, OriginEntry>()
  /** the entries with a connection pool: the only ones the sweep looks at */
  private readonly live = new Set<OriginEntry>()
  /** idle pools being closed, awaited by close() */
  private readonly closing = new Set<Promise<void>>()
  private sweeper: NodeJS.Timeout | undefined = undefined
  private readonly config: PoolConfig
  /**
   * how the pool's connections are opened: one for all its origins, and for its active
   * checks; they speak the pool's `http2` option
   */
  readonly connector: buildConnector.connector
  /** the same, always HTTP/1.1: for WebSocket tunnels, which speak HTTP/1.1 on the socket */
  readonly http1Connector: buildConnector.connector
  /** target host names resolved by the pool's DNS discovery servers (dns-srv with `servers`) */
  readonly names: NameLookup | undefined
  private readonly sweepInterval: number

  constructor (config: PoolConfig, sweepInterval = IDLE_SWEEP_INTERVAL) {
    this.config = config
    const discovery = config.discovery
    this.names = discovery !== undefined && 'type' in discovery && discovery.type === 'dns-srv' && discovery.servers !== undefined
      ? new NameLookup(discovery.servers, discovery.timeout ?? 2000)
      : undefined
    this.http1Connector = connector(config, this.names?.lookup)
    this.connector = config.http2 === false ? this.http1Connector : connector(config, this.names?.lookup, true)
    this.sweepInterval = sweepInterval
  }

  /** How many connection pools exist (made and not yet closed). */
  get size (): number {
    return this.live.size
  }

  /**
   * Takes `target` in: it shares its origin's connection pool with the pool's other
   * targets on that origin. No connection pool is made here (see connect).
   */
  acquire (target: Target): void {
    let entry = this.origins.get(target.origin)
    if (entry === undefined) {
      entry = { targets: [], pool: undefined, requests: -1 }
      this.origins.set(target.origin, entry)
    }
    entry.targets.push(target)
    target.connections = this
    target.connection = entry.pool
    // as the origin's other targets; else HTTP/2 until a connection says otherwise (a
    // `true` pool's https target may choose HTTP/1.1)
    target.perConnection = entry.targets.length > 1
      ? entry.targets[0].perConnection
      : (speaksHttp2(this.config, target.origin) ? this.config.http2Settings.maxConcurrentStreams : 1)
  }

  /**
   * Makes the connection pool of `target`'s origin, on its first request, and hands it to
   * every target on that origin. Undefined for a target that has left the pool.
   */
  connect (target: Target): ConnectionPool | undefined {
    const entry = this.origins.get(target.origin)
    if (entry === undefined || !entry.targets.includes(target)) return undefined
    if (entry.pool !== undefined) return (target.connection = entry.pool)
    const config = this.config
    const pool = !speaksHttp2(config, target.origin)
      ? new Pool(target.origin, this.http1Options(this.connector))
      : new Http2Client(target.origin, {
        connect: this.connector,
        maxConnections: config.maxConnections,
        maxConcurrentStreams: config.http2Settings.maxConcurrentStreams,
        pingInterval: config.http2Settings.pingInterval,
        headersTimeout: config.timeout.response,
        bodyTimeout: config.timeout.idle,
        // a `true` pool's target that chooses HTTP/1.1 by ALPN: one request per connection
        http1: () => new Pool(target.origin, this.http1Options(this.http1Connector)),
        onProtocol: (perConnection) => { for (const other of entry.targets) other.perConnection = perConnection }
      })
    entry.pool = pool
    entry.requests = -1
    for (const other of entry.targets) other.connection = pool
    this.live.add(entry)
    if (this.sweeper === undefined) {
      this.sweeper = setInterval(() => this.sweep(), this.sweepInterval)
      this.sweeper.unref()
    }
    return pool
  }

  /** undici's Pool options for HTTP/1.1 connections made by `connect`. */
  private http1Options (connect: buildConnector.connector): Pool.Options {
    const config = this.config
    return {
      connections: config.maxConnections ?? null,
      keepAliveTimeout: config.keepAliveTimeout,
      headersTimeout: config.timeout.response,
      bodyTimeout: config.timeout.idle,
      connect
    }
  }

  /**
   * Closes the connection pools that had no request since the last sweep and hold no
   * connection and no request now; the next request to their origin makes a new one.
   * An HTTP/2 pool is closed with its connections open: an HTTP/2 connection has no idle
   * timeout (and its PINGs keep it alive), where an idle HTTP/1.1 connection closes after
   * `keepAliveTimeout`.
   */
  sweep (): void {
    const http2 = this.config.http2 !== false
    for (const entry of this.live) {
      const pool = entry.pool as ConnectionPool
      let requests = 0
      let inflight = 0
      for (const target of entry.targets) {
        requests += target.requests
        inflight += target.inflight
      }
      const stats = pool.stats
      if (requests !== entry.requests || inflight > 0 || (stats.connected > 0 && !http2) || stats.size > 0 || stats.queued > 0) {
        entry.requests = requests
        continue
      }
      this.forget(entry)
      // nothing open and nothing queued: this settles at once, but close() waits for it
      const closing = pool.close().catch(() => {}).finally(() => this.closing.delete(closing))
      this.closing.add(closing)
    }
  }

  /**
   * Lets `target` go; the last target on its origin closes the origin's connection pool,
   * if one was made, once its requests have finished.
   */
  release (target: Target): Promise<void> {
    target.connections = undefined
    target.connection = undefined
    const entry = this.origins.get(target.origin)
    const index = entry === undefined ? -1 : entry.targets.indexOf(target)
    if (entry === undefined || index === -1) return Promise.resolve()
    entry.targets.splice(index, 1)
    if (entry.targets.length > 0) return Promise.resolve()
    this.origins.delete(target.origin)
    const pool = entry.pool
    if (pool === undefined) return Promise.resolve()
    this.forget(entry)
    return pool.close()
  }

  /** Closes every connection pool: gracefully (in-flight requests finish) or at once. */
  async close (graceful: boolean): Promise<void> {
    const pools: ConnectionPool[] = []
    for (const entry of this.origins.values()) {
      for (const target of entry.targets) {
        target.connections = undefined
        target.connection = undefined
      }
      if (entry.pool !== undefined) pools.push(entry.pool)
    }
    this.origins.clear()
    this.live.clear()
    this.stopSweeping()
    this.names?.close()
    await Promise.all([...pools.map((pool) => graceful ? pool.close() : pool.destroy()), ...this.closing])
  }

  /** Takes an entry's connection pool away from it and its targets (the caller closes it). */
  private forget (entry: OriginEntry): void {
    entry.pool = undefined
    entry.requests = -1
    for (const target of entry.targets) target.connection = undefined
    this.live.delete(entry)
    if (this.live.size === 0) this.stopSweeping()
  }

  private stopSweeping (): void {
    if (this.sweeper !== undefined) clearInterval(this.sweeper)
    this.sweeper = undefined
  }
}
