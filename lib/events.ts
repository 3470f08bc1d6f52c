import diagnostics from 'node:diagnostics_channel'
import type { TargetState, TargetView } from './target'

/** Published after a target is selected for a request. */
export interface SelectEvent {
  pool: string
  target: TargetView
  request: unknown
}

/** Published when proxying a request to a target fails. */
export interface ProxyErrorEvent {
  pool: string
  target: TargetView
  request: unknown
  /** the error sent to the client (with its stable `code` and `statusCode`) */
  error: Error & { code: string, statusCode: number }
}

/**
 * Published on every change of a target: its state (`kind: 'state'`), and also when it is
 * added, removed or re-weighted (then `from` and `to` are its state, unchanged).
 */
export interface TargetStateEvent {
  kind: 'state' | 'added' | 'removed' | 'weight'
  pool: string
  target: TargetView
  from: TargetState
  to: TargetState
  /** why, in words: 'active check failed 3 times', 'ejected for 30000 ms', 'disabled by the operator' */
  reason: string
}

/** Published before a failed attempt is tried again. */
export interface RetryEvent {
  pool: string
  request: unknown
  /** the attempt about to start (1 for the first retry) */
  attempt: number
  /** the target that failed */
  from: TargetView
  /** the target of the next attempt */
  to: TargetView
  /** why the previous attempt failed: an error code or `status 503` */
  reason: string
}

/** Diagnostics channels; names are part of the public contract. */
export const channels = {
  select: diagnostics.channel('fastify-upstream:select'),
  proxyError: diagnostics.channel('fastify-upstream:proxy-error'),
  targetState: diagnostics.channel('fastify-upstream:target-state'),
  retry: diagnostics.channel('fastify-upstream:retry')
}

/** The minimal logger the pools use (a pino or Fastify logger fits). */
export interface Logger {
  info: (object: object, message: string) => void
  warn: (object: object, message: string) => void
}
