import { Resolver } from 'node:dns/promises'
import type { Logger } from '../contracts'
import { EtcdTargets } from '../etcd/targets'
import { normalizeTarget } from '../options/normalize'
import type { DiscoveredTargets, DiscoverySource } from '../options/schema'
import type { TargetConfig } from '../options/config'
import type { DiscoveryOptions, TargetOptions } from '../options/types'

/**
 * Discovery: where a pool's targets come from when they change at run time (a
 * `DiscoverySource`, see options/types.ts). The `Discoverer` polls one and reconciles the pool: a target that appears
 * is added (with slow start and health checks), one that disappears is drained, and when
 * a lookup fails the last known targets stay.
 */
/** What the discoverer needs of a pool. */
export interface DiscoveryHost {
  readonly name: string
  addTarget (target: TargetOptions): unknown
  /** throws when the pool cannot take the target (its protocol, say) */
  checkTarget (target: TargetConfig, path: string): void
  removeTarget (url: string, options: { drain: boolean }): Promise<void>
  setWeight (url: string, weight: number): void
  setBackup (url: string, backup: boolean): void
  target (url: string): { weight: number, backup: boolean } | undefined
}

function hostPort (address: string, port: number, protocol: string): string {
  return `${protocol}://${address.includes(':') ? `[${address}]` : address}:${port}`
}

/** A and AAAA records of `hostname`: each address a target on `port`. */
export class DnsSource implements DiscoverySource {
  private readonly resolver: Resolver
  private readonly options: { hostname: string, port: number, protocol: string, family: 0 | 4 | 6 }

  constructor (options: { hostname: string, port: number, protocol?: 'http' | 'https', family?: 0 | 4 | 6, servers?: string[], timeout?: number }) {
    this.resolver = new Resolver({ timeout: options.timeout ?? 2000, tries: 2 })
    if (options.servers !== undefined) this.resolver.setServers(options.servers)
    this.options = { hostname: options.hostname, port: options.port, protocol: options.protocol ?? 'http', family: options.family ?? 0 }
  }

  async resolve (): Promise<DiscoveredTargets> {
    const { hostname, port, protocol, family } = this.options
    const lookups = await Promise.allSettled([
      family === 6 ? Promise.resolve([]) : this.resolver.resolve4(hostname, { ttl: true }),
      family === 4 ? Promise.resolve([]) : this.resolver.resolve6(hostname, { ttl: true })
    ])
    const records = lookups.flatMap((lookup) => lookup.status === 'fulfilled' ? lookup.value : [])
    if (records.length === 0) {
      // no record at all: a failed lookup, unless the name is known to have no address
      const failure = lookups.find((lookup) => lookup.status === 'rejected' && !isNoData(lookup.reason))
      if (failure !== undefined) throw (failure as PromiseRejectedResult).reason
    }
    return {
      targets: records.map((record) => hostPort(record.address, port, protocol)),
      ttl: records.length === 0 ? undefined : Math.min(...records.map((record) => record.ttl))
    }
  }

  close (): void {
    this.resolver.cancel()
  }
}

/** SRV records of `name`: each a target `host:port`, weighted; higher priorities are backups. */
export class DnsSrvSource implements DiscoverySource {
  private readonly resolver: Resolver
  private readonly options: { name: string, protocol: string }

  constructor (options: { name: string, protocol?: 'http' | 'https', servers?: string[], timeout?: number }) {
    this.resolver = new Resolver({ timeout: options.timeout ?? 2000, tries: 2 })
    if (options.servers !== undefined) this.resolver.setServers(options.servers)
    this.options = { name: options.name, protocol: options.protocol ?? 'http' }
  }

  async resolve (): Promise<DiscoveredTargets> {
    let records: Array<{ name: string, port: number, priority: number, weight: number }>
    try {
      records = await this.resolver.resolveSrv(this.options.name)
    } catch (error) {
      if (isNoData(error)) return { targets: [] }
      throw error
    }
    const best = Math.min(...records.map((record) => record.priority))
    return {
      targets: records.map((record) => ({
        url: hostPort(record.name, record.port, this.options.protocol),
        weight: Math.min(1000, Math.max(1, record.weight)),
        backup: record.priority !== best
      }))
    }
  }

  close (): void {
    this.resolver.cancel()
  }
}

function isNoData (error: unknown): boolean {
  const code = (error as { code?: string }).code
  return code === 'ENODATA' || code === 'ENOTFOUND'
}

export function createSource (options: DiscoveryOptions, log: Logger, pool: string): DiscoverySource {
  if ('resolve' in options) return options
  if (options.type === 'dns-srv') return new DnsSrvSource(options)
  if (options.type === 'etcd') return new EtcdTargets(options, log, pool)
  return new DnsSource(options)
}

/**
 * Polls a source on `interval` (sooner when a TTL says so), or listens to one that tells of
 * its changes (`watch`), and reconciles the pool.
 */
export class Discoverer {
  private readonly source: DiscoverySource
  private readonly host: DiscoveryHost
  private readonly interval: number
  private readonly log: Logger
  /** the URLs this discoverer added, and so may remove */
  private readonly managed = new Set<string>()
  /** the URLs it removed whose drain is not over */
  private readonly draining = new Set<string>()
  /** the targets of the last answer, by URL */
  private wanted = new Map<string, TargetConfig>()
  private timer: NodeJS.Timeout | undefined
  private watching = false
  private closed = false
  failures = 0

  constructor (source: DiscoverySource, host: DiscoveryHost, interval: number, log: Logger) {
    this.source = source
    this.host = host
    this.interval = interval
    this.log = log
  }

  /** The first lookup: resolves when its targets are in the pool (or it failed). */
  async start (): Promise<void> {
    await this.run()
  }

  close (): void {
    this.closed = true
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.source.close?.()
  }

  private async run (): Promise<void> {
    let next = this.interval
    try {
      const ttl = this.apply(await this.source.resolve())
      if (ttl !== undefined) next = Math.min(next, Math.max(1000, ttl * 1000))
    } catch (error) {
      if (this.closed) return
      this.failures++
      // keep serving the last known targets
      this.log.warn({ pool: this.host.name, err: error }, 'upstream discovery failed: keeping the last known targets')
    }
    if (this.closed) return
    if (this.source.watch !== undefined) {
      // the source tells of every change from here on: no polling
      if (!this.watching) {
        this.watching = true
        this.source.watch(this.pushed)
      }
      return
    }
    this.timer = setTimeout(() => { this.run().catch(() => {}) }, next)
    this.timer.unref()
  }

  /**
   * An answer a source pushed (see watch): each target it names is checked alone, and one
   * the pool cannot take is left out with a warning, as the source checked its own keys;
   * the others still apply.
   */
  private readonly pushed = (answer: DiscoveredTargets | TargetOptions[]): void => {
    try {
      this.apply(answer, true)
    } catch (error) {
      this.log.warn({ pool: this.host.name, err: error }, 'upstream discovery: a change could not be applied')
    }
  }

  /** Reconciles the pool with an answer; returns its TTL, if any. */
  private apply (answer: DiscoveredTargets | TargetOptions[], eachAlone = false): number | undefined {
    if (this.closed) return undefined
    const { targets, ttl } = Array.isArray(answer) ? { targets: answer, ttl: undefined } : answer
    this.failures = 0
    this.reconcile(targets, eachAlone)
    return ttl
  }

  private reconcile (answer: TargetOptions[], eachAlone: boolean): void {
    // the whole answer is checked (and normalised as `targets` are) before anything changes;
    // a pushed one target by target
    const targets: TargetOptions[] = []
    const wanted: TargetConfig[] = []
    answer.forEach((option, i) => {
      const path = `upstreams.${this.host.name}.discovery[${i}]`
      try {
        const target = normalizeTarget(option, path)
        this.host.checkTarget(target, path)
        targets.push(option)
        wanted.push(target)
      } catch (error) {
        if (!eachAlone) throw error
        this.log.warn({ pool: this.host.name, reason: (error as Error).message }, 'upstream discovery: a target the pool cannot take is left out')
      }
    })
    const seen = new Map<string, TargetConfig>()
    wanted.forEach((target, i) => {
      seen.set(target.url, target)
      // one this discoverer is draining comes back once its drain is over (see below)
      if (this.draining.has(target.url)) return
      const existing = this.host.target(target.url)
      // a weight the source names is applied; one it leaves out is the operator's to set
      const named = typeof targets[i] !== 'string' && (targets[i] as { weight?: number }).weight !== undefined
      if (existing === undefined) {
        this.host.addTarget(target)
        this.managed.add(target.url)
      } else if (this.managed.has(target.url)) {
        if (named && existing.weight !== target.weight) this.host.setWeight(target.url, target.weight)
        if (existing.backup !== target.backup) this.host.setBackup(target.url, target.backup)
      }
    })
    this.wanted = seen
    // a target that disappears is drained in the background: the next lookup need not wait
    for (const key of [...this.managed]) {
      if (seen.has(key)) continue
      this.managed.delete(key)
      this.draining.add(key)
      this.host.removeTarget(key, { drain: true }).catch(() => {}).finally(() => { this.drained(key) })
    }
  }

  /** A target this discoverer removed is gone: the source may want it again meanwhile (a key put back). */
  private drained (url: string): void {
    this.draining.delete(url)
    const target = this.wanted.get(url)
    if (this.closed || target === undefined || this.host.target(url) !== undefined) return
    this.host.addTarget(target)
    this.managed.add(url)
  }
}
