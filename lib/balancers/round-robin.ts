import type { Balancer, BalancerTarget } from './types'

/**
 * Smooth weighted round robin as an earliest-deadline-first schedule (as Envoy does):
 * each target is due again `1 / weight` after it was picked, and the earliest due wins,
 * ties to the lower index. Equal weights give plain rotation; unequal weights interleave
 * in exact proportion over every `sum(weights)` picks. O(log n) a pick, no allocation.
 *
 * The schedule survives `update()`: the pool calls it on every state change and, during
 * slow start, on every ramp step, and restarting the schedule each time would send the
 * first picks after every update to the same target.
 */
export class RoundRobinBalancer implements Balancer {
  private targets: readonly BalancerTarget[] = []
  private deadline = new Float64Array(0)
  private step = new Float64Array(0)
  private heap = new Int32Array(0)
  /** the schedule's clock: the deadline of the last pick */
  private now = 0

  update (targets: readonly BalancerTarget[]): void {
    const n = targets.length
    // what is left until each kept target is due (never negative: the last pick was the earliest)
    const left = new Map<BalancerTarget, number>()
    for (let i = 0; i < this.targets.length; i++) left.set(this.targets[i], this.deadline[i] - this.now)
    this.targets = targets
    this.now = 0
    this.deadline = new Float64Array(n)
    this.step = new Float64Array(n)
    this.heap = new Int32Array(n)
    for (let i = 0; i < n; i++) {
      this.step[i] = 1 / targets[i].weight
      const kept = left.get(targets[i])
      // a kept target stays where it was in the schedule, or sooner if its weight grew; a new
      // one starts half a step in, so that heavy targets are not all picked first in a burst
      this.deadline[i] = kept === undefined ? this.step[i] / 2 : Math.min(kept, this.step[i])
      this.heap[i] = i
    }
    for (let i = (n >> 1) - 1; i >= 0; i--) this.siftDown(i)
  }

  pick (): BalancerTarget | undefined {
    const n = this.heap.length
    if (n === 0) return undefined
    const i = this.heap[0]
    this.now = this.deadline[i]
    this.deadline[i] += this.step[i]
    if (n > 1) this.siftDown(0)
    return this.targets[i]
  }

  private before (a: number, b: number): boolean {
    const da = this.deadline[a]
    const db = this.deadline[b]
    return da < db || (da === db && a < b)
  }

  private siftDown (start: number): void {
    const heap = this.heap
    const n = heap.length
    let pos = start
    const item = heap[pos]
    for (;;) {
      let child = 2 * pos + 1
      if (child >= n) break
      if (child + 1 < n && this.before(heap[child + 1], heap[child])) child++
      if (!this.before(heap[child], item)) break
      heap[pos] = heap[child]
      pos = child
    }
    heap[pos] = item
  }
}
