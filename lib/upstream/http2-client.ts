import http2, { type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2'
import { pipeline, Readable } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import { Dispatcher, errors, type buildConnector } from 'undici'
import { undiciRequestChannels, undiciRequests } from '../channels'
import { headerPairs, TOKEN, validHeaderValue } from '../header-syntax'

const { NGHTTP2_CANCEL, NGHTTP2_REFUSED_STREAM } = http2.constants

/** How an HTTP/2 client of one target origin connects and what it asks of its connections. */
export interface Http2ClientOptions {
  /** opens a connection: the pool's connector (h2c with prior knowledge, or TLS offering h2 by ALPN) */
  connect: buildConnector.connector
  /** the most connections at once (undefined: as many as the requests need) */
  maxConnections: number | undefined
  /** the most streams one connection carries at once (less if the target says so) */
  maxConcurrentStreams: number
  /** ms between PINGs on each connection; a PING unanswered by the next one closes it (0: none) */
  pingInterval: number
  /** ms from a stream's start to its response headers */
  headersTimeout: number
  /** ms of silence allowed in a response body */
  bodyTimeout: number
  /**
   * For `http2: true`: the dispatcher for an origin whose target chose HTTP/1.1 by ALPN
   * (made once, on the first such connection); every request goes there from then on.
   */
  http1?: () => Dispatcher
  /** told how many requests one connection carries, once the first connection knows its protocol */
  onProtocol?: (perConnection: number) => void
}

/**
 * What undici's own errors look like to the forwarder (upstream-error.ts reads `code`): a
 * refused stream as Node reports one, whatever made it refused.
 */
function refused (why: string): Error {
  return Object.assign(new Error(`Stream closed with error code NGHTTP2_REFUSED_STREAM (${why})`), { code: 'ERR_HTTP2_STREAM_ERROR' })
}

type Handler = Dispatcher.DispatchHandler
type DispatchOptions = Dispatcher.DispatchOptions

const kAttempt = Symbol('fastify-upstream.h2-attempt')
const kConnection = Symbol('fastify-upstream.h2-connection')
type TaggedStream = ClientHttp2Stream & { [kAttempt]?: Attempt }
type TaggedSession = ClientHttp2Session & { [kConnection]?: Connection }

/** One connection (an HTTP/2 session) and what the client knows of it. */
class Connection {
  readonly client: Http2Client
  readonly session: TaggedSession
  /** streams open on it */
  streams = 0
  /**
   * the most streams it takes: 1 until the target's SETTINGS come (a target that takes fewer
   * than we would assume refuses the streams past its limit), then theirs or ours, the lower
   */
  maxStreams = 1
  /** the GOAWAY's last stream id, -1 until one came: then it takes no new stream */
  lastStreamId = -1
  /** a PING sent and not yet answered */
  awaitingPing = false
  /** the requests with a stream on it, not yet reported (a GOAWAY reads them) */
  readonly attempts = new Set<Attempt>()
  pinger: NodeJS.Timeout | undefined = undefined

  constructor (client: Http2Client, session: TaggedSession) {
    this.client = client
    this.session = session
    session[kConnection] = this
  }

  get open (): boolean {
    return this.lastStreamId === -1 && !this.session.closed && !this.session.destroyed
  }
}

/**
 * The HTTP/2 connections to one target origin, as an undici dispatcher: what a pool with
 * `http2` sends its requests through (see TargetConnections), built on Node's HTTP/2 client.
 *
 * Why not undici's own: undici 7 fails every stream of a connection that gets a GOAWAY,
 * the ones the target promised to finish too, and drops the GOAWAY's last stream id (which
 * tells the unprocessed streams apart); it reports a stream reset after part of a body as
 * a complete answer; it never notices an unanswered PING; and it passes HTTP/2 trailers
 * only half parsed. Here:
 * - **GOAWAY** drains the connection: no new stream goes on it, the streams up to the last
 *   stream id finish, those above it (and those not yet sent) fail as refused
 *   (REFUSED_STREAM: not processed, RFC 9113 §8.7), which the forwarder retries on another
 *   target whatever the method; the next requests open a new connection.
 * - **A stream that closes before the end of its answer** (a reset, or the connection
 *   lost) is a failure, never a complete answer.
 * - **PING**: every `pingInterval`, and a connection whose last PING is still unanswered
 *   then is closed (its streams fail).
 * - **Trailers** reach the handler's `onResponseEnd` as Node parsed them.
 *
 * A stream is a request in flight; a connection carries `maxConcurrentStreams` (or what
 * the target allows, if less), and a request that finds every connection full opens
 * another (up to `maxConnections`) or waits, in order. For `http2: true`, a target that
 * chooses HTTP/1.1 by ALPN gets its requests through the `http1` dispatcher instead.
 */
export class Http2Client extends Dispatcher {
  private readonly origin: URL
  readonly options: Http2ClientOptions
  private readonly connections: Connection[] = []
  /** requests waiting for a stream, in order */
  private readonly queue: Attempt[] = []
  /** connections being opened */
  private connecting = 0
  /** streams open on every connection */
  private running = 0
  private http1: Dispatcher | undefined = undefined
  private closing: Promise<void> | undefined = undefined
  private whenIdle: (() => void) | undefined = undefined
  private destroyedError: Error | undefined = undefined

  constructor (origin: string | URL, options: Http2ClientOptions) {
    super()
    this.origin = new URL(origin)
    this.options = options
  }

  /** What the idle sweep reads, as undici's Pool has it. */
  get stats (): { connected: number, size: number, queued: number } {
    const queued = this.queue.length
    const h1 = (this.http1 as unknown as { stats?: { connected: number, size: number, queued: number } } | undefined)?.stats
    return {
      connected: this.connections.length + (h1?.connected ?? 0),
      size: queued + this.running + (h1?.size ?? 0),
      queued: queued + (h1?.queued ?? 0)
    }
  }

  override dispatch (options: DispatchOptions, handler: Handler): boolean {
    if (this.http1 !== undefined) return this.http1.dispatch(options, handler)
    const attempt = new Attempt(this, options, handler)
    if (this.closing !== undefined || this.destroyedError !== undefined) {
      const error = this.destroyedError !== undefined ? new errors.ClientDestroyedError() : new errors.ClientClosedError()
      queueMicrotask(() => attempt.fail(error))
      return true
    }
    if (undiciRequests.hasSubscribers) attempt.traced = tracedRequest(options, this.origin)
    attempt.started()
    if (!attempt.finished) {
      this.queue.push(attempt)
      this.drive()
    }
    return true
  }

  /** Starts what waits on connections that can take it, and opens one when none can. */
  drive (): void {
    const queue = this.queue
    while (queue.length > 0) {
      const attempt = queue[0]
      if (attempt.finished) {
        queue.shift()
        continue
      }
      const connection = this.free()
      if (connection === undefined) break
      queue.shift()
      this.send(attempt, connection)
    }
    if (queue.length > 0 && this.connecting === 0 && this.http1 === undefined && this.destroyedError === undefined) {
      // a connection draining after a GOAWAY takes no new stream, nor counts against the limit
      const max = this.options.maxConnections
      let open = 0
      for (const connection of this.connections) if (connection.open) open++
      if (max === undefined || open < max) this.open()
    }
    if (queue.length === 0 && this.running === 0 && this.whenIdle !== undefined) this.whenIdle()
  }

  /** A connection with room for a stream, the first one (older connections fill first). */
  private free (): Connection | undefined {
    for (const connection of this.connections) {
      if (connection.open && connection.streams < connection.maxStreams) return connection
    }
    return undefined
  }

  private open (): void {
    this.connecting++
    const url = this.origin
    this.options.connect({
      // an IPv6 address without its brackets, as undici passes it
      hostname: url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname,
      host: url.host,
      protocol: url.protocol,
      port: url.port,
      servername: null,
      localAddress: null,
      httpSocket: undefined
    } as unknown as buildConnector.Options, (error, socket) => {
      this.connecting--
      if (error !== null || socket === null) {
        this.connectFailed(error ?? new errors.SocketError('no socket'))
        return
      }
      // closing gracefully, the connection still serves what waits
      if (this.destroyedError !== undefined) {
        socket.destroy()
        return
      }
      if (url.protocol === 'https:' && (socket as TLSSocket).alpnProtocol !== 'h2') {
        socket.destroy()
        this.toHttp1()
        return
      }
      this.options.onProtocol?.(this.options.maxConcurrentStreams)
      this.connected(socket)
    })
  }

  /**
   * No connection could be opened: what waits fails with the reason (the forwarder sends
   * it elsewhere; nothing was sent), and no connection is tried again until a request
   * comes.
   */
  private connectFailed (error: Error): void {
    for (const attempt of this.queue.splice(0)) attempt.fail(error)
    this.drive()
  }

  /** The target chose HTTP/1.1: this origin's requests, waiting and to come, go to the HTTP/1.1 dispatcher. */
  private toHttp1 (): void {
    const factory = this.options.http1
    if (factory === undefined) {
      this.connectFailed(new errors.SocketError('the target declined HTTP/2'))
      return
    }
    this.options.onProtocol?.(1)
    const http1 = this.http1 = factory()
    for (const attempt of this.queue.splice(0)) {
      if (!attempt.finished) http1.dispatch(attempt.options, attempt.handler)
    }
    this.drive()
  }

  private connected (socket: NonNullable<Parameters<Parameters<buildConnector.connector>[1]>[1]>): void {
    const session: TaggedSession = http2.connect(this.origin, {
      createConnection: () => socket as never,
      peerMaxConcurrentStreams: this.options.maxConcurrentStreams,
      settings: { enablePush: false }
    })
    const connection = new Connection(this, session)
    this.connections.push(connection)
    session.on('remoteSettings', onRemoteSettings)
    session.on('goaway', onGoaway)
    session.on('close', onSessionClose)
    // its streams report what broke; the session's own error needs a listener, no more
    session.on('error', ignore)
    session.unref()
    const interval = this.options.pingInterval
    if (interval > 0) {
      connection.pinger = setInterval(ping, interval, connection)
      connection.pinger.unref()
    }
    this.drive()
  }

  /** Sends `attempt` as a stream on `connection`. */
  private send (attempt: Attempt, connection: Connection): void {
    const { options } = attempt
    const body = options.body
    const headers = requestHeaders(options, this.origin)
    if (headers instanceof Error) {
      // Node's HTTP/2 client would throw on it, and take the whole connection down with it
      attempt.fail(headers)
      return
    }
    const bodiless = body == null || (typeof body === 'string' && body.length === 0) || (body instanceof Uint8Array && body.byteLength === 0)
    let stream: TaggedStream
    try {
      stream = connection.session.request(headers, { endStream: bodiless })
    } catch (error) {
      // the session closed under us (a GOAWAY in this very tick): not sent; else Node
      // refused the headers (a value it takes only once given as a list, say): the
      // gateway's own fault, as undici reports one
      const code = (error as { code?: string }).code
      attempt.fail(code === 'ERR_HTTP2_GOAWAY_SESSION' || code === 'ERR_HTTP2_INVALID_SESSION'
        ? refused(String((error as Error).message))
        : new errors.InvalidArgumentError(String((error as Error).message)))
      return
    }
    connection.streams++
    this.running++
    connection.session.ref()
    connection.attempts.add(attempt)
    stream[kAttempt] = attempt
    attempt.stream = stream
    attempt.connection = connection
    // a call's own timeouts (reply-from's `timeout`) before the pool's
    stream.setTimeout(options.headersTimeout ?? this.options.headersTimeout)
    stream.on('response', onResponse)
    stream.on('data', onData)
    stream.on('trailers', onTrailers)
    stream.on('end', onEnd)
    stream.on('timeout', onTimeout)
    stream.on('error', onStreamError)
    stream.on('close', onStreamClose)
    if (attempt.paused) stream.pause()
    if (bodiless) return
    if (typeof body === 'string' || body instanceof Uint8Array) {
      stream.end(body)
    } else if (body instanceof Readable) {
      pipeline(body, stream, (error) => { if (error != null) attempt.bodyFailed(error) })
    } else {
      pipeline(Readable.from(body as unknown as AsyncIterable<Uint8Array>), stream, (error) => { if (error != null) attempt.bodyFailed(error) })
    }
  }

  /** A stream closed: its room is free for the next request. */
  streamClosed (connection: Connection): void {
    connection.streams--
    this.running--
    if (connection.streams === 0) {
      connection.session.unref()
      // a connection draining after a GOAWAY is done once its last stream is
      if (connection.lastStreamId !== -1 && !connection.session.destroyed) connection.session.close()
    }
    this.drive()
  }

  /** A connection closed (drained, lost, or closed by the client). */
  connectionClosed (connection: Connection): void {
    clearInterval(connection.pinger)
    const index = this.connections.indexOf(connection)
    if (index !== -1) this.connections.splice(index, 1)
    this.drive()
  }

  /** Closes gracefully: what was dispatched is answered first. */
  override close (): Promise<void> {
    if (this.closing !== undefined) return this.closing
    this.closing = (async () => {
      if (this.queue.length > 0 || this.running > 0) await new Promise<void>((resolve) => { this.whenIdle = resolve })
      await Promise.all([
        ...this.connections.map((connection) => closeSession(connection.session)),
        this.http1?.close()
      ])
    })()
    return this.closing
  }

  /** Closes at once: what is waiting or in flight fails. */
  override async destroy (): Promise<void> {
    this.destroyedError ??= new errors.ClientDestroyedError()
    for (const attempt of this.queue.splice(0)) attempt.fail(this.destroyedError)
    this.whenIdle?.()
    await Promise.all([
      ...this.connections.map((connection) => destroySession(connection.session)),
      this.http1?.destroy()
    ])
  }
}

function closeSession (session: ClientHttp2Session): Promise<void> {
  if (session.destroyed) return Promise.resolve()
  return new Promise((resolve) => { session.close(() => resolve()) })
}

function destroySession (session: ClientHttp2Session): Promise<void> {
  if (session.destroyed) return Promise.resolve()
  return new Promise((resolve) => {
    session.once('close', () => resolve())
    session.destroy()
  })
}

function ignore (): void {}

// Session listeners, shared (no closure per connection): `this` is the session

function onRemoteSettings (this: TaggedSession, settings: http2.Settings): void {
  const connection = this[kConnection] as Connection
  // ours is the most we want, theirs the most they take (no limit when they name none)
  const ours = connection.client.options.maxConcurrentStreams
  const theirs = settings.maxConcurrentStreams
  connection.maxStreams = Math.max(1, theirs === undefined ? ours : Math.min(theirs, ours))
  connection.client.drive()
}

/**
 * A GOAWAY: the connection takes no new stream; the streams above the last id (and those
 * Node has not sent yet) were not processed and fail as refused; the others finish (Node
 * closes the session once they have; with an error code it destroys it at once).
 */
function onGoaway (this: TaggedSession, _code: number, lastStreamId: number): void {
  const connection = this[kConnection] as Connection
  connection.lastStreamId = lastStreamId
  clearInterval(connection.pinger)
  for (const attempt of [...connection.attempts]) {
    const id = attempt.stream?.id
    if (id === undefined || id > lastStreamId) attempt.abandon(refused(`GOAWAY, last stream ${lastStreamId}`))
  }
  connection.client.drive()
}

function onSessionClose (this: TaggedSession): void {
  const connection = this[kConnection] as Connection
  connection.client.connectionClosed(connection)
}

/** Every interval: the PING before this one is still unanswered, the connection is gone. */
function ping (connection: Connection): void {
  const session = connection.session
  // a connection draining after a GOAWAY (closed: Node cancels its PINGs) lives as long
  // as its streams, which their own timeouts bound
  if (session.destroyed || session.closed || connection.lastStreamId !== -1) return
  if (connection.awaitingPing) {
    session.destroy(new errors.SocketError('HTTP/2: PING unanswered'))
    return
  }
  connection.awaitingPing = true
  try {
    session.ping(function pong (error) { if (error == null) connection.awaitingPing = false })
  } catch {
    // too many PINGs unanswered already
  }
}

// Stream listeners, shared: `this` is the stream

function onResponse (this: TaggedStream, headers: IncomingHttpHeaders): void {
  this[kAttempt]?.response(headers)
}

function onData (this: TaggedStream, chunk: Buffer): void {
  this[kAttempt]?.data(chunk)
}

function onTrailers (this: TaggedStream, trailers: IncomingHttpHeaders): void {
  const attempt = this[kAttempt]
  if (attempt !== undefined) attempt.trailers = trailers
}

function onEnd (this: TaggedStream): void {
  this[kAttempt]?.end()
}

function onTimeout (this: TaggedStream): void {
  const attempt = this[kAttempt]
  if (attempt === undefined) return
  attempt.abandon(attempt.status === 0
    ? new errors.HeadersTimeoutError('HTTP/2: no response headers within the response timeout')
    : new errors.BodyTimeoutError('HTTP/2: the response body stalled past the idle timeout'))
}

function onStreamError (this: TaggedStream, error: Error): void {
  this[kAttempt]?.streamFailed(error, this)
}

function onStreamClose (this: TaggedStream): void {
  const attempt = this[kAttempt]
  if (attempt === undefined) return
  this[kAttempt] = undefined
  attempt.closed(this)
}

/**
 * A request's headers as an object: reply-from gives one; a list of names and values
 * (undici's other form) or none is made one.
 */
function headerRecord (options: DispatchOptions): Record<string, unknown> {
  const given = options.headers
  if (given != null && typeof given === 'object' && !Array.isArray(given)) return given as Record<string, unknown>
  const record: Record<string, unknown> = {}
  if (Array.isArray(given)) for (let i = 0; i < given.length; i += 2) record[String(given[i]).toLowerCase()] = given[i + 1]
  return record
}

/** undici's error for a header it will not send (the forwarder reads its message, see upstream-error.ts). */
function invalidHeader (name: string): Error {
  return new errors.InvalidArgumentError(TOKEN.test(name) ? `invalid ${name} header` : 'invalid header')
}

/**
 * The headers of a request as Node's HTTP/2 client takes them: Host as :authority, no
 * undefined values; an error for a name or value Node would refuse (it would take the
 * connection's other streams down with the one request).
 */
function requestHeaders (options: DispatchOptions, origin: URL): http2.OutgoingHttpHeaders | Error {
  const headers: http2.OutgoingHttpHeaders = {
    ':method': options.method,
    ':path': options.path,
    ':authority': origin.host
  }
  const record = headerRecord(options)
  for (const name in record) {
    const value = record[name]
    if (value === undefined) continue
    const lower = name.toLowerCase()
    if (!TOKEN.test(lower) || !validHeaderValue(value)) return invalidHeader(lower)
    if (lower === 'host') headers[':authority'] = String(value)
    else headers[lower] = value as string | string[]
  }
  const body = options.body
  if (headers['content-length'] === undefined && (typeof body === 'string' || body instanceof Uint8Array)) {
    headers['content-length'] = typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength
  }
  return headers
}

/** The response headers without Node's pseudo-headers. */
function responseHeaders (headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {}
  for (const name in headers) {
    if (name.charCodeAt(0) !== 58) out[name] = headers[name]
  }
  return out
}

/**
 * One request on the client: its handler's controller (abort, pause, resume) and, once
 * sent, its stream. It reports to the handler once: an answer's end or a failure.
 */
class Attempt implements Dispatcher.DispatchController {
  readonly client: Http2Client
  readonly options: DispatchOptions
  readonly handler: Handler
  stream: TaggedStream | undefined = undefined
  connection: Connection | undefined = undefined
  status = 0
  /** the answer's Content-Length (-1: none, or an answer with no body), and the body bytes so far */
  expected = -1
  received = 0
  /** a gRPC answer whose status is to come in its trailers */
  grpc = false
  trailers: IncomingHttpHeaders | undefined = undefined
  finished = false
  /** what undici's request channels carry for this request, while a tracer listens (see tracedRequest) */
  traced: TracedRequest | null = null
  aborted = false
  paused = false
  reason: Error | null = null

  constructor (client: Http2Client, options: DispatchOptions, handler: Handler) {
    this.client = client
    this.options = options
    this.handler = handler
  }

  started (): void {
    try {
      this.handler.onRequestStart?.(this, {})
    } catch (error) {
      this.fail(error as Error)
    }
  }

  // the controller

  abort (reason?: Error): void {
    if (this.finished) return
    // undici's handlers may abort with no reason (the client went away)
    const error = reason ?? new errors.RequestAbortedError()
    this.aborted = true
    this.reason = error
    this.abandon(error)
  }

  // while the reader holds the body back, its silence is not the target's (undici's
  // HTTP/1.1 client stops its body timeout too)
  pause (): void {
    this.paused = true
    this.stream?.pause()
    if (this.status !== 0) this.stream?.setTimeout(0)
  }

  resume (): void {
    this.paused = false
    this.stream?.resume()
    if (this.status !== 0 && !this.finished) this.stream?.setTimeout(this.bodyTimeout())
  }

  private bodyTimeout (): number {
    return this.options.bodyTimeout ?? this.client.options.bodyTimeout
  }

  // the stream's reports

  response (headers: IncomingHttpHeaders): void {
    if (this.finished) return
    const status = Number(headers[':status'])
    this.status = status
    const length = headers['content-length']
    if (length !== undefined && this.options.method !== 'HEAD' && status !== 204 && status !== 304) this.expected = Number(length)
    // a gRPC answer with its status to come: it ends with trailers, or broke off
    const type = headers['content-type']
    this.grpc = typeof type === 'string' && type.startsWith('application/grpc') && headers['grpc-status'] === undefined
    if (!this.paused) this.stream?.setTimeout(this.bodyTimeout())
    const outbound = responseHeaders(headers)
    if (this.traced !== null) undiciRequestChannels.headers.publish({ request: this.traced, response: { statusCode: status, statusText: '', headers: headerPairs(outbound) } })
    // a handler that throws (a caller's onResponse, through reply-from) fails the attempt, as undici does
    try {
      this.handler.onResponseStart?.(this, status, outbound, '')
    } catch (error) {
      this.abandon(error as Error)
    }
  }

  data (chunk: Buffer): void {
    if (this.finished) return
    this.received += chunk.length
    try {
      this.handler.onResponseData?.(this, chunk)
    } catch (error) {
      this.abandon(error as Error)
    }
  }

  /**
   * The body ended: complete, unless the stream was closed under it. Node ends the body
   * of a stream closed by its connection's loss (CANCEL) as it ends a complete one, and
   * a reset with NO_ERROR before END_STREAM too: a length short of Content-Length tells
   * the latter, and a gRPC answer with no status (gRPC's come in the trailers).
   */
  end (): void {
    if (this.finished || this.status === 0) return
    const code = this.stream?.rstCode
    if ((code !== undefined && code !== 0) || (this.expected !== -1 && this.received !== this.expected) || (this.grpc && this.trailers?.['grpc-status'] === undefined)) {
      this.fail(new errors.SocketError(`HTTP/2: the stream closed before the response was complete (code ${code ?? 'none'}, ${this.received} of ${this.expected === -1 ? 'unknown' : this.expected} bytes)`))
      return
    }
    this.settle()
    const trailers = this.trailers === undefined ? {} : responseHeaders(this.trailers)
    if (this.traced !== null) undiciRequestChannels.trailers.publish({ request: this.traced, trailers: headerPairs(trailers) })
    try {
      this.handler.onResponseEnd?.(this, trailers)
    } catch {
      // reported once already (as complete): nothing left to tell the handler
    }
  }

  /** The request body failed (the client's stream broke, was too large, or stalled): its error is the attempt's. */
  bodyFailed (error: Error): void {
    this.abandon(error)
  }

  streamFailed (error: Error, stream: TaggedStream): void {
    this.fail(this.unprocessed(stream) ? refused(error.message) : error)
  }

  /** The stream closed: unless the answer ended, the attempt failed. */
  closed (stream: TaggedStream): void {
    const connection = this.connection as Connection
    if (!this.finished) {
      const code = stream.rstCode
      this.fail(code === NGHTTP2_REFUSED_STREAM || this.unprocessed(stream)
        ? refused(`code ${code ?? 'none'}`)
        : new errors.SocketError(`HTTP/2: the stream closed before the response was complete (code ${code ?? 'none'})`))
    }
    this.client.streamClosed(connection)
  }

  /** true when the target said it did not process the stream: a GOAWAY whose last id is below it. */
  private unprocessed (stream: TaggedStream): boolean {
    const last = this.connection?.lastStreamId ?? -1
    return last !== -1 && (stream.id === undefined || stream.id > last)
  }

  /** Fails the attempt with `error` and cancels its stream (RST_STREAM CANCEL), if it has one. */
  abandon (error: Error): void {
    if (this.finished) return
    const stream = this.stream
    this.fail(error)
    if (stream !== undefined && !stream.closed) stream.close(NGHTTP2_CANCEL)
  }

  /** Reports `error` to the handler, once. */
  fail (error: Error): void {
    if (this.finished) return
    this.settle()
    if (this.traced !== null) undiciRequestChannels.error.publish({ request: this.traced, error })
    this.handler.onResponseError?.(this, error)
  }

  private settle (): void {
    this.finished = true
    this.connection?.attempts.delete(this)
  }
}

/** A request as undici's request channels show one: what tracers read, and `addHeader` for their trace headers. */
interface TracedRequest {
  origin: string
  method: string
  path: string
  headers: string[]
  addHeader: (name: string, value: string) => TracedRequest
}

/**
 * Publishes the request on undici's `request:create` channel, as undici does for its own,
 * and returns what the later channels carry. A tracer's `addHeader` goes into the
 * request's headers before they are sent.
 */
function tracedRequest (options: DispatchOptions, origin: URL): TracedRequest {
  // the object the tracer's headers join
  const record = headerRecord(options)
  options.headers = record as DispatchOptions['headers']
  const headers: string[] = []
  for (const name in record) {
    const value = record[name]
    if (value !== undefined) headers.push(name, String(value))
  }
  const request: TracedRequest = {
    origin: origin.origin,
    method: options.method,
    path: options.path,
    headers,
    addHeader (name, value) {
      record[name.toLowerCase()] = value
      headers.push(name, value)
      return request
    }
  }
  undiciRequests.publish({ request })
  return request
}
