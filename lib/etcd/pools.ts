import type { Logger } from '../contracts'
import type { PoolOptions } from '../options/types'
import type { PoolRegistry } from '../upstream/registry'
import { EtcdClient } from './client'
import { PrefixWatch, type PrefixChange } from './prefix-watch'
import type { EtcdPoolsOptions } from './schema'

/** How long `ready()` waits for etcd by default before it starts with the pools in code (ms). */
export const DEFAULT_START_TIMEOUT = 5000

/**
 * Pools from etcd (the plugin option `etcd`): the key `<prefix><name>` holds pool `name`'s
 * options as JSON, validated as `upstreams` are. A key that appears adds the pool, a new
 * value replaces it (see PoolRegistry.put: the new pool takes requests once its first
 * active checks are done, the old one's in-flight requests finish), a deleted key removes
 * it, and every instance watching the prefix does the same. A pool of the same name in
 * code is the default: the key's value replaces it, and deleting the key puts the code's
 * back. An invalid value is refused with a warning naming the key and the field, and the
 * pool stays as it was.
 */
export class EtcdPools {
  private readonly client: EtcdClient
  private readonly watcher: PrefixWatch
  private readonly registry: PoolRegistry
  private readonly code: ReadonlyMap<string, PoolOptions>
  private readonly log: Logger
  private readonly prefix: string
  private readonly startTimeout: number
  /** the pools etcd set, by name */
  private readonly managed = new Set<string>()
  /** each pool's changes, one after the other */
  private readonly queues = new Map<string, Promise<void>>()
  private closed = false

  constructor (options: EtcdPoolsOptions, registry: PoolRegistry, code: ReadonlyMap<string, PoolOptions>, log: Logger) {
    this.client = new EtcdClient(options)
    this.registry = registry
    this.code = code
    this.log = log
    this.prefix = options.prefix
    this.startTimeout = options.startTimeout ?? DEFAULT_START_TIMEOUT
    this.watcher = new PrefixWatch(this.client, options.prefix, this.changed, log, 'pools')
  }

  /**
   * Reads the pools, and resolves once they are in the registry; when etcd has not answered
   * within `startTimeout`, resolves anyway (the pools in code serve) and keeps trying.
   */
  async start (): Promise<void> {
    this.watcher.start()
    if (!await this.watcher.synced(this.startTimeout)) {
      this.log.warn({ prefix: this.prefix, ms: this.startTimeout }, 'etcd did not answer in time: starting with the pools in code; the pools from etcd follow when it does')
      return
    }
    await Promise.all([...this.queues.values()])
  }

  /** Stops watching; changes under way finish first, and none is applied after. */
  async close (): Promise<void> {
    this.closed = true
    this.watcher.close()
    await Promise.allSettled([...this.queues.values()])
    await this.client.close()
  }

  private readonly changed = (changes: PrefixChange[]): void => {
    for (const { key, value } of changes) {
      const name = key.slice(this.prefix.length)
      // one change of a pool after the other; a failed one (logged) does not stop the next
      const queued = (this.queues.get(name) ?? Promise.resolve()).then(async () => { await this.apply(key, name, value) }).catch((error: Error) => {
        this.log.warn({ pool: name, key, reason: error.message }, 'upstream pool from etcd: the change could not be applied')
      })
      this.queues.set(name, queued)
      queued.then(() => { if (this.queues.get(name) === queued) this.queues.delete(name) }, () => {})
    }
  }

  private async apply (key: string, name: string, value: string | null): Promise<void> {
    if (this.closed) return
    if (value === null) {
      if (!this.managed.delete(name)) return
      const code = this.code.get(name)
      if (code !== undefined) {
        await this.registry.put(name, code)
        this.log.info({ pool: name, key }, 'upstream pool from etcd removed: the pool in code serves again')
      } else if (this.registry.has(name)) {
        await this.registry.remove(name)
        this.log.info({ pool: name, key }, 'upstream pool from etcd removed')
      }
      return
    }
    let options: PoolOptions
    try {
      options = JSON.parse(value) as PoolOptions
    } catch {
      this.log.warn({ pool: name, key }, 'upstream pool from etcd refused: its value is no JSON; the pool stays as it was')
      return
    }
    try {
      await this.registry.put(name, options)
    } catch (error) {
      this.log.warn({ pool: name, key, reason: (error as Error).message }, 'upstream pool from etcd refused: the pool stays as it was')
      return
    }
    this.managed.add(name)
    this.log.info({ pool: name, key }, 'upstream pool from etcd applied')
  }
}
