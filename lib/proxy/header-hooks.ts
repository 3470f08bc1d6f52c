import type { FastifyReply, FastifyRequest } from 'fastify'
import type { HeaderRecord, PreparedOptions } from './forward-options'
import { kForwarding, type ForwardedRequest, type Forwarding } from './forwarding'
import type { StickyConfig } from '../options/config'
import { cookieValue } from '../upstream/sticky'
import { checkResponseHeaders, passTrailers, type TrailerSink } from './header-policy'

// The headers of a proxied exchange, between reply-from and the pool's header policy:
// reply-from calls these two on every request and response (they are shared functions,
// not closures per request), and the forwarder applies the held response headers when
// it answers.

/**
 * Sets the pool's sticky cookie on an answer whose request did not name the target that
 * gave it (no cookie, a stale or forged one, or a target that could not take it), beside
 * any cookie the target sets.
 */
function stickTo (headers: HeaderRecord, request: FastifyRequest, forwarding: Forwarding): void {
  const sticky = forwarding.pool.sticky as NonNullable<Forwarding['pool']['sticky']>
  const id = (forwarding.target as NonNullable<Forwarding['target']>).stickyId
  if (cookieValue(request.headers.cookie, sticky.name) === id) return
  const cookie = `${sticky.name}=${id}${(forwarding.pool.config.sticky as StickyConfig).attributes}`
  const existing = headers['set-cookie']
  headers['set-cookie'] = existing === undefined ? cookie : [...(Array.isArray(existing) ? existing : [String(existing)]), cookie]
}

/** What reply-from copies to the reply itself: nothing (see rewriteHeaders). */
const NO_HEADERS: HeaderRecord = Object.freeze({})

/** The request's Forwarding, once the forwarder has made it. */
export function forwardingOf (request: FastifyRequest): Forwarding {
  return (request as ForwardedRequest)[kForwarding] as Forwarding
}

/** reply-from's rewriteRequestHeaders: the pool's header policy, then the caller's own rewrite. */
export function rewriteRequestHeaders (request: FastifyRequest, headers: HeaderRecord): HeaderRecord {
  const forwarding = forwardingOf(request)
  const policed = forwarding.proxy.headers.request(request, headers)
  // a split's branch: its own headers after the pool's (fixed values, checked at register)
  const branch = forwarding.branch
  if (branch !== null) {
    for (const name of branch.removeHeaders) policed[name] = undefined
    for (const [name, value] of branch.setHeaders) policed[name] = value
  }
  const user = (forwarding.prepared as PreparedOptions).rewriteRequestHeaders
  return user === undefined ? policed : user(request, policed)
}

// The headers for the client are held on the request, and reply-from copies none: only
// onResponse knows whether this answer goes out now, after its body has been read
// whole, or not at all (a retry). Until then the reply carries nothing of it, whatever
// else answers meanwhile (an error of the body, a handler timeout).
//
// reply-from calls this inside undici's callback, where nothing may throw: a rewrite that
// throws, or yields a header Node would refuse to send (and throw from writeHead, inside
// a stream callback), is held as the error onResponse answers with.
export function rewriteHeaders (headers: HeaderRecord, request: FastifyRequest): HeaderRecord {
  const forwarding = forwardingOf(request)
  try {
    const policed = forwarding.proxy.headers.response(request, headers)
    if (forwarding.pool.sticky !== undefined) stickTo(policed, request, forwarding)
    const prepared = forwarding.prepared as PreparedOptions
    const location = policed.location
    if (prepared.rewriteLocation !== undefined && typeof location === 'string') policed.location = prepared.rewriteLocation(location, request)
    const user = prepared.rewriteHeaders
    if (user === undefined) {
      forwarding.headers = policed
    } else {
      const rewritten = user(policed, request)
      checkResponseHeaders(rewritten)
      forwarding.headers = rewritten
    }
  } catch (error) {
    forwarding.headers = error instanceof Error ? error : new Error(String(error))
  }
  return NO_HEADERS
}

// A gRPC answer with no message (Trailers-Only) has its outcome in its headers
const GRPC_OUTCOME = new Set(['grpc-status', 'grpc-message', 'grpc-status-details-bin'])

/**
 * Sets the response headers held for the request on its reply (as reply-from would have).
 * A gRPC answer with its outcome in the headers (Trailers-Only: one HEADERS frame that
 * ends the stream) cannot go out so through Fastify, which sends headers and then ends
 * the stream: its outcome goes in the trailers, where clients read it then, and the caller
 * answers with no body (true) rather than the answer's empty one, which Node would send
 * with the headers, ending the stream before the trailers.
 */
export function applyHeaders (reply: FastifyReply, forwarding: Forwarding): boolean {
  const headers = forwarding.headers as HeaderRecord
  const trailersOnly = headers['grpc-status'] !== undefined && forwarding.trailersTo !== null
  let outcome: Record<string, string | string[] | undefined> | undefined
  for (const name in headers) {
    // as reply-from: no HTTP/2 pseudo-headers
    if (name.charCodeAt(0) === 58) continue
    if (trailersOnly && GRPC_OUTCOME.has(name)) (outcome ??= {})[name] = headers[name] as string
    else reply.header(name, headers[name])
  }
  if (outcome === undefined) return false
  passTrailers(forwarding.trailersTo as TrailerSink, outcome)
  return true
}
