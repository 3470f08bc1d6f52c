import { performance } from 'node:perf_hooks'
import { AliasTable } from './alias-table'
import type { BalancerTypeOptions } from './schema'
import { LATENCY_MEMORY, type Balancer, type BalancerTarget } from './types'
/** Added to both latencies before comparing them (ms), so that sub-millisecond noise
 * between fast targets never makes one of them "slow". */
const LATENCY_FLOOR = 1

/** `choices`: distinct targets drawn per pick (2 to 8); `slowRatio`: how many times slower than the other a target must be to be charged for its latency (0: never). */
export type LeastRequestOptions = Omit<BalancerTypeOptions<'least-request'>, 'type'>

/**
 * Weighted power of two choices on in-flight requests (Envoy LEAST_REQUEST): draw
 * `choices` distinct targets, each by weight, and keep the one with the fewest in-flight
 * requests per unit of weight. Choosing among a few random targets, not all, keeps a
 * burst from piling onto the single least-loaded target.
 *
 * In-flight counts alone do not avoid a slow target: it holds as many requests as a fast
 * one, only longer, and under steady load gets a share of traffic in proportion (around
 * 1% for a 100 ms target beside 1 ms ones: the whole p99). So when one of the two is more
 * than `slowRatio` times slower than the other (mean latency, measured in the last 10 s), they are compared
 * on expected work instead: `(in-flight + 1) × latency / weight`. Targets of comparable
 * speed are still compared on in-flight alone, and an idle slow target is retried once
 * its latency is 10 s old.
 */
export class LeastRequestBalancer implements Balancer {
  private targets: readonly BalancerTarget[] = []
  private readonly table = new AliasTable()
  private readonly choices: number
  private readonly slowRatio: number

  constructor (options: LeastRequestOptions = {}) {
    this.choices = options.choices ?? 2
    this.slowRatio = options.slowRatio ?? 2
  }

  update (targets: readonly BalancerTarget[]): void {
    this.targets = targets
    this.table.build(targets)
  }

  pick (): BalancerTarget | undefined {
    const targets = this.targets
    const n = targets.length
    if (n <= 1) return n === 1 ? targets[0] : undefined
    const draws = this.choices < n ? this.choices : n
    let best = this.table.sample()
    for (let d = 1; d < draws; d++) {
      // each draw differs from the current best: redraw once, then take the neighbour
      let next = this.table.sample()
      if (next === best) next = this.table.sample()
      if (next === best) next = best + 1 === n ? 0 : best + 1
      if (this.prefers(targets[next], targets[best])) best = next
    }
    return targets[best]
  }

  /** Whether `a` should take the request rather than `b`, drawn before it (overridden by
   * the EWMA balancer). */
  protected prefers (a: BalancerTarget, b: BalancerTarget): boolean {
    if (this.slowRatio > 0 && a.meanLatency > 0 && b.meanLatency > 0) {
      const la = a.meanLatency + LATENCY_FLOOR
      const lb = b.meanLatency + LATENCY_FLOOR
      const slower = la > this.slowRatio * lb ? a : lb > this.slowRatio * la ? b : undefined
      // the slower one's figure must be recent: once it is old, the target gets a request
      // on in-flight counts and is measured again
      if (slower !== undefined && slower.latencyUpdatedAt > performance.now() - LATENCY_MEMORY) {
        return ((a.inflight + 1) * la) / a.weight < ((b.inflight + 1) * lb) / b.weight
      }
    }
    // No `+ 1` here: idle targets tie at 0 and the weighted first draw decides, so light
    // traffic follows the weights. With `(inflight + 1) / weight`, a weight-3 target would
    // beat an idle weight-1 one every time (1/3 < 1) and take all of the traffic whenever
    // requests do not overlap.
    const sa = a.inflight / a.weight
    const sb = b.inflight / b.weight
    // a tie between busy targets goes to the faster one: both have as many requests
    // waiting, and the slower one holds them longer
    return sa < sb || (sa === sb && sa > 0 && a.meanLatency < b.meanLatency)
  }
}
