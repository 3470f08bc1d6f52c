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
