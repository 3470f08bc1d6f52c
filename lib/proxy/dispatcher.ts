import type { FastifyRequest } from 'fastify'
import { Dispatcher } from 'undici'
import { undiciRequests } from '../channels'
import type { Target } from '../upstream/target'
import { Exchange } from './exchange'
import { http2Request } from './header-policy'
import type { Forwarding } from './forwarding'
import { Hedge, hedgeable } from './hedge'
import { dispatchTraced, type DispatchOptions } from './tracing'

/** What dispatch() throws for a request it has no connection pool for. */
function refused (origin: unknown): Error {
  return Object.assign(new Error(`no connection pool for ${String(origin)}`), { code: 'ECONNREFUSED' })
}

/**
 * The undici dispatcher handed to `@fastify/reply-from` (registered once, with no `base`):
 * it passes each request to the connection pool of the target it was sent to, in an
 * `Exchange` that records the attempt; a first attempt the pool hedges goes to a `Hedge`
 * instead, which sends it in an Exchange of its own and may send it to a second target
 * (see hedge.ts). reply-from dispatches synchronously inside
 * `reply.from()`, so the forwarder names the request being forwarded in `forwarding`
 * for the length of the call: no lookup, nothing added to the request.
 */
export class UpstreamDispatcher extends Dispatcher {
  /** the request being forwarded, set by the forwarder around `reply.from()` */
  forwarding: Forwarding | undefined = undefined
  /** that request (read only when undici is traced, or the attempt is hedged) */
  forwardedRequest: FastifyRequest | undefined = undefined

  override dispatch (options: DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const forwarding = this.forwarding
    // a request from outside the forwarder: undici reports a throw from dispatch() to the
    // request's callback, like a refused connection
    if (forwarding === undefined) throw refused(options.origin)
    const request = this.forwardedRequest
    this.forwarding = undefined
    this.forwardedRequest = undefined
    const target = forwarding.target as Target
    // a target's first request makes its connection pool (see TargetConnections)
    const connection = target.connection ?? target.connections?.connect(target)
    if (connection === undefined) throw refused(options.origin)
    if (forwarding.pool.config.http2 !== false) http2Request(options, request)
    // hedging is off unless the pool sets a delay: then the first attempt of a request
    // that may be sent twice (see hedgeable) is the Hedge's to send
    const retry = forwarding.pool.config.retry
    if (retry.hedgeDelay > 0 && forwarding.retries === 0 && request !== undefined && forwarding.pool.targetList.length > 1 && hedgeable(retry, options)) {
      return new Hedge(handler, forwarding, request, options, target).dispatch(connection)
    }
    const exchange = new Exchange(handler, forwarding)
    // a fixed name per target: undici reconnects when a request's servername differs from
    // the connection's, and would derive one from each request's Host header
    options.servername = target.servername
    if (undiciRequests.hasSubscribers && request !== undefined) return dispatchTraced(connection, options, exchange, request, forwarding)
    return connection.dispatch(options, exchange)
  }

  // the connection pools belong to the upstream pools, which close them
  override async close (): Promise<void> {}
  override async destroy (): Promise<void> {}
}
