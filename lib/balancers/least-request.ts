import { AliasTable } from './alias-table'
import type { Balancer, BalancerTarget } from './types'

/**
 * Weighted power of two choices on in-flight requests (Envoy LEAST_REQUEST): draw
 * `choices` distinct targets, each by weight, and keep the one with the fewest in-flight
 * requests per unit of weight. Choosing among a few random targets, not all, keeps a
 * burst from piling onto the single least-loaded target.
 */
export class LeastRequestBalancer implements Balancer {
  private targets: readonly BalancerTarget[] = []
  private readonly table = new AliasTable()
  private readonly choices: number

  constructor (options: { choices?: number } = {}) {
    this.choices = options.choices ?? 2
  }

  update (targets: readonly BalancerTarget[]): void {
    this.targets = targets
    this.table.build(targets)
  }

  /**
   * The load score; lower is better (overridden by the EWMA balancer). In-flight requests
   * per unit of weight, with no `+ 1`: idle targets tie at 0 and the weighted first draw
   * decides, so light traffic follows the weights. With `(inflight + 1) / weight`, a
   * weight-3 target would beat an idle weight-1 one every time (1/3 < 1) and take all of
   * the traffic whenever requests do not overlap.
   */
  protected score (target: BalancerTarget, _now: number): number {
    return target.inflight / target.weight
  }

  protected now (): number {
    return 0
  }

  pick (): BalancerTarget | undefined {
    const targets = this.targets
    const n = targets.length
    if (n <= 1) return n === 1 ? targets[0] : undefined
    const now = this.now()
    const draws = this.choices < n ? this.choices : n
    let best = this.table.sample()
    let bestScore = this.score(targets[best], now)
    for (let d = 1; d < draws; d++) {
      // each draw differs from the current best: redraw once, then take the neighbour
      let next = this.table.sample()
      if (next === best) next = this.table.sample()
      if (next === best) next = best + 1 === n ? 0 : best + 1
      const score = this.score(targets[next], now)
      // a tie between busy targets goes to the faster one: in a tie with a slow target,
      // both have as many requests waiting, and the slow one holds them far longer
      if (score < bestScore || (score === bestScore && score > 0 && targets[next].latency < targets[best].latency)) {
        best = next
        bestScore = score
      }
    }
    return targets[best]
  }
}
