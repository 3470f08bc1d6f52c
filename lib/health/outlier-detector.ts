import type { HealthHost } from './host'
import type { PassiveCheckConfig } from '../options/config'
import type { Target } from '../upstream/target'

/** Counts a failed exchange against `target`, and reports it to passive checks when they are on. */
export function countFailure (target: Target, detector: OutlierDetector | undefined, now: number): void {
  target.failures++
  detector?.failure(target, now)
}

/**
 * Passive health checks (Envoy's outlier detection, NGINX `max_fails`): counts each
 * target's consecutive failed requests and ejects it after `consecutiveFailures` for
 * `ejectionTime`, doubled on each repeat up to `maxEjectionTime`. It never ejects more
 * than `maxEjectionPercent` of the pool, except that one target may always be ejected.
 * An ejected target comes back when its time is over, or when an active check passes.
 */
export class OutlierDetector {
  private readonly config: PassiveCheckConfig
  private readonly host: HealthHost
  private readonly timers = new Map<Target, NodeJS.Timeout>()

  constructor (config: PassiveCheckConfig, host: HealthHost) {
    this.config = config
    this.host = host
  }

  /** true when this response status counts as a failure */
  isFailureStatus (status: number): boolean {
    return this.config.statusCodes[status] === 1
  }

  success (target: Target): void {
    target.consecutiveFailures = 0
  }

  failure (target: Target, now: number): void {
    target.consecutiveFailures++
    if (target.consecutiveFailures < this.config.consecutiveFailures || target.ejected) return
    if (!mayEject(this.host.targetList, this.config.maxEjectionPercent)) return
    // a target that stayed in for a long spell starts again from the base ejection time
    if (now - target.ejectedUntil > this.config.maxEjectionTime) target.ejectionStreak = 0
    const duration = ejectionTime(this.config, target.ejectionStreak)
    const failures = target.consecutiveFailures
    this.host.transition(target, (t) => {
      t.ejected = true
      t.ejectedUntil = now + duration
      t.ejections++
      t.ejectionStreak++
      t.consecutiveFailures = 0
    }, `ejected for ${duration} ms after ${failures} consecutive failures`)
    const timer = setTimeout(() => this.release(target, 'ejection time over'), duration)
    timer.unref()
    this.timers.set(target, timer)
  }

  /** Ends an ejection early (an active check passed) or on time. */
  release (target: Target, reason: string): void {
    const timer = this.timers.get(target)
    if (timer !== undefined) clearTimeout(timer)
    this.timers.delete(target)
    if (!target.ejected) return
    // failures of requests still in flight at ejection do not count against its return
    this.host.transition(target, (t) => {
      t.ejected = false
      t.consecutiveFailures = 0
    }, reason)
  }

  /** The target left the pool. */
  forget (target: Target): void {
    const timer = this.timers.get(target)
    if (timer !== undefined) clearTimeout(timer)
    this.timers.delete(target)
  }

  close (): void {
    for (const timer of this.timers.values()) clearTimeout(timer)
    this.timers.clear()
  }
}

/**
 * Whether one more target of `targets` may be ejected: never more than `maxPercent` of
 * them, except that one may always be (a pool of two with the default 10% could else
 * eject none).
 */
export function mayEject (targets: ReadonlyArray<{ readonly ejected: boolean }>, maxPercent: number): boolean {
  let ejected = 0
  for (const target of targets) if (target.ejected) ejected++
  return ejected === 0 || ((ejected + 1) * 100) / targets.length <= maxPercent
}

/** How long an ejection lasts: `ejectionTime` doubled for each ejection in a row before it, up to `maxEjectionTime`. */
export function ejectionTime (config: Pick<PassiveCheckConfig, 'ejectionTime' | 'maxEjectionTime'>, streak: number): number {
  return Math.min(config.ejectionTime * 2 ** streak, config.maxEjectionTime)
}
