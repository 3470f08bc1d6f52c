import { Readable } from 'node:stream'

/** The most of a request body kept to send it again after a target read it (bytes). */
export const REPLAY_LIMIT = 1_048_576

/**
 * The client's request body stream, shared by the attempts of one request. Each attempt
 * gets its own stream (`attempt()`), which reads the client's only when undici starts
 * sending: undici destroys the body of a request that fails, even when it failed before
 * connecting, and the client's stream stays untouched for the next attempt.
 *
 * When a retry may follow a request the target has read (an idempotent method, or a
 * request with an Idempotency-Key), the body is also recorded as it streams, up to
 * REPLAY_LIMIT: the next attempt sends what was recorded, then the rest as it arrives.
 */
export class RequestBody {
  private readonly source: Readable
  /** what was read of the client's body so far, when recording (null when not) */
  private readonly recorded: Buffer[] | null
  private size = 0
  private overflowed = false
  private ended = false
  private started = false
  /** the attempt the client's body streams to now */
  private current: AttemptBody | null = null

  constructor (source: Readable, record: boolean) {
    this.source = source
    this.recorded = record ? [] : null
  }

  /** A stream of the whole body for the next attempt. */
  attempt (): Readable {
    return new AttemptBody(this)
  }

  /** true when another attempt can send the whole body again */
  replayable (): boolean {
    if (!this.started) return !this.source.destroyed
    if (this.recorded === null || this.overflowed) return false
    // all of it recorded (the client's stream may be gone), or the rest still to come
    return this.ended || !this.source.destroyed
  }

  /** `body` starts reading: what was recorded first, then the client's stream. */
  read (body: AttemptBody): void {
    if (this.current === body) {
      this.source.resume()
      return
    }
    this.current = body
    if (this.recorded !== null) for (const chunk of this.recorded) body.push(chunk)
    if (this.ended) {
      body.push(null)
      return
    }
    if (!this.started) {
      this.started = true
      this.source.on('data', (chunk: Buffer) => this.data(chunk))
      this.source.once('end', () => this.end())
      this.source.once('error', (error) => this.current?.destroy(error))
    }
    this.source.resume()
  }

  /** `body` was destroyed (its attempt ended): a body that can be replayed stays for the next one. */
  release (body: AttemptBody, error: Error | null): void {
    if (this.current !== body) return
    this.current = null
    if (this.recorded !== null && !this.overflowed) this.source.pause()
    else this.source.destroy(error ?? undefined)
  }

  private data (chunk: Buffer): void {
    if (this.recorded !== null && !this.overflowed) {
      this.size += chunk.length
      if (this.size > REPLAY_LIMIT) {
        this.overflowed = true
        this.recorded.length = 0
      } else {
        this.recorded.push(chunk)
      }
    }
    const current = this.current
    if (current === null) this.source.pause()
    else if (!current.push(chunk)) this.source.pause()
  }

  private end (): void {
    this.ended = true
    this.current?.push(null)
  }
}

/** One attempt's view of the request body (see RequestBody). */
class AttemptBody extends Readable {
  private readonly body: RequestBody
  private reading = false

  constructor (body: RequestBody) {
    super()
    this.body = body
  }

  override _read (): void {
    this.reading = true
    this.body.read(this)
  }

  override _destroy (error: Error | null, callback: (error?: Error | null) => void): void {
    // a body that was never read stays whole for the next attempt
    if (this.reading) this.body.release(this, error)
    callback(error)
  }
}
