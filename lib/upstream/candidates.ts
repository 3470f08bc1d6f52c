import type { Balancer, SelectRequest } from '../balancers/types'
import type { Target } from './target'

/** What the choice of candidates reads of a target. */
export interface CandidateTarget {
  readonly backup: boolean
  readonly draining: boolean
  readonly disabled: boolean
  readonly available: boolean
}

export interface CandidateChoice<T> {
  /** the targets the balancer may pick from */
  candidates: T[]
  /** fewer than `panicThreshold` percent of the primaries are available */
  panic: boolean
}

/**
 * Which targets take requests: the available primaries, or else the available backups.
 * In panic (fewer than `panicThreshold` percent of the primaries in service are
 * available, and no backup could stand in), every primary the operator has not taken
 * out, healthy or not, as Envoy does: better some errors than a pool refusing all.
 */
export function chooseCandidates<T extends CandidateTarget> (targets: readonly T[], panicThreshold: number): CandidateChoice<T> {
  const primaries: T[] = []
  const backups: T[] = []
  let inService = 0
  for (const target of targets) {
    if (!target.backup && !target.draining && !target.disabled) inService++
    if (!target.available) continue
    if (target.backup) backups.push(target)
    else primaries.push(target)
  }
  const panic = panicThreshold > 0 && inService > 0 && (primaries.length * 100) / inService < panicThreshold &&
    (primaries.length > 0 || backups.length === 0)
  if (panic) return { candidates: targets.filter((t) => !t.backup && !t.draining && !t.disabled), panic }
  return { candidates: primaries.length > 0 ? primaries : backups, panic }
}

/** A pool's connection limit: `maxConnections` (none when undefined) plus `maxPending` queued. */
export interface ConnectionLimit {
  readonly maxConnections: number | undefined
  readonly maxPending: number
}

/**
 * Selection over a pool's candidates: the balancer's pick, passed over for a target at its
 * connection limit or one the request already tried, when another candidate can take it.
 */
export class Candidates {
  private readonly balancer: Balancer
  private readonly limit: ConnectionLimit
  private readonly panicThreshold: number
  private list: readonly Target[] = []
  panic = false

  constructor (balancer: Balancer, limit: ConnectionLimit, panicThreshold: number) {
    this.balancer = balancer
    this.limit = limit
    this.panicThreshold = panicThreshold
  }

  /** Chooses the candidates among `targets` again and feeds them to the balancer. */
  update (targets: readonly Target[]): void {
    const choice = chooseCandidates(targets, this.panicThreshold)
    this.list = choice.candidates
    this.panic = choice.panic
    this.balancer.update(this.list)
  }

  /** Hot path: one balancer pick when it can be used; no allocation. */
  pick (request: SelectRequest, exclude?: readonly Target[]): Target | undefined {
    const first = this.balancer.pick(request) as Target | undefined
    if (first === undefined || (exclude === undefined && !this.isFull(first))) return first
    if (this.usable(first, exclude)) return first
    // the balancer's choice cannot be used: ask again a few times, then look through all
    const candidates = this.list
    for (let i = 0; i < 2 && i < candidates.length; i++) {
      const next = this.balancer.pick(request) as Target | undefined
      if (next !== undefined && this.usable(next, exclude)) return next
    }
    for (const candidate of candidates) if (this.usable(candidate, exclude)) return candidate
    return undefined
  }

  /** true when some candidate is at its connection limit */
  get saturated (): boolean {
    if (this.limit.maxConnections === undefined) return false
    for (const candidate of this.list) if (this.isFull(candidate)) return true
    return false
  }

  /**
   * true when the target is at its connection limit: every one of its `maxConnections`
   * connections carries all the requests it can, and `maxPending` more wait. Over
   * HTTP/1.1 a connection carries one request; over HTTP/2 one per stream, up to
   * `http2Settings.maxConcurrentStreams` (the target's `perConnection`), so an HTTP/2
   * target is full at maxConnections × maxConcurrentStreams + maxPending requests in
   * flight. Each request in flight is one stream, and counts once in `inflight`.
   */
  isFull (target: Target): boolean {
    const max = this.limit.maxConnections
    return max !== undefined && target.inflight >= max * target.perConnection + this.limit.maxPending
  }

  /** true when `target` is not at its connection limit nor among those `exclude` lists */
  usable (target: Target, exclude: readonly Target[] | undefined): boolean {
    return !this.isFull(target) && (exclude === undefined || !exclude.includes(target))
  }
}
