import { DuplicateError, UnknownPoolError } from '../errors'
import { channels } from '../channels'
import type { Logger, PoolStatus, RegistryStatus, TargetStateEvent } from '../contracts'
import { checkPoolName, normalizePool } from '../options/normalize'
import type { PluginOptions, PoolOptions } from '../options/types'
import type { UpstreamPool, UpstreamRegistry } from './api'
import { Pool } from './pool'
import { SplitRegistry } from '../traffic/splits'

/** How each kind of change that is no state change reads in the log. */
const OPERATOR_CHANGES = { added: 'added', removed: 'removed', weight: 're-weighted', backup: 'made a backup or a primary' } as const

/** `fastify.upstreams`: the named pools of one plugin instance. */
export class PoolRegistry implements Iterable<Pool> {
  private readonly pools = new Map<string, Pool>()
  private readonly log: Logger
  private readonly hook: PluginOptions['onTargetStateChange']
  /** the splits of traffic between these pools (their names are taken for pools too) */
  readonly splits: SplitRegistry
  private started = false

  /** what users get as `app.upstreams` (see contracts.ts) */
  readonly api: UpstreamRegistry = registryApi(this)

  constructor (log: Logger, hook?: PluginOptions['onTargetStateChange'], splits = new SplitRegistry(log)) {
    this.log = log
    this.hook = hook
    this.splits = splits
  }

  get size (): number {
    return this.pools.size
  }

  get (name: string): Pool | undefined {
    return this.pools.get(name)
  }

  has (name: string): boolean {
    return this.pools.has(name)
  }

  /**
   * Adds a pool, validating its options as register does. Works before and after `ready`;
   * after it, the pool's active checks start at once.
   */
  add (name: string, options: PoolOptions): Pool {
    if (this.pools.has(name)) throw new DuplicateError(`Upstream pool "${name}"`)
    const pool = this.build(name, options)
    this.pools.set(name, pool)
    if (this.started) pool.start().catch(() => {})
    return pool
  }

  /** A pool built from `options`, validated as register validates them; not in the registry yet. */
  private build (name: string, options: PoolOptions): Pool {
    checkPoolName(name)
    if (this.splits.has(name)) throw new DuplicateError(`A split named "${name}"`)
    const config = normalizePool(options, `upstreams.${name}`)
    const pool = new Pool(name, config, this.stateChanged, this.log)
    if (config.tls.rejectUnauthorized === false) {
      this.log.warn({ pool: name }, 'TLS certificates of this pool\'s targets are NOT verified (tls.rejectUnauthorized: false)')
    }
    if (config.headerPolicy.host === 'pass') {
      this.log.warn({ pool: name }, "the client's Host header is sent to this pool's targets (host: 'pass'): clients choose the virtual host upstream")
    }
    return pool
  }

  /** Removes a pool: new requests for it fail with FST_UPSTREAM_UNKNOWN_POOL, in-flight ones finish. */
  async remove (name: string): Promise<void> {
    const pool = this.pools.get(name)
    if (pool === undefined) throw new UnknownPoolError(name)
    this.pools.delete(name)
    await retire(pool)
  }

  /**
   * Adds a pool, or replaces the pool of that name with a new one built from `options`
   * (validated first: an invalid one changes nothing). After `ready`, the new pool's first
   * round of active checks runs before it takes requests; the old one's in-flight requests
   * finish on it.
   */
  async put (name: string, options: PoolOptions): Promise<void> {
    const old = this.pools.get(name)
    const pool = this.build(name, options)
    if (this.started) await pool.start().catch(() => {})
    // changed meanwhile (added, removed, or put again): this one is not wanted any more
    if (this.pools.get(name) !== old) {
      await pool.close()
      return
    }
    this.pools.set(name, pool)
    if (old !== undefined) {
      this.log.info({ pool: name }, 'upstream pool replaced')
      await retire(old)
    }
  }

  status (): RegistryStatus {
    const pools: Record<string, PoolStatus> = {}
    for (const [name, pool] of this.pools) pools[name] = pool.status()
    return { pools, splits: this.splits.status() }
  }

  [Symbol.iterator] (): Iterator<Pool> {
    return this.pools.values()
  }

  keys (): IterableIterator<string> {
    return this.pools.keys()
  }

  /** Starts every pool's active checks; resolves when their first round is done. */
  async start (): Promise<void> {
    this.started = true
    await Promise.all([...this.pools.values()].map((pool) => pool.start()))
  }

  /** Closes every pool and connection; called from the plugin's onClose. */
  async close (): Promise<void> {
    const pools = [...this.pools.values()]
    this.pools.clear()
    await Promise.all(pools.map((pool) => pool.close()))
  }

  /** Every state change: one log line, the hook, the diagnostics channel. */
  private readonly stateChanged = (event: TargetStateEvent): void => {
    const line = { pool: event.pool, target: event.target.url, from: event.from, to: event.to, reason: event.reason }
    // what the operator did is news; what health checks found is a warning
    if (event.kind !== 'state') this.log.info(line, `upstream target ${OPERATOR_CHANGES[event.kind]}`)
    else if (event.to === 'unhealthy' || event.to === 'ejected') this.log.warn(line, `upstream target is ${event.to}`)
    else this.log.info(line, `upstream target is ${event.to}`)
    this.hook?.(event)
    channels.targetState.publish(event)
  }
}

/** Takes every target of a pool that left the registry out of rotation, and closes it once its requests are done. */
async function retire (pool: Pool): Promise<void> {
  await Promise.all(pool.targets.map((t) => pool.removeTarget(t.url)))
  await pool.close(true)
}

/** The public face of `registry`: the README's members, handing out each pool's own face. */
function registryApi (registry: PoolRegistry): UpstreamRegistry {
  return Object.freeze({
    get size () { return registry.size },
    get: (name: string) => registry.get(name)?.api,
    has: (name: string) => registry.has(name),
    add: (name: string, options: PoolOptions) => registry.add(name, options).api,
    remove: async (name: string) => await registry.remove(name),
    status: () => registry.status(),
    split: (name: string) => registry.splits.api(name),
    keys: () => registry.keys(),
    * [Symbol.iterator] (): Iterator<UpstreamPool> {
      for (const pool of registry) yield pool.api
    }
  })
}
