import { PassThrough, type Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { DeadlineExceededError } from '../errors'
import { upstreamError } from './upstream-error'
import type { Forwarding } from './forwarding'

// gRPC through a mount: a gRPC call is an HTTP/2 POST with an `application/grpc` body,
// whose outcome travels in the trailers (`grpc-status`, `grpc-message`). The proxy passes
// bodies and trailers through as for any request (see passTrailers); what is gRPC's own is
// here: an answer of the gateway's own in gRPC's terms, and the call's deadline.

/** gRPC status codes (grpc/doc/statuscodes.md) the gateway answers with. */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16
} as const

/**
 * true for a gRPC call: an HTTP/2 request whose content type is `application/grpc`,
 * alone or with a `+format` or parameters (gRPC-Web, `application/grpc-web`, is HTTP/1.1's
 * and answers in its body: not this).
 */
export function isGrpc (request: FastifyRequest): boolean {
  if (request.raw.httpVersionMajor !== 2) return false
  const type = request.headers['content-type']
  if (typeof type !== 'string' || !type.startsWith('application/grpc')) return false
  const next = type.charCodeAt(16)
  // end, '+', ';'
  return Number.isNaN(next) || next === 43 || next === 59
}

/** The longest delay a Node timer takes (ms); a longer one fires at once. */
const MAX_TIMER = 2_147_483_647

const TIMEOUT_UNITS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 }
const TIMEOUT = /^([0-9]{1,8})([HMSmun])$/

/** The ms a `grpc-timeout` value gives (at least 1), undefined when it is absent or not one. */
export function grpcTimeout (value: unknown): number | undefined {
  if (typeof value !== 'string') return undefined
  const parts = TIMEOUT.exec(value)
  if (parts === null) return undefined
  return Math.max(1, Math.ceil(Number(parts[1]) * TIMEOUT_UNITS[parts[2]]))
}

/**
 * The gRPC status for an error of the gateway's own, by its code, else by its HTTP status
 * as gRPC maps them (grpc/doc/http-grpc-status-mapping.md): no target or a failed target
 * is UNAVAILABLE, a timeout DEADLINE_EXCEEDED, a body too large RESOURCE_EXHAUSTED.
 */
export function grpcStatusOf (error: Error & { code?: unknown, statusCode?: unknown }): number {
  const code = error.code
  if (code === 'FST_UPSTREAM_TIMEOUT' || code === 'FST_UPSTREAM_DEADLINE_EXCEEDED' || code === 'FST_UPSTREAM_BODY_TIMEOUT') return GrpcStatus.DEADLINE_EXCEEDED
  if (code === 'FST_UPSTREAM_BODY_TOO_LARGE') return GrpcStatus.RESOURCE_EXHAUSTED
  if (code === 'FST_UPSTREAM_BAD_PATH') return GrpcStatus.INVALID_ARGUMENT
  const status = typeof error.statusCode === 'number' ? error.statusCode : 500
  switch (status) {
    case 400: return GrpcStatus.INTERNAL
    case 401: return GrpcStatus.UNAUTHENTICATED
    case 403: return GrpcStatus.PERMISSION_DENIED
    case 404: return GrpcStatus.UNIMPLEMENTED
    case 499: return GrpcStatus.CANCELLED
    case 429: case 502: case 503: case 504: return GrpcStatus.UNAVAILABLE
    case 500: return GrpcStatus.INTERNAL
    default: return GrpcStatus.UNKNOWN
  }
}

/** A `grpc-message` value: percent-encoded outside printable ASCII (and `%` itself), as gRPC's wire format asks. */
export function grpcMessage (message: string): string {
  let encoded = ''
  for (const byte of Buffer.from(message, 'utf8')) {
    encoded += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : '%' + byte.toString(16).toUpperCase().padStart(2, '0')
  }
  return encoded
}

/**
 * Answers a gRPC call with an error of the gateway's own, as gRPC clients read one: HTTP
 * 200, `content-type: application/grpc`, no message, and the status in the trailers. It is
 * logged as Fastify logs an error it answers (5xx as errors).
 */
export function sendGrpcError (reply: FastifyReply, error: Error & { statusCode?: number }): FastifyReply {
  const status = grpcStatusOf(error)
  if ((error.statusCode ?? 500) >= 500) reply.log.error({ err: error }, error.message)
  else reply.log.info({ err: error }, error.message)
  reply.raw.addTrailers({ 'grpc-status': String(status), 'grpc-message': grpcMessage(error.message) })
  return reply.code(200).header('content-type', 'application/grpc').send()
}

/** Answers with an error of the gateway's own: in gRPC's terms to a gRPC call, else as Fastify answers errors. */
export function sendError (reply: FastifyReply, error: Error): FastifyReply {
  return isGrpc(reply.request) ? sendGrpcError(reply, error) : reply.send(error)
}

// A gRPC call's deadline timer is kept on its response, and cleared by a shared listener
// when the response closes (no closure per call).
const kDeadline = Symbol('fastify-upstream.grpc-deadline')
type RawWithDeadline = FastifyReply['raw'] & { [kDeadline]?: NodeJS.Timeout }

function clearDeadline (this: RawWithDeadline): void {
  clearTimeout(this[kDeadline])
}

/**
 * Holds a gRPC call to its `grpc-timeout`: when the deadline passes before the answer is
 * complete, `expire` is called (the forwarder cancels the attempt in flight, which answers
 * DEADLINE_EXCEEDED, or ends an answer under way). The header goes on to the target as
 * sent: its own deadline starts later, so the gateway's passes first.
 */
export function holdToDeadline (reply: FastifyReply, forwarding: Forwarding, expire: (reply: FastifyReply, forwarding: Forwarding, error: Error) => void): void {
  const ms = grpcTimeout(reply.request.headers['grpc-timeout'])
  // past what a timer holds (about 24.8 days; gRPC allows 99,999,999 hours): no deadline here
  if (ms === undefined || ms > MAX_TIMER) return
  const raw = reply.raw as RawWithDeadline
  raw[kDeadline] = setTimeout(deadlinePassed, ms, reply, forwarding, ms, expire)
  raw.once('close', clearDeadline)
}

function deadlinePassed (reply: FastifyReply, forwarding: Forwarding, ms: number, expire: (reply: FastifyReply, forwarding: Forwarding, error: Error) => void): void {
  expire(reply, forwarding, new DeadlineExceededError(ms))
}

// The answer to a gRPC call, between the target's body and the client (shared listener:
// `this` is the target's body)
const kAnswer = Symbol('fastify-upstream.grpc-answer')
type AnswerSource = Readable & { [kAnswer]?: { to: PassThrough, reply: FastifyReply } }

/**
 * The body of a target's answer to a gRPC call as the client gets it: the same bytes, and
 * when it breaks off (the target's connection lost, the stream reset), an end with
 * UNAVAILABLE in the trailers (DEADLINE_EXCEEDED when the call's deadline cut it), as
 * gRPC clients read a call that failed, where any other answer would be reset (which
 * they read as INTERNAL). One stream more, for gRPC calls only.
 */
export function grpcAnswer (source: Readable, reply: FastifyReply): Readable {
  const to = new PassThrough()
  ;(source as AnswerSource)[kAnswer] = { to, reply }
  source.on('error', answerBrokeOff)
  source.pipe(to)
  return to
}

function answerBrokeOff (this: AnswerSource, error: Error): void {
  const answer = this[kAnswer]
  if (answer === undefined) return
  this[kAnswer] = undefined
  this.unpipe(answer.to)
  const raw = answer.reply.raw
  if (raw.destroyed || raw.writableEnded) return
  // UNAVAILABLE for a target that failed; DEADLINE_EXCEEDED when the call's deadline cut it
  const mapped = upstreamError(error)
  raw.addTrailers({ 'grpc-status': String(grpcStatusOf(mapped)), 'grpc-message': grpcMessage(`the target's answer broke off: ${mapped.message}`) })
  answer.to.end()
}
