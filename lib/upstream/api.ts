import type { SelectRequest } from '../balancers/types'
import type { PoolStatus, RegistryStatus, RemoveTargetOptions, TargetView } from '../contracts'
import type { PoolOptions, TargetOptions } from '../options/types'
import type { TrafficSplit } from '../traffic/splits'

/**
 * The public face of pools and the registry: exactly what the README documents. The
 * plugin's own classes stay behind these (`Pool`, `PoolRegistry`); what users get are
 * frozen objects whose members reach those classes by closure, so nothing else of them
 * can be read or changed from outside, in TypeScript or in JavaScript.
 */

/** A pool of targets: `app.upstreams.get(name)`. */
export interface UpstreamPool {
  /** the pool name */
  readonly name: string
  /** read-only live views of every target, in the order they were added */
  readonly targets: readonly TargetView[]
  /** the view of the target with this URL, if any */
  target (url: string): TargetView | undefined
  /** the target the balancer picks for a request-like object, or undefined */
  select (request: SelectRequest): TargetView | undefined
  /** adds a target and returns its view */
  addTarget (target: TargetOptions): TargetView
  /** takes a target out of rotation at once and removes it (with `drain`, after its requests end) */
  removeTarget (url: string, options?: RemoveTargetOptions): Promise<void>
  /** changes a target's weight (integer 1-1000) */
  setWeight (url: string, weight: number): void
  /** takes a target out of rotation, or puts it back */
  setState (url: string, state: 'disabled' | 'enabled'): void
  /** the pool's part of `upstreams.status()` */
  status (): PoolStatus
}

/** `app.upstreams`: the named pools. */
export interface UpstreamRegistry extends Iterable<UpstreamPool> {
  /** how many pools there are */
  readonly size: number
  get (name: string): UpstreamPool | undefined
  has (name: string): boolean
  /** adds a pool, validated as at register; works after `ready` too */
  add (name: string, options: PoolOptions): UpstreamPool
  /** removes a pool; its in-flight requests finish */
  remove (name: string): Promise<void>
  /** a JSON-serialisable snapshot of every pool and target */
  status (): RegistryStatus
  /** the pool names */
  keys (): IterableIterator<string>
  /** the split of that name (from `splits`, or a mount's own), to read and change its weights */
  split (name: string): TrafficSplit | undefined
}
