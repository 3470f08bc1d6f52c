import type { Logger } from '../contracts'
import { normalizeTarget } from '../options/normalize'
import type { DiscoveredTargets, DiscoverySource } from '../options/schema'
import type { TargetOptions } from '../options/types'
import { EtcdClient } from './client'
import { PrefixWatch, type PrefixChange } from './prefix-watch'
import type { EtcdDiscoveryOptions } from './schema'

/** How long the first read may take before the pool starts with the targets it has (ms). */
const FIRST_READ_TIMEOUT = 5000

/**
 * A pool's targets from etcd (discovery `{ type: 'etcd', endpoints, prefix }`): every key
 * under `prefix` is a target, its value a URL or `{ url, weight, backup }` as JSON (a
 * target process may put itself there with a lease: see registerTarget). The keys are
 * watched, so changes reach the pool as etcd makes them, not at a polling interval; a
 * value that is no valid target is refused with a warning naming its key (the key's last
 * valid target, if any, stays).
 */
export class EtcdTargets implements DiscoverySource {
  private readonly client: EtcdClient
  private readonly watcher: PrefixWatch
  private readonly log: Logger
  private readonly pool: string
  /** the valid targets, by key */
  private readonly targets = new Map<string, TargetOptions>()
  private listener: ((answer: DiscoveredTargets) => void) | undefined = undefined
  private started = false

  constructor (options: EtcdDiscoveryOptions, log: Logger, pool: string) {
    this.client = new EtcdClient(options)
    this.log = log
    this.pool = pool
    this.watcher = new PrefixWatch(this.client, options.prefix, this.changed, log, `targets of pool "${pool}"`)
  }

  /** The targets after the first read (it starts the watch); throws when etcd did not answer in time. */
  async resolve (): Promise<DiscoveredTargets> {
    if (!this.started) {
      this.started = true
      this.watcher.start()
    }
    if (!await this.watcher.synced(FIRST_READ_TIMEOUT)) throw new Error(`etcd did not answer within ${FIRST_READ_TIMEOUT} ms`)
    return { targets: [...this.targets.values()] }
  }

  watch (listener: (answer: DiscoveredTargets) => void): void {
    this.listener = listener
  }

  close (): void {
    this.watcher.close()
    this.client.close().catch(() => {})
  }

  private readonly changed = (changes: PrefixChange[]): void => {
    for (const { key, value } of changes) {
      if (value === null) {
        this.targets.delete(key)
        continue
      }
      // a value that is no target changes nothing: the key's last good target stays
      const target = this.parse(key, value)
      if (target !== undefined) this.targets.set(key, target)
    }
    this.listener?.({ targets: [...this.targets.values()] })
  }

  /** The target a value names, or undefined (with a warning) when it names none. */
  private parse (key: string, value: string): TargetOptions | undefined {
    let option: unknown = value.trim()
    if ((option as string).startsWith('{')) {
      try {
        option = JSON.parse(option as string)
      } catch {
        this.log.warn({ pool: this.pool, key }, 'etcd key ignored: its value is neither a URL nor JSON')
        return undefined
      }
    }
    try {
      normalizeTarget(option as TargetOptions, `etcd key ${key}`)
      return option as TargetOptions
    } catch (error) {
      this.log.warn({ pool: this.pool, key, reason: (error as Error).message }, 'etcd key ignored: its value is no valid target')
      return undefined
    }
  }
}
