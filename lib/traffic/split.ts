import { InvalidOptionError } from '../errors'
import { keyHasher } from '../balancers/consistent-hash'
import { hashString } from '../balancers/hash'
import type { SplitStatus } from '../contracts'
import { DEFAULTS } from '../options/config'
import { check } from '../options/validate'
import { compileMatches, type Matcher, type MatchRequest } from './match'
import { SplitSchema, type SplitBranchOptions, type SplitOptions } from './schema'

/**
 * A split of traffic between pools, as a policy: it decides which branch a request goes
 * down (rules first, in order; then the weights), and where it falls back when that
 * branch's pool has no target. The forwarder acts on the decision; the split sends nothing.
 *
 * With a client `key`, the weights map the key's hash onto the branches in order, as
 * NGINX's split_clients does: a client keeps its branch while the weights stay, and
 * moving weight between two branches moves only the clients in the slice that changed
 * hands. Without a key (or for a request without one), a smooth weighted round robin
 * gives each branch its exact share.
 */

/** One branch of a split. */
export interface Branch {
  /** its place in the split's `branches` */
  readonly index: number
  readonly pool: string
  /** chosen by its rules rather than its weight */
  readonly match: Matcher | undefined
  weight: number
  /** replaces the mount's `rewritePrefix` (prepended to the path for `reply.forward`) */
  readonly rewritePrefix: string | undefined
  /** request headers set (after the pool's policy), lower-case names */
  readonly setHeaders: ReadonlyArray<readonly [string, string]>
  readonly removeHeaders: readonly string[]
  /** requests sent down this branch */
  requests: number
  /** of those, requests whose own branch had no available target */
  fallbacks: number
  /** smooth weighted round robin's running credit */
  credit: number
}

// hashes the client key once more, with the split's name: two splits on one key, or a
// split and a consistent-hash pool on one key, do not cut clients along the same lines
const TWO_32 = 4_294_967_296

/** `weights` checked for a split: integers 0-1000 by pool name, naming the field that is wrong. */
function checkWeight (weight: unknown, path: string): number {
  if (typeof weight !== 'number' || !Number.isInteger(weight) || weight < 0 || weight > 1000) {
    throw new InvalidOptionError(`${path}: must be an integer from 0 to 1000`)
  }
  return weight
}

export class Split {
  readonly name: string
  readonly branches: readonly Branch[]
  /** branches with rules, in order */
  private readonly matched: readonly Branch[]
  /** branches without rules, in order: the weights share the rest between them */
  private readonly weighted: readonly Branch[]
  readonly fallback: boolean
  private readonly hasher: ((request: MatchRequest) => number) | undefined
  private readonly salt: number
  private total = 0

  /** Builds the split from its options; an invalid one throws naming the field under `path`. */
  constructor (name: string, options: SplitOptions, path: string) {
    check(SplitSchema, options, path)
    this.name = name
    this.branches = options.branches.map((branch, i) => this.branch(branch, i, `${path}.branches[${i}]`))
    this.matched = this.branches.filter((branch) => branch.match !== undefined)
    this.weighted = this.branches.filter((branch) => branch.match === undefined)
    if (this.weighted.length === 0) {
      throw new InvalidOptionError(`${path}.branches: needs a branch without match, for the requests no rule matches`)
    }
    const seen = new Set<string>()
    for (const branch of this.weighted) {
      if (seen.has(branch.pool)) throw new InvalidOptionError(`${path}.branches[${branch.index}].pool: "${branch.pool}" has a weighted branch already`)
      seen.add(branch.pool)
    }
    this.fallback = options.fallback ?? DEFAULTS.split.fallback
    this.hasher = options.key === undefined ? undefined : keyHasher(options.key)
    this.salt = hashString(name)
    this.reweigh(path)
  }

  private branch (options: SplitBranchOptions, index: number, path: string): Branch {
    if (options.match !== undefined && options.weight !== undefined) {
      throw new InvalidOptionError(`${path}.weight: a branch with match is chosen by its rules; weights share the requests no rule matches`)
    }
    const set = Object.entries(options.headers?.set ?? {}).map(([name, value]) => [name.toLowerCase(), value] as const)
    return {
      index,
      pool: options.pool,
      match: options.match === undefined ? undefined : compileMatches(options.match, `${path}.match`),
      weight: options.weight ?? DEFAULTS.split.weight,
      rewritePrefix: options.rewritePrefix?.replace(/\/+$/, ''),
      setHeaders: set,
      removeHeaders: (options.headers?.remove ?? []).map((name) => name.toLowerCase()),
      requests: 0,
      fallbacks: 0,
      credit: 0
    }
  }

  private reweigh (path: string): void {
    let total = 0
    for (const branch of this.weighted) {
      total += branch.weight
      branch.credit = 0
    }
    if (total === 0) throw new InvalidOptionError(`${path}: the weights of the branches without match add up to 0`)
    this.total = total
  }

  /** The branch for `request`: the first whose rules hold, else one by weight. */
  choose (request: MatchRequest): Branch {
    for (const branch of this.matched) if ((branch.match as Matcher)(request)) return branch
    const hash = this.hasher === undefined ? -1 : this.hasher(request)
    return hash === -1 ? this.next() : this.byHash(hash)
  }

  /** split_clients: the key's point on [0, total) falls in one branch's slice, in order. */
  private byHash (hash: number): Branch {
    const point = (Math.imul(hash ^ this.salt, 0x9e3779b1) >>> 0) / TWO_32 * this.total
    let end = 0
    let last = this.weighted[0]
    for (const branch of this.weighted) {
      if (branch.weight === 0) continue
      end += branch.weight
      last = branch
      if (point < end) return branch
    }
    return last
  }

  /** Smooth weighted round robin (as NGINX's): exact shares, spread out. */
  private next (): Branch {
    let best: Branch | undefined
    for (const branch of this.weighted) {
      branch.credit += branch.weight
      if (best === undefined || branch.credit > best.credit) best = branch
    }
    const chosen = best as Branch
    chosen.credit -= this.total
    return chosen
  }

  /**
   * Where a request goes when the pools of the `tried` branches had no available target:
   * the weighted branch of another pool with the largest weight; undefined when there is
   * none left, or when the split does not fall back.
   */
  fallbackFor (tried: readonly Branch[]): Branch | undefined {
    if (!this.fallback) return undefined
    let best: Branch | undefined
    for (const branch of this.weighted) {
      if (tried.some((other) => other.pool === branch.pool)) continue
      if (best === undefined || branch.weight > best.weight) best = branch
    }
    return best
  }

  /** The weights of the branches without match, by pool. */
  weights (): Record<string, number> {
    const weights: Record<string, number> = {}
    for (const branch of this.weighted) weights[branch.pool] = branch.weight
    return weights
  }

  /**
   * Changes the weights of the branches named (by pool); the others keep theirs. All or
   * nothing: an unknown pool, a bad weight or weights adding up to 0 change nothing.
   */
  setWeights (weights: Record<string, number>): void {
    if (weights === null || typeof weights !== 'object') throw new InvalidOptionError(`splits.${this.name}: weights must be an object of pool names to weights`)
    const next = new Map<Branch, number>()
    for (const [pool, weight] of Object.entries(weights)) {
      const branch = this.weighted.find((b) => b.pool === pool)
      if (branch === undefined) throw new InvalidOptionError(`splits.${this.name}.${pool}: no branch without match sends to pool "${pool}"`)
      next.set(branch, checkWeight(weight, `splits.${this.name}.${pool}`))
    }
    let total = 0
    for (const branch of this.weighted) total += next.get(branch) ?? branch.weight
    if (total === 0) throw new InvalidOptionError(`splits.${this.name}: the weights would add up to 0`)
    for (const [branch, weight] of next) branch.weight = weight
    this.reweigh(`splits.${this.name}`)
  }

  status (): SplitStatus {
    return {
      name: this.name,
      sticky: this.hasher !== undefined,
      fallback: this.fallback,
      branches: this.branches.map((branch) => ({
        pool: branch.pool,
        match: branch.match !== undefined,
        weight: branch.match === undefined ? branch.weight : 0,
        share: branch.match === undefined ? Math.round(branch.weight / this.total * 10_000) / 100 : 0,
        requests: branch.requests,
        fallbacks: branch.fallbacks
      }))
    }
  }
}
