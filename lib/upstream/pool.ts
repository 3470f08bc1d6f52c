// Over 300 lines for a reason: the pool is the one place where a target's membership and
// state change (add, remove with drain, weight, state, refresh, status), so that each
// change is applied, fed to the balancer and published together. Selection, drains,
// sticky sessions and connections are in files of their own.
import { performance } from 'node:perf_hooks'
import { ActiveProber } from '../health/active-prober'
import { createBalancer, balancerName } from '../balancers'
import type { Balancer, SelectRequest } from '../balancers/types'
import { TargetConnections } from './connections'
import { DuplicateError, InvalidOptionError, UnknownPoolError, UnknownTargetError } from '../errors'
import type { Logger, PoolStatus, RemoveTargetOptions, TargetStateEvent, TargetView } from '../contracts'
import type { HealthHost } from '../health/host'
import type { PoolConfig, TargetConfig } from '../options/config'
import { checkTargetProtocol, normalizeTarget } from '../options/normalize'
import type { TargetOptions } from '../options/types'
import { OutlierDetector } from '../health/outlier-detector'
import { createSource, Discoverer } from './discovery'
import { SlowStart } from './slow-start'
import { Candidates } from './candidates'
import { Drains } from './drains'
import { StickyTargets } from './sticky'
import type { UpstreamPool } from './api'
import { Target, statusOf, viewOf } from './target'

const silent: Logger = { info () {}, warn () {} }

/** Where a pool reports state changes (the registry turns them into hooks, events and logs). */
export type StateChangeListener = (event: TargetStateEvent) => void

/**
 * A named pool of targets: it owns the targets and their health parts, keeps the balancer
 * fed with the targets that may take requests (primaries; backups when no primary is
 * available; all of them in panic), and opens and closes each target's connection pool.
 * It knows nothing of Fastify.
 */
export class Pool implements HealthHost {
  readonly name: string
  readonly config: PoolConfig
  /** the keep-alive connection pools of the targets */
  readonly connections: TargetConnections
  private readonly onStateChange: StateChangeListener
  readonly detector: OutlierDetector | undefined
  private readonly prober: ActiveProber | undefined
  private readonly discoverer: Discoverer | undefined
  private readonly slowStart: SlowStart
  private readonly byUrl = new Map<string, Target>()
  private readonly views = new Map<Target, TargetView>()
  private list: Target[] = []
  private viewList: readonly TargetView[] = []
  private readonly candidates: Candidates
  /** sticky sessions: the targets by the value of the pool's cookie */
  readonly sticky: StickyTargets | undefined
  private readonly drains = new Drains()
  private started = false
  private closed = false

  /** what users get for this pool (see contracts.ts) */
  readonly api: UpstreamPool = poolApi(this)

  constructor (name: string, config: PoolConfig, onStateChange: StateChangeListener = () => {}, log: Logger = silent) {
    this.name = name
    this.config = config
    this.connections = new TargetConnections(config)
    this.onStateChange = onStateChange
    let balancer: Balancer | undefined
    try {
      balancer = createBalancer(config.balancer)
    } catch (error) {
      throw new InvalidOptionError(`upstreams.${name}.balancer: the factory threw: ${(error as Error).message}`)
    }
    if (typeof balancer?.pick !== 'function' || typeof balancer?.update !== 'function') {
      throw new InvalidOptionError(`upstreams.${name}.balancer: the factory must return an object with pick() and update()`)
    }
    this.candidates = new Candidates(balancer, config, config.panicThreshold)
    this.sticky = config.sticky === undefined ? undefined : new StickyTargets(name, config.sticky.name)
    this.detector = config.passive === undefined ? undefined : new OutlierDetector(config.passive, this)
    this.prober = config.active === undefined ? undefined : new ActiveProber(config.active, this, this.detector, this.connections.connector, this.connections.names?.lookup, config.http2 !== false)
    this.slowStart = new SlowStart(config.slowStartWindow, config.slowStartMinWeight, () => this.refresh())
    this.discoverer = config.discovery === undefined
      ? undefined
      : new Discoverer(createSource(config.discovery, log, name), this, config.discoveryInterval, log)
    for (const target of config.targets) this.insert(new Target(target, config.tls.servername))
    this.refresh()
  }

  /** requests in flight on all targets (the proxy's retry budget reads it, on failures only) */
  get inflight (): number {
    let sum = 0
    for (const target of this.list) sum += target.inflight
    return sum
  }

  /** Read-only views of every target, in the order they were added. */
  get targets (): readonly TargetView[] {
    return this.viewList
  }

  /** The internal targets (for the health parts). */
  get targetList (): readonly Target[] {
    return this.list
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

  /**
   * Hot-path selection for the forwarder: the target the request's sticky cookie names,
   * while it may take requests, else the balancer's pick (see Candidates.pick).
   */
  pick (request: SelectRequest, exclude?: readonly Target[]): Target | undefined {
    if (this.sticky !== undefined) {
      const target = this.sticky.target(request)
      if (target !== undefined && target.available && this.candidates.usable(target, exclude)) return target
    }
    return this.candidates.pick(request, exclude)
  }

  /** true when some target that could take requests is at its connection limit */
  get saturated (): boolean {
    return this.candidates.saturated
  }

  /** fewer than `panicThreshold` percent of the primaries are available: balancing over all */
  get panic (): boolean {
    return this.candidates.panic
  }

  viewOf (target: Target): TargetView {
    return this.views.get(target) as TargetView
  }

  addTarget (input: TargetOptions): TargetView {
    this.assertOpen()
    const config = normalizeTarget(input, `upstreams.${this.name}.targets`)
    this.checkTarget(config, `upstreams.${this.name}.targets`)
    if (this.byUrl.has(config.url)) throw new DuplicateError(`Target ${config.url} of pool "${this.name}"`)
    const target = new Target(config, this.config.tls.servername)
    if (this.started) {
      // a target that joins a running pool ramps up; with active checks, it takes no
      // traffic until its first probe passes (as Envoy does with new hosts)
      this.slowStart.begin(target)
      if (this.prober !== undefined) target.unhealthy = true
    }
    this.insert(target)
    this.refresh()
    this.prober?.add(target)
    const view = this.views.get(target) as TargetView
    this.changed('added', target, view, `added with weight ${target.configuredWeight}${target.backup ? ' as a backup' : ''}`)
    return view
  }

  /** Throws when the pool cannot take `target` (an https target in an `http2: 'h2c'` pool). */
  checkTarget (target: TargetConfig, path: string): void {
    checkTargetProtocol(target.url, this.config.http2, path)
  }

  /**
   * Takes a target out of rotation at once and removes it. With `drain`, it stays listed
   * as `draining` until its in-flight requests finish (or `drainTimeout` passes); its
   * connection pool closes only after the requests it carries have ended.
   */
  async removeTarget (url: string, options: RemoveTargetOptions = {}): Promise<void> {
    const target = this.mustGet(url)
    if (target.draining) throw new UnknownTargetError(this.name, `${url} (already being removed)`)
    const before = target.state
    this.transition(target, (t) => { t.draining = true }, options.drain === true ? 'removed with drain' : 'removed')
    if (options.drain === true && target.inflight > 0) await this.drains.wait(target, this.config.drainTimeout)
    // what is still open on it after the drain (a WebSocket) closes now
    for (const stream of [...target.openStreams]) stream.close()
    const view = this.views.get(target) as TargetView
    this.byUrl.delete(target.url)
    this.views.delete(target)
    this.list = this.list.filter((t) => t !== target)
    this.viewList = Object.freeze(this.list.map((t) => this.views.get(t) as TargetView))
    this.prober?.remove(target)
    this.sticky?.remove(target)
    this.detector?.forget(target)
    this.slowStart.forget(target)
    const reason = target.inflight > 0 ? `removed with ${target.inflight} request(s) still in flight` : 'removed'
    this.onStateChange({ kind: 'removed', pool: this.name, target: view, from: before, to: 'removed', reason })
    await this.connections.release(target)
  }

  setWeight (url: string, weight: number): void {
    const target = this.mustGet(url)
    if (!Number.isInteger(weight) || weight < 1 || weight > 1000) {
      throw new InvalidOptionError(`upstreams.${this.name}: weight of ${url} must be an integer from 1 to 1000`)
    }
    const before = target.configuredWeight
    target.configuredWeight = weight
    this.slowStart.apply(target, performance.now())
    this.refresh()
    if (before !== weight) this.changed('weight', target, this.viewOf(target), `weight ${before} -> ${weight}`)
  }

  /** Makes a target a backup, or a primary again (for discovery: a source that says so). */
  setBackup (url: string, backup: boolean): void {
    const target = this.mustGet(url)
    if (target.backup === backup) return
    target.backup = backup
    this.refresh()
    this.changed('backup', target, this.viewOf(target), backup ? 'now a backup' : 'now a primary')
  }

  setState (url: string, state: 'disabled' | 'enabled'): void {
    const target = this.mustGet(url)
    if (state !== 'disabled' && state !== 'enabled') {
      throw new InvalidOptionError(`upstreams.${this.name}: state must be 'disabled' or 'enabled'`)
    }
    this.transition(target, (t) => { t.disabled = state === 'disabled' }, `${state} by the operator`)
  }

  /**
   * Applies a change to a target's flags; when its state changes, the balancer is fed
   * again, the change is reported, and a target that comes back ramps up (slow start).
   */
  transition (target: Target, change: (target: Target) => void, reason: string): void {
    const from = target.state
    const wasAvailable = target.available
    change(target)
    const to = target.state
    if (from === to) return
    if (!wasAvailable && target.available && this.started) this.slowStart.begin(target)
    this.refresh()
    this.onStateChange({ kind: 'state', pool: this.name, target: this.viewOf(target), from, to, reason })
  }

  /** Reports a change that is not a change of state. */
  private changed (kind: 'added' | 'weight' | 'backup', target: Target, view: TargetView, reason: string): void {
    this.onStateChange({ kind, pool: this.name, target: view, from: target.state, to: target.state, reason })
  }

  /** Seconds until a target may be available again, when known. */
  retryAfter (): number | undefined {
    const now = performance.now()
    let soonest = Infinity
    for (const target of this.list) {
      if (target.draining || target.disabled) continue
      if (target.ejected) soonest = Math.min(soonest, target.ejectedUntil - now)
      else if (target.unhealthy && this.config.active !== undefined) soonest = Math.min(soonest, this.config.active.interval)
    }
    return soonest === Infinity ? undefined : Math.max(1, Math.ceil(soonest / 1000))
  }

  status (): PoolStatus {
    let available = 0
    for (const target of this.list) if (target.available) available++
    return {
      name: this.name,
      balancer: balancerName(this.config.balancer),
      available,
      panic: this.panic,
      targets: this.list.map(statusOf)
    }
  }

  /** Closes what is open on the targets (WebSocket tunnels). */
  closeStreams (): void {
    for (const target of this.list) for (const stream of [...target.openStreams]) stream.close()
  }

  /** Starts active checks; resolves when their first round is done. */
  async start (): Promise<void> {
    // discovered targets first, so that the first round of probes covers them too
    await this.discoverer?.start()
    this.started = true
    await this.prober?.start()
  }

  /**
   * Stops checks, ramps and pending drains, and closes the connections: gracefully
   * (in-flight requests finish) or at once.
   */
  async close (graceful = false): Promise<void> {
    this.closed = true
    this.closeStreams()
    this.discoverer?.close()
    this.drains.close()
    this.detector?.close()
    this.slowStart.close()
    await this.prober?.close()
    await this.connections.close(graceful)
  }

  /** Feeds the balancer the targets that may take requests now (see chooseCandidates). */
  refresh (): void {
    this.candidates.update(this.list)
  }

  private insert (target: Target): void {
    this.sticky?.add(target)
    this.byUrl.set(target.url, target)
    this.views.set(target, viewOf(target))
    this.list.push(target)
    this.viewList = Object.freeze(this.list.map((t) => this.views.get(t) as TargetView))
    this.connections.acquire(target)
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

/** Each public face's pool, for the plugin's own parts and tests (not exported by the package). */
const internals = new WeakMap<UpstreamPool, Pool>()

/** The pool behind a public face. */
export function internalPool (api: UpstreamPool): Pool | undefined {
  return internals.get(api)
}

/** The public face of `pool`: the README's members, reaching the pool by closure only. */
function poolApi (pool: Pool): UpstreamPool {
  const api: UpstreamPool = Object.freeze({
    get name () { return pool.name },
    get targets () { return pool.targets },
    target: (url: string) => pool.target(url),
    select: (request: SelectRequest) => pool.select(request),
    addTarget: (target: TargetOptions) => pool.addTarget(target),
    removeTarget: async (url: string, options?: RemoveTargetOptions) => await pool.removeTarget(url, options),
    setWeight: (url: string, weight: number) => pool.setWeight(url, weight),
    setState: (url: string, state: 'disabled' | 'enabled') => pool.setState(url, state),
    status: () => pool.status()
  })
  internals.set(api, pool)
  return api
}
