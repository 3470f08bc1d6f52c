import * as diagnostics from 'node:diagnostics_channel'

/** Diagnostics channels; names are part of the public contract. */
export const channels = {
  select: diagnostics.channel('fastify-upstream:select'),
  proxyError: diagnostics.channel('fastify-upstream:proxy-error'),
  targetState: diagnostics.channel('fastify-upstream:target-state'),
  retry: diagnostics.channel('fastify-upstream:retry'),
  split: diagnostics.channel('fastify-upstream:split')
}

/**
 * undici publishes here each request it creates. A tracer that instruments undici
 * (OpenTelemetry's `@opentelemetry/instrumentation-undici`, or another hooked in the same
 * way) subscribes, to start the request's span and add its trace headers to the request.
 */
export const undiciRequests = diagnostics.channel('undici:request:create')

/**
 * The rest of undici's request channels, which the plugin's own HTTP/2 client publishes on
 * as undici would (see http2-client.ts), so that such tracers see its requests too.
 */
export const undiciRequestChannels = {
  headers: diagnostics.channel('undici:request:headers'),
  trailers: diagnostics.channel('undici:request:trailers'),
  error: diagnostics.channel('undici:request:error')
}
