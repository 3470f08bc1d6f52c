import { createBalancer, balancerName } from './balancers'
import type { Balancer, SelectRequest } from './balancers/types'
import type { UpstreamDispatcher } from './dispatcher'
import { DuplicateError, InvalidOptionError, UnknownPoolError, UnknownTargetError } from './errors'
import { DEFAULTS, normalizeTarget, type PoolConfig, type TargetOptions } from './options'
import { Target, statusOf, viewOf, type TargetStatus, type TargetView } from './target'

export interface PoolStatus {
  name: string
  balancer: string
  available: number
  targets: TargetStatus[]
}

export interface RemoveTargetOptions {
  /** stop new requests and wait for in-flight ones (up to the pool's `drainTimeout`) */
  drain?: boolean
}

/**
 * A named pool of targets: it owns the targets, keeps the balancer fed with the ones that
 * may take requests (primaries, or the backups when no primary is available), and opens
 * and closes each target's connection pool. It knows nothing of Fastify.
 */
export class UpstreamPool {
  readonly name: string
  readonly config: PoolConfig
  private readonly balancer: Balancer
  private readonly dispatcher: UpstreamDispatcher
  private readonly byUrl = new Map<string, Target>()
  private readonly views = new Map<Target, TargetView>()
  private list: Target[] = []
  private viewList: readonly TargetView[] = []
  private drains = new Set<{ target: Target, timer: NodeJS.Timeout, done: () => void }>()
  private closed = false

  constructor (name: string, config: PoolConfig, dispatcher: UpstreamDispatcher) {
    this.name = name
    this.config = config
    this.dispatcher = dispatcher
    this.balancer = createBalancer(config.balancer)
    if (typeof this.balancer?.pick !== 'function' || typeof this.balancer?.update !== 'function') {
      throw new InvalidOptionError(`upstreams.${name}.balancer: the factory must return an object with pick() and update()`)
    }
    for (const target of config.targets) this.insert(new Target(target))
    this.refresh()
  }

  /** Read-only views of every target, in the order they were added. */
  get targets (): readonly TargetView[] {
    return this.viewList
  }

  /** The view of the target with this URL, if any. */
  target (url: string): TargetView | undefined {
    const target = this.byUrl.get(this.key(url))
    return target === undefined ? undefined : this.views.get(target)
  }

  /** Picks a target for the request; undefined when none may take it. */
  select (request: SelectRequest): TargetView | undefined {
    const target = this.pick(request)
    return target === undefined ? undefined : this.views.get(target)
  }

  /** Hot-path selection for the forwarder: the internal target, no view. */
  pick (request: SelectRequest): Target | undefined {
    return this.balancer.pick(request) as Target | undefined
  }

  viewOf (target: Target): TargetView {
    return this.views.get(target) as TargetView
  }

  addTarget (input: TargetOptions): TargetView {
    this.assertOpen()
    const config = normalizeTarget(input, `upstreams.${this.name}.targets`)
    if (this.byUrl.has(config.url)) throw new DuplicateError(`Target ${config.url} of pool "${this.name}"`)
    const target = new Target(config)
    this.insert(target)
    this.refresh()
    return this.views.get(target) as TargetView
  }

  /**
   * Takes a target out of rotation at once and removes it. With `drain`, it stays listed
   * as `draining` until its in-flight requests finish (or `drainTimeout` passes); its
   * connection pool closes only after the requests it carries have ended.
   */
  async removeTarget (url: string, options: RemoveTargetOptions = {}): Promise<void> {
    const target = this.mustGet(url)
    if (target.draining) throw new UnknownTargetError(this.name, `${url} (already being removed)`)
    target.draining = true
    this.refresh()
    if (options.drain === true && target.inflight > 0) await this.waitIdle(target)
    this.byUrl.delete(target.url)
    this.views.delete(target)
    this.list = this.list.filter((t) => t !== target)
    this.viewList = Object.freeze(this.list.map((t) => this.views.get(t) as TargetView))
    await this.dispatcher.release(target.origin)
  }

  setWeight (url: string, weight: number): void {
    const target = this.mustGet(url)
    if (!Number.isInteger(weight) || weight < 1 || weight > 1000) {
      throw new InvalidOptionError(`upstreams.${this.name}: weight of ${url} must be an integer from 1 to 1000`)
    }
    target.configuredWeight = weight
    target.weight = weight
    this.refresh()
  }

  setState (url: string, state: 'disabled' | 'enabled'): void {
    const target = this.mustGet(url)
    if (state !== 'disabled' && state !== 'enabled') {
      throw new InvalidOptionError(`upstreams.${this.name}: state must be 'disabled' or 'enabled'`)
    }
    target.disabled = state === 'disabled'
    this.refresh()
  }

  /** Seconds until a target may be available again, when known. */
  retryAfter (): number | undefined {
    return undefined
  }

  status (): PoolStatus {
    let available = 0
    for (const target of this.list) if (target.available) available++
    return {
      name: this.name,
      balancer: balancerName(this.config.balancer),
      available,
      targets: this.list.map(statusOf)
    }
  }

  /** Stops pending drains; the dispatcher closes the connections. */
  close (): void {
    this.closed = true
    for (const drain of this.drains) drain.done()
  }

  /** Feeds the balancer the primaries that may take requests, or else the backups. */
  refresh (): void {
    const primaries: Target[] = []
    const backups: Target[] = []
    for (const target of this.list) {
      if (!target.available) continue
      if (target.backup) backups.push(target)
      else primaries.push(target)
    }
    this.balancer.update(primaries.length > 0 ? primaries : backups)
  }

  private insert (target: Target): void {
    this.byUrl.set(target.url, target)
    this.views.set(target, viewOf(target))
    this.list.push(target)
    this.viewList = Object.freeze(this.list.map((t) => this.views.get(t) as TargetView))
    this.dispatcher.acquire(target.origin, this.config)
  }

  private waitIdle (target: Target): Promise<void> {
    return new Promise((resolve) => {
      const drain = {
        target,
        timer: setTimeout(() => drain.done(), this.config.drainTimeout ?? DEFAULTS.drainTimeout),
        done: () => {
          clearTimeout(drain.timer)
          target.onIdle = undefined
          this.drains.delete(drain)
          resolve()
        }
      }
      target.onIdle = drain.done
      this.drains.add(drain)
    })
  }

  private key (url: string): string {
    try {
      return normalizeTarget(url, 'url').url
    } catch {
      return url
    }
  }

  private mustGet (url: string): Target {
    this.assertOpen()
    const target = this.byUrl.get(this.key(url))
    if (target === undefined) throw new UnknownTargetError(this.name, url)
    return target
  }

  private assertOpen (): void {
    if (this.closed) throw new UnknownPoolError(this.name)
  }
}
