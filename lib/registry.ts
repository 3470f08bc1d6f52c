import type { UpstreamDispatcher } from './dispatcher'
import { DuplicateError, UnknownPoolError } from './errors'
import { checkPoolName, normalizePool, type PoolOptions } from './options'
import { UpstreamPool, type PoolStatus } from './pool'

export interface RegistryStatus {
  pools: Record<string, PoolStatus>
}

/** `fastify.upstreams`: the named pools of one plugin instance. */
export class UpstreamRegistry implements Iterable<UpstreamPool> {
  private readonly pools = new Map<string, UpstreamPool>()
  private readonly dispatcher: UpstreamDispatcher

  constructor (dispatcher: UpstreamDispatcher) {
    this.dispatcher = dispatcher
  }

  get size (): number {
    return this.pools.size
  }

  get (name: string): UpstreamPool | undefined {
    return this.pools.get(name)
  }

  has (name: string): boolean {
    return this.pools.has(name)
  }

  /** Adds a pool, validating its options as register does; works before and after `ready`. */
  add (name: string, options: PoolOptions): UpstreamPool {
    checkPoolName(name)
    if (this.pools.has(name)) throw new DuplicateError(`Upstream pool "${name}"`)
    const pool = new UpstreamPool(name, normalizePool(options, `upstreams.${name}`), this.dispatcher)
    this.pools.set(name, pool)
    return pool
  }

  /** Removes a pool: new requests for it fail with FST_UPSTREAM_UNKNOWN_POOL, in-flight ones finish. */
  async remove (name: string): Promise<void> {
    const pool = this.pools.get(name)
    if (pool === undefined) throw new UnknownPoolError(name)
    this.pools.delete(name)
    await Promise.all(pool.targets.map((t) => pool.removeTarget(t.url)))
    pool.close()
  }

  status (): RegistryStatus {
    const pools: Record<string, PoolStatus> = {}
    for (const [name, pool] of this.pools) pools[name] = pool.status()
    return { pools }
  }

  [Symbol.iterator] (): Iterator<UpstreamPool> {
    return this.pools.values()
  }

  keys (): IterableIterator<string> {
    return this.pools.keys()
  }

  /** Closes every pool and connection; called from the plugin's onClose. */
  async close (): Promise<void> {
    for (const pool of this.pools.values()) pool.close()
    this.pools.clear()
    await this.dispatcher.destroy()
  }
}
