import { performance } from 'node:perf_hooks'
import { LeastRequestBalancer } from './least-request'
import type { BalancerTypeOptions } from './schema'
import type { BalancerTarget } from './types'

/** the cost of an unmeasured target with requests in flight: above any measured one
 * (ms × requests), and small enough that adding the in-flight count stays exact */
const UNMEASURED_PENALTY = 1e12

/**
 * Peak-EWMA (Finagle, Linkerd, APISIX `ewma`): power of two choices on
 * `latency × (in-flight + 1) / weight`. The pool keeps each target's peak-EWMA latency;
 * here it decays with the time since its last sample, so that a target that was once
 * slow, and therefore no longer picked, looks cheaper again and gets re-measured.
 */
export class EwmaBalancer extends LeastRequestBalancer {
  private readonly decay: number
  private readonly initialLatency: number

  constructor (options: Omit<BalancerTypeOptions<'ewma'>, 'type'> = {}) {
    super({ choices: 2 })
    this.decay = options.decay ?? 10_000
    this.initialLatency = options.initialLatency ?? 1
  }

  protected override prefers (a: BalancerTarget, b: BalancerTarget): boolean {
    const now = performance.now()
    return this.score(a, now) < this.score(b, now)
  }

  private score (target: BalancerTarget, now: number): number {
    let latency = target.latency
    if (latency === 0) {
      // Unmeasured: cheap while idle, so that it gets probed, but dear once a request is
      // out (Finagle's penalty). Otherwise a new or slow target, still looking like
      // `initialLatency`, would take every pick until its first answer came back.
      if (target.inflight > 0) return UNMEASURED_PENALTY + target.inflight
      latency = this.initialLatency
    } else {
      const idle = now - target.latencyUpdatedAt
      if (idle > 0) latency *= Math.exp(-idle / this.decay)
    }
    // a small floor keeps in-flight counts meaningful between very fast targets
    return ((latency + 0.01) * (target.inflight + 1)) / target.weight
  }
}
