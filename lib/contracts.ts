import { Type, type Static } from '@sinclair/typebox'

/**
 * The public shapes every part shares: target states and views, the status snapshot, the
 * state-change event and the logger. This module imports no other module of the plugin,
 * so that every part may import it without making a cycle.
 */

/**
 * The states of a target (the order of the status page and the metrics). When several
 * apply, the most restrictive wins: draining > disabled > ejected > unhealthy > healthy.
 */
export const TARGET_STATES = ['healthy', 'unhealthy', 'ejected', 'draining', 'disabled'] as const
export type TargetState = typeof TARGET_STATES[number]

/** The read-only face of a target that the public API hands out (live: each read is current). */
export interface TargetView {
  readonly url: string
  readonly weight: number
  readonly effectiveWeight: number
  readonly backup: boolean
  readonly state: TargetState
  readonly inflight: number
  readonly requests: number
  readonly failures: number
  /** requests retried away from this target */
  readonly retries: number
  /** times the target was ejected by passive checks */
  readonly ejections: number
  /** WebSocket connections open on the target (each also in `inflight`) */
  readonly websockets: number
  /** peak-EWMA latency to response headers, ms */
  readonly latency: number
}

/**
 * The status snapshot's schema: the JSON answer of `statusRoute` (validated against it) and
 * what `fastify.upstreams.status()` returns. The types below are derived from it.
 */
export const TargetStatusSchema = Type.Object({
  url: Type.String(),
  weight: Type.Number(),
  effectiveWeight: Type.Number(),
  backup: Type.Boolean(),
  state: Type.Union(TARGET_STATES.map((s) => Type.Literal(s))),
  inflight: Type.Integer(),
  requests: Type.Integer(),
  failures: Type.Integer(),
  retries: Type.Integer(),
  ejections: Type.Integer(),
  websockets: Type.Integer({ description: 'WebSocket connections open on the target (each also in inflight)' }),
  latency: Type.Number({ description: 'peak-EWMA latency to response headers, ms' })
}, { additionalProperties: false })

export const PoolStatusSchema = Type.Object({
  name: Type.String(),
  balancer: Type.String(),
  /** targets that may take requests */
  available: Type.Integer(),
  /** fewer than `panicThreshold` percent of the primaries are available: balancing over all */
  panic: Type.Boolean(),
  targets: Type.Array(TargetStatusSchema)
}, { additionalProperties: false })

export const SplitBranchStatusSchema = Type.Object({
  pool: Type.String(),
  /** chosen by its rules, not by weight */
  match: Type.Boolean({ description: 'chosen by its rules, not by weight' }),
  weight: Type.Integer({ description: 'its weight (0 for a branch with rules)' }),
  share: Type.Number({ description: 'percent of the requests no rule matches that the weights give it' }),
  requests: Type.Integer({ description: 'requests sent down this branch' }),
  fallbacks: Type.Integer({ description: 'of those, requests whose own branch had no available target' })
}, { additionalProperties: false })

export const SplitStatusSchema = Type.Object({
  name: Type.String(),
  /** clients keep their branch by a key */
  sticky: Type.Boolean(),
  /** a branch with no available target falls back to the others */
  fallback: Type.Boolean(),
  branches: Type.Array(SplitBranchStatusSchema)
}, { additionalProperties: false })

export const StatusSchema = Type.Object({
  pools: Type.Record(Type.String(), PoolStatusSchema),
  splits: Type.Record(Type.String(), SplitStatusSchema)
}, { additionalProperties: false })

export type TargetStatus = Static<typeof TargetStatusSchema>
export type PoolStatus = Static<typeof PoolStatusSchema>
export type SplitStatus = Static<typeof SplitStatusSchema>
export type RegistryStatus = Static<typeof StatusSchema>

export interface RemoveTargetOptions {
  /** stop new requests and wait for in-flight ones (up to the pool's `drainTimeout`) */
  drain?: boolean
}

/**
 * Published on every change of a target: its state (`kind: 'state'`), and also when it is
 * added, re-weighted or made a backup or a primary by its discovery source (then `from`
 * and `to` are its state, unchanged) and removed (then
 * `from` is its state before the removal began, and `to` is `'removed'`).
 */
export interface TargetStateEvent {
  kind: 'state' | 'added' | 'removed' | 'weight' | 'backup'
  pool: string
  target: TargetView
  from: TargetState
  to: TargetState | 'removed'
  /** why, in words: 'active check failed 3 times', 'ejected for 30000 ms', 'disabled by the operator' */
  reason: string
}

/** Published when a split's weights change at run time. */
export interface SplitChangeEvent {
  split: string
  /** the weights of its branches without rules, by pool */
  from: Record<string, number>
  to: Record<string, number>
}

/** The minimal logger the pools use (a pino or Fastify logger fits). */
export interface Logger {
  info: (object: object, message: string) => void
  warn: (object: object, message: string) => void
}
