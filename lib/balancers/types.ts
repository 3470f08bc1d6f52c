/**
 * How long a latency figure speaks for a target (ms): a target's mean latency starts
 * afresh after this long without an answer, and least-request stops charging a slow
 * target for a figure this old.
 */
export const LATENCY_MEMORY = 10_000

/**
 * The balancer contract. Balancers are plain TypeScript: they import nothing from Fastify
 * and see targets only through this narrow, read-only shape.
 *
 * The pool calls `update()` with the targets that may take requests now (state, backup
 * and weights already applied) whenever that set or a weight changes, and `pick()` once
 * per request. `pick()` runs on the hot path: it must not allocate.
 */
export interface BalancerTarget {
  /** the target's URL, stable for its lifetime: use it to hash */
  readonly url: string
  /** the weight to balance by (the configured weight, ramped during slow start) */
  readonly weight: number
  /** requests sent to this target that have not finished */
  readonly inflight: number
  /** peak-EWMA of the time to response headers, in milliseconds (0 until measured) */
  readonly latency: number
  /** mean of the recent times to response headers (EWMA by sample), ms (0 until measured) */
  readonly meanLatency: number
  /** when `latency` and `meanLatency` were last updated, in `performance.now()` milliseconds */
  readonly latencyUpdatedAt: number
}

/** The parts of a request a balancer may read; a Fastify request satisfies it. */
export interface SelectRequest {
  readonly ip?: string
  readonly url: string
  readonly headers: Record<string, string | string[] | undefined>
  readonly query?: unknown
}

export interface Balancer {
  /** Receives the current candidates. Called on every change; may build tables. */
  update (targets: readonly BalancerTarget[]): void
  /** Returns one of the candidates of the last update, or undefined when there is none. */
  pick (request: SelectRequest): BalancerTarget | undefined
}

/** A factory builds one balancer per pool (a custom balancer given as a function). */
export type BalancerFactory = () => Balancer
