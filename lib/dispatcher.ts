import { Dispatcher, Pool } from 'undici'
import type { PoolConfig } from './options'

interface Entry { pool: Pool, refs: number }

/** How connections to a pool's targets are opened: shared by traffic and active checks. */
export function connectOptions (config: PoolConfig): { timeout: number } {
  return { timeout: config.timeout.connect }
}

/**
 * The undici dispatcher handed to `@fastify/reply-from`: it routes each request, by its
 * origin, to that target's own keep-alive `Pool`, built with the settings of the
 * upstream pool that owns the target (timeouts, connection limits, TLS).
 * A target URL shared by two upstream pools shares one connection pool, built with the
 * settings of the first.
 */
export class UpstreamDispatcher extends Dispatcher {
  private readonly pools = new Map<string, Entry>()

  /** Opens (or shares) the connection pool of `origin`. */
  acquire (origin: string, config: PoolConfig): void {
    const entry = this.pools.get(origin)
    if (entry !== undefined) {
      entry.refs++
      return
    }
    const pool = new Pool(origin, {
      connections: config.maxConnections ?? null,
      keepAliveTimeout: config.keepAliveTimeout,
      headersTimeout: config.timeout.response,
      bodyTimeout: config.timeout.idle,
      connect: connectOptions(config)
    })
    this.pools.set(origin, { pool, refs: 1 })
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

  override dispatch (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const entry = this.pools.get(options.origin as string)
    if (entry === undefined) {
      // the target was removed between selection and dispatch: undici reports a throw
      // from dispatch() to the request's callback, like a refused connection
      throw Object.assign(new Error(`no connection pool for ${String(options.origin)}`), { code: 'ECONNREFUSED' })
    }
    return entry.pool.dispatch(options, handler)
  }

  override async close (): Promise<void> {
    const closing = [...this.pools.values()].map((entry) => entry.pool.close())
    this.pools.clear()
    await Promise.all(closing)
  }

  override async destroy (): Promise<void> {
    const destroying = [...this.pools.values()].map((entry) => entry.pool.destroy())
    this.pools.clear()
    await Promise.all(destroying)
  }
}
