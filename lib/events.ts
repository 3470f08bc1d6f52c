import diagnostics from 'node:diagnostics_channel'
import type { TargetView } from './target'

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

/** Diagnostics channels; names are part of the public contract. */
export const channels = {
  select: diagnostics.channel('fastify-upstream:select'),
  proxyError: diagnostics.channel('fastify-upstream:proxy-error')
}
