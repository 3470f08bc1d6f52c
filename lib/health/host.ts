import type { TargetView } from '../contracts'
import type { Target } from '../upstream/target'

/**
 * What the health parts (active prober, outlier detector) need of a pool: its targets and
 * one way to change a target's state, so that every change is refreshed, published and
 * logged in one place.
 */
export interface HealthHost {
  readonly name: string
  readonly targetList: readonly Target[]
  viewOf (target: Target): TargetView
  /** applies `change` to the target's flags and reports the state change it makes, if any */
  transition (target: Target, change: (target: Target) => void, reason: string): void
}
