import type { FastifyRequest } from 'fastify'
import type { TargetView } from './contracts'

// The events of a proxied request, as the plugin's hooks and diagnostics channels hand
// them out (a target's state changes are in contracts.ts: the pools publish those).

/** Published after a target is selected for an attempt of a request: the first and each retry. */
export interface SelectEvent {
  pool: string
  target: TargetView
  request: FastifyRequest
  /** the attempt the target was selected for: 0 for the first, 1 for the first retry */
  attempt: number
}

/** Published when proxying a request to a target fails. */
export interface ProxyErrorEvent {
  pool: string
  target: TargetView
  request: FastifyRequest
  /** the error sent to the client (with its stable `code` and `statusCode`) */
  error: Error & { code: string, statusCode: number }
}

/** Published before a failed attempt is tried again. */
export interface RetryEvent {
  pool: string
  request: FastifyRequest
  /** the attempt about to start (1 for the first retry) */
  attempt: number
  /** the target that failed */
  from: TargetView
  /** the target of the next attempt */
  to: TargetView
  /** why the previous attempt failed: an error code or `status 503` */
  reason: string
}
