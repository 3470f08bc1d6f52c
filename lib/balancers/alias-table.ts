import type { BalancerTarget } from './types'

/**
 * Vose's alias method: after an O(n) build, a weighted random index costs O(1) and one
 * random number. Shared by the random and least-request balancers.
 */
export class AliasTable {
  private probability = new Float64Array(0)
  private alias = new Int32Array(0)
  size = 0

  build (targets: readonly BalancerTarget[]): void {
    const n = targets.length
    this.size = n
    this.probability = new Float64Array(n)
    this.alias = new Int32Array(n)
    if (n === 0) return
    let total = 0
    for (let i = 0; i < n; i++) total += targets[i].weight
    const scaled = new Float64Array(n)
    const small: number[] = []
    const large: number[] = []
    for (let i = 0; i < n; i++) {
      scaled[i] = (targets[i].weight * n) / total
      if (scaled[i] < 1) small.push(i)
      else large.push(i)
    }
    while (small.length > 0 && large.length > 0) {
      const s = small.pop() as number
      const l = large.pop() as number
      this.probability[s] = scaled[s]
      this.alias[s] = l
      scaled[l] = scaled[l] + scaled[s] - 1
      if (scaled[l] < 1) small.push(l)
      else large.push(l)
    }
    // what is left is 1 up to rounding error
    for (const i of large) this.probability[i] = 1
    for (const i of small) this.probability[i] = 1
  }

  /** A weighted random index; the table must not be empty. */
  sample (): number {
    const x = Math.random() * this.size
    const i = x | 0
    return x - i < this.probability[i] ? i : this.alias[i]
  }
}
