import { BadGatewayError, BadHeaderError, ConnectError, DeadlineExceededError, HedgeCancelledError, TimeoutError } from '../errors'
import { TOKEN_CHAR } from '../header-syntax'

// What went wrong with an attempt, from what reply-from or undici reported: one of the
// plugin's stable errors, and whether it is the target's fault at all.

// Error codes of the connection phase: nothing was sent to the target.
const CONNECT_CODES = new Set([
  'ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT',
  // the target's connection pool closed (it was removed) before the request went out
  'UND_ERR_CLOSED', 'UND_ERR_DESTROYED'
])
const TLS_CODE = /^(ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO|HOSTNAME_MISMATCH)/
// The client's own faults, found while its body streams to the target (413, 408): passed
// on as they are, and the rest of that body is never read
export const CLIENT_BODY_CODES = new Set(['FST_UPSTREAM_BODY_TOO_LARGE', 'FST_UPSTREAM_BODY_TIMEOUT'])
/**
 * The code of an attempt a hedge cancelled (see hedge.ts): the other attempt answered
 * first, or the client went away while both were pending. No fault of the target's: it is
 * not counted against it, nor retried; `request.upstream` shows it on the cancelled attempt.
 */
export const HEDGE_CANCELLED: string = new HedgeCancelledError('').code
/** The code of an attempt a gRPC call's deadline cancelled: the client's limit, no target's fault; not retried. */
const DEADLINE_EXCEEDED: string = new DeadlineExceededError(0).code
// undici's message for a header it refuses; only a token is taken from it into the error
const UNDICI_BAD_HEADER = new RegExp(`^invalid (${TOKEN_CHAR}+) header$`)

export type MappedError = Error & { code: string, statusCode: number }

/** The reason a hedge aborts an attempt with: it reaches no client (the answer went from the other attempt, or nobody waits). */
export function hedgeCancelled (why: string): MappedError {
  return new HedgeCancelledError(why) as MappedError
}

/** What to set when TLS with a target fails, by Node's error code: said in the 502 and the log. */
function tlsHint (code: string): string {
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID' || code.includes('HOSTNAME_MISMATCH')) {
    return ": the target's certificate does not name the host it was checked against (the target URL's host): set tls.servername to a name it has"
  }
  if (code.startsWith('DEPTH_ZERO') || code.startsWith('SELF_SIGNED') || code.startsWith('UNABLE_TO_') || code === 'CERT_UNTRUSTED') {
    return ": the target's certificate is not signed by a trusted CA: give its CA (PEM) in the pool's tls.ca, and tls.servername if it names another host"
  }
  return ': TLS with the target failed: check the pool\'s tls options (tls.ca, tls.servername, tls.minVersion)'
}

/** Maps what reply-from or undici reported to one of the plugin's stable errors. */
export function upstreamError (error: Error & { cause?: unknown }): MappedError {
  const cause = (error.cause ?? error) as Error & { code?: string }
  const code = cause.code ?? ''
  // the client's own fault, found while streaming its body: not the target's; nor a hedge's
  // cancel, nor a call's deadline
  if (CLIENT_BODY_CODES.has(code) || code === HEDGE_CANCELLED || code === DEADLINE_EXCEEDED) return cause as MappedError
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return new TimeoutError('no connection within the connect timeout', { cause })
  if (code === 'UND_ERR_HEADERS_TIMEOUT') return new TimeoutError('no response within the response timeout', { cause })
  if (code === 'UND_ERR_BODY_TIMEOUT') return new TimeoutError('the response body stalled past the idle timeout', { cause })
  if (TLS_CODE.test(code)) return new ConnectError(code + tlsHint(code), { cause })
  if (CONNECT_CODES.has(code)) return new ConnectError(code, { cause })
  // undici refused, before sending anything, a request the gateway built (a header from a
  // caller's rewriteRequestHeaders): the gateway's fault, and every target would refuse it
  if (code === 'UND_ERR_INVALID_ARG') {
    const header = UNDICI_BAD_HEADER.exec(cause.message)
    return new BadHeaderError(header !== null ? `request header "${header[1]}"` : 'a request header', { cause })
  }
  return new BadGatewayError(code !== '' ? code : cause.message, { cause })
}

/**
 * true for a failure that is no target's fault: the client's (its body too large, or
 * stalled: a 4xx) or the gateway's own (a header it built). Neither counts against the
 * target nor is retried.
 */
export function notTheTargets (error: MappedError): boolean {
  return error.statusCode < 500 || error instanceof BadHeaderError || error.code === DEADLINE_EXCEEDED
}

/**
 * true for an HTTP/2 stream the target refused (RST_STREAM REFUSED_STREAM): by RFC 9113
 * §8.7 it did no processing of it. Node reports it with the code's name in the message only.
 */
function refusedStream (cause: { code?: string, message?: string } | undefined): boolean {
  return cause?.code === 'ERR_HTTP2_STREAM_ERROR' && cause.message?.includes('NGHTTP2_REFUSED_STREAM') === true
}

/**
 * true when the target did not process the request: nothing reached it (refused
 * connection, connect timeout), or it refused the HTTP/2 stream. Such a request may go to
 * another target whatever its method.
 */
export function neverSent (error: MappedError): boolean {
  const cause = error.cause as { code?: string, message?: string } | undefined
  return error instanceof ConnectError || cause?.code === 'UND_ERR_CONNECT_TIMEOUT' || refusedStream(cause)
}

/**
 * true when an error undici reports for an attempt counts against the target: not the
 * client's (its body too large or stalled, its call's deadline), nor the gateway's (a header undici refused, an
 * attempt a hedge cancelled), nor a stream an HTTP/2 target refused. The same line `notTheTargets` draws, read from the raw error
 * before it is mapped.
 */
export function targetsFault (error: Error & { cause?: unknown }): boolean {
  const cause = (error.cause ?? error) as { code?: unknown, message?: string }
  const code = cause.code
  // a refused HTTP/2 stream: the target said it would not take it (it is busy or going
  // away), and another target gets it
  return typeof code !== 'string' || (!CLIENT_BODY_CODES.has(code) && code !== 'UND_ERR_INVALID_ARG' && code !== HEDGE_CANCELLED && code !== DEADLINE_EXCEEDED && !refusedStream(cause as { code: string }))
}
