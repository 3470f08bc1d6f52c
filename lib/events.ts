import * as diagnostics from 'node:diagnostics_channel'
import type { FastifyRequest } from 'fastify'
import type { TargetState, TargetView } from './upstream/target'

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

/**
 * Published on every change of a target: its state (`kind: 'state'`), and also when it is
 * added or re-weighted (then `from` and `to` are its state, unchanged) and removed (then
 * `from` is its state before the removal began, and `to` is `'removed'`).
 */
export interface TargetStateEvent {
  kind: 'state' | 'added' | 'removed' | 'weight'
  pool: string
  target: TargetView
  from: TargetState
  to: TargetState | 'removed'
  /** why, in words: 'active check failed 3 times', 'ejected for 30000 ms', 'disabled by the operator' */
  reason: string
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

/** Diagnostics channels; names are part of the public contract. */
export const channels = {
  select: diagnostics.channel('fastify-upstream:select'),
  proxyError: diagnostics.channel('fastify-upstream:proxy-error'),
  targetState: diagnostics.channel('fastify-upstream:target-state'),
  retry: diagnostics.channel('fastify-upstream:retry')
}

/**
 * undici publishes here each request it creates. A tracer that instruments undici
 * (OpenTelemetry's `@opentelemetry/instrumentation-undici`, or another hooked in the same
 * way) subscribes, to start the request's span and add its trace headers to the request.
 */
export const undiciRequests = diagnostics.channel('undici:request:create')

/** The parts of OpenTelemetry's API the plugin uses, typed here so that the API stays optional. */
export interface OtelContext {
  getValue: (key: symbol) => unknown
  setValue: (key: symbol, value: unknown) => OtelContext
  deleteValue: (key: symbol) => OtelContext
}
export interface OtelSpan {
  setAttributes: (attributes: Record<string, string | number>) => unknown
}
export interface OtelApi {
  context: {
    active: () => OtelContext
    with: <A extends unknown[], R>(context: OtelContext, fn: (...args: A) => R, thisArg?: unknown, ...args: A) => R
  }
  propagation: {
    fields: () => string[]
    extract: (context: OtelContext, carrier: unknown) => OtelContext
  }
  trace: { getSpan: (context: OtelContext) => OtelSpan | undefined }
  createContextKey: (description: string) => symbol
}

let api: OtelApi | null | undefined

/**
 * The application's `@opentelemetry/api` (an optional peer dependency), loaded on first
 * use, or null. Its calls reach whatever SDK the application registered, and do nothing
 * without one.
 */
export function otel (): OtelApi | null {
  if (api === undefined) {
    try {
      api = require('@opentelemetry/api') as OtelApi
    } catch {
      api = null
    }
  }
  return api
}

// the context key of @opentelemetry/core's suppressTracing(): keys are Symbol.for(description),
// so this is the same key in every copy of the API
const SUPPRESS_TRACING = 'OpenTelemetry SDK Context Key SUPPRESS_TRACING'

/**
 * Calls `fn` with tracing suppressed: OpenTelemetry's SDK starts no span for what it does,
 * and its propagators write no trace headers.
 */
export function untraced<A extends unknown[], R> (fn: (...args: A) => R, thisArg: unknown, ...args: A): R {
  const otelApi = otel()
  if (otelApi === null) return fn.apply(thisArg, args)
  const context = otelApi.context.active().setValue(otelApi.createContextKey(SUPPRESS_TRACING), true)
  return otelApi.context.with(context, fn, thisArg, ...args)
}

/** The minimal logger the pools use (a pino or Fastify logger fits). */
export interface Logger {
  info: (object: object, message: string) => void
  warn: (object: object, message: string) => void
}
