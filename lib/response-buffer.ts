import type { Readable } from 'node:stream'
import type { FastifyReply } from 'fastify'

/**
 * Response buffering, as NGINX's `proxy_buffering`: a response of known, small size is
 * read whole from the target before the client gets any of it. The target's part is over
 * as soon as its body has arrived, whatever the client's speed; a body that breaks off
 * becomes a clean error answer (or a retry elsewhere) instead of a truncated response;
 * and sending one buffer costs the proxy less than piping a stream (no pipe, no
 * end-of-stream watchers on two streams).
 */

/** Where a buffered body goes: the forwarder answers with it, or with the failure. */
export interface BufferedResponseSink {
  /** the whole body has arrived */
  bodyRead: (reply: FastifyReply, body: Buffer) => void
  /** the body broke off before its end (nothing has been sent to the client); `headers` are the response's */
  bodyFailed: (reply: FastifyReply, error: Error, headers: Record<string, unknown>) => void
}

const kBuffered = Symbol('fastify-upstream.buffered')

type BufferedStream = Readable & { [kBuffered]: BufferedBody }

const EMPTY = Buffer.alloc(0)

/** One body being read: most arrive in a single chunk, so the list starts only at a second. */
class BufferedBody {
  readonly reply: FastifyReply
  readonly headers: Record<string, unknown>
  readonly sink: BufferedResponseSink
  first: Buffer | null = null
  /** every chunk, the first included, once there is more than one */
  rest: Buffer[] | null = null

  constructor (reply: FastifyReply, headers: Record<string, unknown>, sink: BufferedResponseSink) {
    this.reply = reply
    this.headers = headers
    this.sink = sink
  }

  body (): Buffer {
    return this.rest !== null ? Buffer.concat(this.rest) : (this.first ?? EMPTY)
  }
}

/**
 * true when the answer to a `method` request with `status` is to be read whole first:
 * buffering is on (`limit` > 0), the status has a body, and the headers the client will
 * get announce a length within `limit` and a content type (Fastify gives a buffer
 * without one `application/octet-stream`; such a response streams as it came).
 */
export function buffersResponse (limit: number, method: string | undefined, status: number, reply: FastifyReply): boolean {
  if (limit === 0 || method === 'HEAD' || status === 204 || status === 304) return false
  const length = reply.getHeader('content-length')
  if (length === undefined || reply.getHeader('content-type') === undefined) return false
  // NaN (not a number, or a list) compares false
  return Number(length) <= limit
}

// Shared listeners (no closure per response): the stream carries its own state.
function onData (this: BufferedStream, chunk: Buffer): void {
  const state = this[kBuffered]
  if (state.first === null) state.first = chunk
  else if (state.rest === null) state.rest = [state.first, chunk]
  else state.rest.push(chunk)
}

function onEnd (this: BufferedStream): void {
  const state = this[kBuffered]
  state.sink.bodyRead(state.reply, state.body())
}

function onError (this: BufferedStream, error: Error): void {
  const state = this[kBuffered]
  state.sink.bodyFailed(state.reply, error, state.headers)
}

/** Reads the body of `response` to its end, then hands it (or the error that ended it) to `sink`. */
export function readWhole (response: { stream: Readable, headers: Record<string, unknown> }, reply: FastifyReply, sink: BufferedResponseSink): void {
  const stream = response.stream as BufferedStream
  stream[kBuffered] = new BufferedBody(reply, response.headers, sink)
  stream.on('error', onError)
  stream.on('end', onEnd)
  stream.on('data', onData)
}
