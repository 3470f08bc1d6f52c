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

/**
 * Where a response body goes: the forwarder answers with it, or with the failure. The
 * first two are called only while the reply can still be answered (nothing sent, the
 * client still there).
 */
export interface ResponseBodySink {
  /** a buffered body has arrived whole */
  bodyRead: (reply: FastifyReply, body: Buffer) => void
  /** the body broke off before the client got any of it */
  bodyFailed: (reply: FastifyReply, error: Error) => void
  /** a streamed body has its first bytes (or its end), or is sent `now`: the answer starts (with its headers at once when `now`) */
  bodyStarts: (reply: FastifyReply, stream: Readable, now: boolean) => void
  /** a streamed body broke off after the client got part of it (the response is aborted) */
  bodyBroke: (reply: FastifyReply, error: Error) => void
}

/**
 * true when the answer to a `method` request with `status` and the client-bound
 * `headers` is to be read whole first: buffering is on (`limit` > 0), the status has a
 * body, and the headers announce a length within `limit` and a content type (Fastify
 * gives a buffer without one `application/octet-stream`; such a response streams).
 */
export function buffersResponse (limit: number, method: string | undefined, status: number, headers: Readonly<Record<string, unknown>>): boolean {
  if (limit === 0 || method === 'HEAD' || status === 204 || status === 304) return false
  const length = headers['content-length']
  if (length === undefined || headers['content-type'] === undefined) return false
  // NaN (not a number, or a list) compares false
  return Number(length) <= limit
}

const kBuffered = Symbol('fastify-upstream.buffered')
const kReading = Symbol('fastify-upstream.reading')
const kStreamedTo = Symbol('fastify-upstream.streamed-to')
const kSink = Symbol('fastify-upstream.sink')

type BufferedStream = Readable & { [kBuffered]: BufferedBody }
type StreamedBody = Readable & { [kStreamedTo]: FastifyReply, [kSink]: ResponseBodySink }
type ClientResponse = FastifyReply['raw'] & { [kReading]?: Readable }

const EMPTY = Buffer.alloc(0)

/** One body being read: most arrive in a single chunk, so the list starts only at a second. */
class BufferedBody {
  readonly reply: FastifyReply
  readonly sink: ResponseBodySink
  first: Buffer | null = null
  /** every chunk, the first included, once there is more than one */
  rest: Buffer[] | null = null
  length = 0

  constructor (reply: FastifyReply, sink: ResponseBodySink) {
    this.reply = reply
    this.sink = sink
  }

  body (): Buffer {
    return this.rest !== null ? Buffer.concat(this.rest, this.length) : (this.first ?? EMPTY)
  }
}

// Shared listeners (no closure per response): the streams carry their own state.
function onData (this: BufferedStream, chunk: Buffer): void {
  const state = this[kBuffered]
  state.length += chunk.length
  if (state.first === null) state.first = chunk
  else if (state.rest === null) state.rest = [state.first, chunk]
  else state.rest.push(chunk)
}

/**
 * false when nobody is left to answer: the client went, or something else answered
 * meanwhile (a handler timeout, say). The reading was then stopped (see onClientClosed):
 * an abort, which the exchange does not count against the target.
 */
function answerable (reply: FastifyReply): boolean {
  return !reply.sent && !reply.raw.destroyed
}

function onEnd (this: BufferedStream): void {
  const state = this[kBuffered]
  if (answerable(state.reply)) state.sink.bodyRead(state.reply, state.body())
}

function onError (this: BufferedStream, error: Error): void {
  const state = this[kBuffered]
  if (answerable(state.reply)) state.sink.bodyFailed(state.reply, error)
}

// The client's response closed (answered, or the client went): a body still being read
// for it is of no use any more. Destroying it ends the exchange at once as an abort, which
// is no failure of the target (see Exchange), instead of reading on until the idle timeout.
function onClientClosed (this: ClientResponse): void {
  const stream = this[kReading]
  if (stream !== undefined && !stream.readableEnded) stream.destroy()
}

/** Reads `stream` to its end, then hands the body (or the error that ended it) to `sink`. */
export function readWhole (stream: Readable, reply: FastifyReply, sink: ResponseBodySink): void {
  const buffered = stream as BufferedStream
  buffered[kBuffered] = new BufferedBody(reply, sink)
  buffered.on('error', onError)
  buffered.on('end', onEnd)
  buffered.on('data', onData)
  watchClient(buffered, reply)
}

/**
 * Destroys `stream` when the client's response closes before the stream is done with:
 * one listener per client response, whatever the number of attempts (each reads in its
 * turn); `on`, as a response closes once, and `once` would wrap it in a new function.
 */
function watchClient (stream: Readable, reply: FastifyReply): void {
  const raw = reply.raw as ClientResponse
  if (raw.destroyed) {
    // gone already, before the body was asked for
    stream.destroy()
    return
  }
  if (raw[kReading] === undefined) raw.on('close', onClientClosed)
  raw[kReading] = stream
}

// A streamed body: the answer starts with its first bytes, so that a target that fails
// before them (a reset, a malformed first chunk, a stall past the idle timeout) gets the
// answer a buffered body gets (a retry, or the plugin's own 502/504 with none of the
// target's headers) instead of a broken response. Shared listeners, as above.

function onFirstBytes (this: StreamedBody): void {
  this.removeListener('error', onErrorBeforeBytes)
  this.on('error', onErrorAfterBytes)
  const reply = this[kStreamedTo]
  if (answerable(reply)) this[kSink].bodyStarts(reply, this, false)
}

function onErrorBeforeBytes (this: StreamedBody, error: Error): void {
  this.removeListener('readable', onFirstBytes)
  const reply = this[kStreamedTo]
  if (answerable(reply)) this[kSink].bodyFailed(reply, error)
}

function onErrorAfterBytes (this: StreamedBody, error: Error): void {
  this[kSink].bodyBroke(this[kStreamedTo], error)
}

/**
 * Streams the body to the client from its first bytes on (see above), through `sink`.
 * With `now`, the answer starts at once, before any body (an event stream, whose client
 * waits for its headers).
 */
export function streamBody (stream: Readable, reply: FastifyReply, sink: ResponseBodySink, now: boolean): void {
  const streamed = stream as StreamedBody
  streamed[kStreamedTo] = reply
  streamed[kSink] = sink
  if (now) {
    streamed.on('error', onErrorAfterBytes)
    sink.bodyStarts(reply, streamed, true)
    return
  }
  // 'readable' comes with the first bytes, or with the end of an empty body
  streamed.once('readable', onFirstBytes)
  streamed.once('error', onErrorBeforeBytes)
  watchClient(streamed, reply)
}
