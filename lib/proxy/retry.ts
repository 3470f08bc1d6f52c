import type { RetryConfig } from '../options/config'

/**
 * The retry policy, as plain decisions: whether a failed attempt may be tried again, and
 * after how long. Retries go to another target (the forwarder picks it); here is only
 * what makes a retry safe and affordable.
 */

export interface RetryBudget {
  /** requests in flight in the pool */
  readonly inflight: number
  /** retries among them */
  readonly retriesInFlight: number
}

export interface AttemptFacts {
  /** retries already made for this request */
  retries: number
  method: string
  /** the request carries the pool's Idempotency-Key header: the target applies it once */
  keyed: boolean
  /** the failure happened before anything was sent (connection refused, DNS, TLS, connect timeout) */
  neverSent: boolean
  /** the request body can be sent again: none, a parsed body, or a stream not yet read */
  bodyReplayable: boolean
}

/**
 * A retry is allowed when attempts remain, the budget has room (Envoy: at most `percent`
 * of the requests in flight are retries, but always `minRetries`), the body can be sent
 * again, and either nothing reached the target, or the method is one configured as safe
 * to repeat, or the request carries an Idempotency-Key (IETF httpapi draft: the target
 * applies a keyed request once, however often it is sent).
 */
export function mayRetry (config: RetryConfig, budget: RetryBudget, facts: AttemptFacts): boolean {
  if (facts.retries >= config.attempts || !facts.bodyReplayable) return false
  if (!facts.neverSent && !facts.keyed && !config.methods.has(facts.method)) return false
  return budgetAllows(config, budget.inflight, budget.retriesInFlight)
}

/** The retry budget: room for one more retry (or hedge) in flight, with `inflight` requests in flight. */
export function budgetAllows (config: RetryConfig, inflight: number, retriesInFlight: number): boolean {
  return retriesInFlight < Math.max(config.budgetMinRetries, (inflight * config.budgetPercent) / 100)
}

/** true when `headers` carry the Idempotency-Key header `config` names */
export function hasIdempotencyKey (config: RetryConfig, headers: Record<string, unknown>): boolean {
  const name = config.idempotencyKey
  return name !== undefined && headers[name] !== undefined
}

/** Exponential backoff with full jitter: a random delay up to base × 2^(retry-1), capped at max. */
export function backoff (config: RetryConfig, retry: number): number {
  if (config.backoffBase === 0) return 0
  const cap = Math.min(config.backoffMax, config.backoffBase * 2 ** (retry - 1))
  return Math.floor(Math.random() * cap)
}
