import type { FastifyRequest } from 'fastify'
import type { Dispatcher } from 'undici'
import { otel, type OtelApi, type OtelContext } from '../otel'
import type { Exchange } from './exchange'
import type { Forwarding } from './forwarding'

/** undici's Request takes `servername`, which its types leave out. */
export type DispatchOptions = Dispatcher.DispatchOptions & { servername?: string }

/** The trace headers every tracer hooked into undici writes (W3C Trace Context). */
const TRACE_HEADERS = ['traceparent', 'tracestate']

/**
 * Sends an attempt while something instruments undici (see undiciRequests). The tracer
 * adds its own trace headers to the request undici builds, after the forwarded ones: the
 * client's copies would reach the target beside them (two `traceparent`s, which the
 * target's tracer rejects, starting a new trace). So those headers, and the others that
 * OpenTelemetry's propagator writes, are not forwarded: the target gets the attempt's,
 * which continue the client's trace when the gateway's server span does. Without a
 * tracer on undici the client's headers pass through untouched (see dispatch).
 */
export function dispatchTraced (connection: Dispatcher, options: DispatchOptions, exchange: Exchange, request: FastifyRequest, forwarding: Forwarding): boolean {
  const api = otel()
  const headers = options.headers as Record<string, unknown> | null | undefined
  if (headers != null && !Array.isArray(headers)) {
    // reply-from hands over a copy of its own; an undefined value is one undici leaves out
    for (const name of TRACE_HEADERS) headers[name] = undefined
    if (api !== null) for (const name of api.propagation.fields()) headers[name] = undefined
  }
  if (api === null) return connection.dispatch(options, exchange)
  return api.context.with(new AttemptContext(api, request, forwarding), connection.dispatch, connection, options, exchange)
}

/**
 * The active context while an attempt is dispatched under OpenTelemetry. undici's
 * instrumentation starts the attempt's CLIENT span in the active context and then sets it
 * into that context to inject its headers: this one hands everything to the context the
 * request runs in and, seeing the span set into it, names the pool, the attempt and why on
 * it. The instrumentation hands its spans to no one else, and this way needs no setting of it.
 */
class AttemptContext implements OtelContext {
  private readonly api: OtelApi
  private readonly parent: OtelContext
  /** the attempt's request, until its span is named */
  private forwarding: Forwarding | undefined

  constructor (api: OtelApi, request: FastifyRequest, forwarding: Forwarding) {
    let parent = api.context.active()
    // no span of the gateway's for the request (nothing traces its server side): the attempt
    // continues the caller's trace itself, as a child of the caller's span
    if (api.trace.getSpan(parent) === undefined) parent = api.propagation.extract(parent, request.headers)
    this.api = api
    this.parent = parent
    this.forwarding = forwarding
  }

  getValue (key: symbol): unknown {
    return this.parent.getValue(key)
  }

  setValue (key: symbol, value: unknown): OtelContext {
    const next = this.parent.setValue(key, value)
    const forwarding = this.forwarding
    if (forwarding !== undefined) {
      const span = this.api.trace.getSpan(next)
      if (span !== undefined && span === value && span !== this.api.trace.getSpan(this.parent)) {
        this.forwarding = undefined
        span.setAttributes(forwarding.spanAttributes())
      }
    }
    return next
  }

  deleteValue (key: symbol): OtelContext {
    return this.parent.deleteValue(key)
  }
}
