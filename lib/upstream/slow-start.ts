import { performance } from 'node:perf_hooks'
import type { Target } from './target'

/**
 * Slow start: a target that joins a running pool, or comes back to it, has its weight
 * ramped from `minWeight` of its configured weight up to all of it over `window` ms, so
 * that a cold cache or JIT is not hit with a full share at once. The weights are
 * recomputed on a timer (twenty steps per window) while any target ramps, and the pool
 * re-feeds its balancer after each step.
 */
export class SlowStart {
  private readonly window: number
  private readonly minWeight: number
  private readonly onStep: () => void
  private readonly ramping = new Set<Target>()
  private timer: NodeJS.Timeout | undefined

  constructor (window: number, minWeight: number, onStep: () => void) {
    this.window = window
    this.minWeight = minWeight
    this.onStep = onStep
  }

  begin (target: Target): void {
    if (this.window === 0) return
    target.slowStartAt = performance.now()
    this.ramping.add(target)
    this.apply(target, target.slowStartAt)
    if (this.timer === undefined) {
      this.timer = setInterval(() => this.step(), Math.max(10, Math.floor(this.window / 20)))
      this.timer.unref()
    }
  }

  /** Sets the target's balancing weight for `now`. */
  apply (target: Target, now: number): void {
    if (target.slowStartAt === 0) {
      target.weight = target.configuredWeight
      return
    }
    const progress = (now - target.slowStartAt) / this.window
    if (progress >= 1) {
      target.slowStartAt = 0
      target.weight = target.configuredWeight
      this.ramping.delete(target)
    } else {
      target.weight = target.configuredWeight * Math.max(this.minWeight, progress)
    }
  }

  forget (target: Target): void {
    this.ramping.delete(target)
    target.slowStartAt = 0
  }

  close (): void {
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
    this.ramping.clear()
  }

  private step (): void {
    const now = performance.now()
    for (const target of this.ramping) this.apply(target, now)
    if (this.ramping.size === 0) this.close()
    this.onStep()
  }
}
