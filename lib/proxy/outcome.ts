/**
 * What the upstream did for a request, as `request.upstream` reports it: NGINX's
 * `$upstream_addr`, `$upstream_status` and `$upstream_header_time`, one entry per attempt.
 * Built when read, from the state the forwarder keeps for its own use (see Forwarder).
 */

/** One attempt of a proxied request. */
export interface UpstreamAttempt {
  /** the target's URL */
  readonly target: string
  /** the status the target answered with (its final one, not a 1xx); undefined if it gave none */
  readonly status: number | undefined
  /** the plugin's error code when the attempt failed (`FST_UPSTREAM_CONNECT_FAILED`, ...) */
  readonly error: string | undefined
  /** ms from sending to the response headers, or to the failure; undefined while under way */
  readonly time: number | undefined
}

/** What the upstream did for one request. */
export interface UpstreamOutcome {
  /** the pool the request was routed to */
  readonly pool: string
  /** the target of the last attempt; undefined when no target could take the request */
  readonly target: string | undefined
  /** the status the last attempt's target answered with; undefined when it gave none */
  readonly status: number | undefined
  /** every attempt, in order: more than one after retries, none when no target could take the request */
  readonly attempts: readonly UpstreamAttempt[]
}

/** An attempt from the state the forwarder keeps: 0 and '' stand for none. */
export function attemptOf (target: string, status: number, error: string, time: number): UpstreamAttempt {
  return {
    target,
    status: status === 0 ? undefined : status,
    error: error === '' ? undefined : error,
    time: status === 0 && error === '' ? undefined : time
  }
}

export function outcomeOf (pool: string, earlier: readonly UpstreamAttempt[] | null, last: UpstreamAttempt | undefined): UpstreamOutcome {
  const attempts = earlier === null ? [] : [...earlier]
  if (last !== undefined) attempts.push(last)
  return { pool, target: last?.target, status: last?.status, attempts }
}

/** Why an attempt was tried again, as RetryEvent says it: its error code, or `status 503`. */
export function retryReason (failed: UpstreamAttempt): string {
  return failed.error ?? `status ${String(failed.status)}`
}

// Attributes of an attempt's tracing span. The resend count is OpenTelemetry's (HTTP
// semantic conventions: set on retries only); the others are the plugin's own.
const POOL = 'fastify_upstream.pool'
const RESEND_COUNT = 'http.request.resend_count'
const RETRY_REASON = 'fastify_upstream.retry_reason'

/** The span attributes of an attempt: its pool and, on a retry, its number and why. */
export function attemptAttributes (pool: string, earlier: readonly UpstreamAttempt[] | null): Record<string, string | number> {
  if (earlier === null || earlier.length === 0) return { [POOL]: pool }
  return { [POOL]: pool, [RESEND_COUNT]: earlier.length, [RETRY_REASON]: retryReason(earlier[earlier.length - 1]) }
}
