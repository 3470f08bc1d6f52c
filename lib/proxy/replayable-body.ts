import { Readable } from 'node:stream'

/** The most of a request body kept to send it again after a target read it (bytes). */
export const REPLAY_LIMIT = 1_048_576

/** Who wants a copy of the whole body once the client has sent it (a mirrored copy, see mirror.ts). */
export interface BodyCopy {
  /** the largest body it takes (bytes) */
  readonly limit: number
  /**
   * Called once: with the whole body when the client's stream ended while an attempt was
   * reading it, or with null when the body cannot be had (larger than `limit`, failed, or
   * ended with no attempt reading: the rest was dropped, not sent).
   */
  bodyRecorded (body: Buffer | null): void
}

/**
 * The client's request body stream, shared by the attempts of one request. Each attempt
 * gets its own stream (`attempt()`), which reads the client's only when undici starts
 * sending: undici destroys the body of a request that fails, even when it failed before
 * connecting, and the client's stream stays untouched for the next attempt.
 *
 * When a retry may follow a request the target has read (an idempotent method, or a
 * request with an Idempotency-Key), the body is also recorded as it streams, up to
 * REPLAY_LIMIT: the next attempt sends what was recorded, then the rest as it arrives.
 * A mirrored copy (`copyTo`) has it recorded too, up to the copy's own limit, and gets
 * it when it has all streamed to an attempt; the attempts see no difference.
 */
export class RequestBody {
  private readonly source: Readable
  /** record for another attempt (a retry may follow a target's reading the body) */
  private readonly replay: boolean
  /** what was read of the client's body so far, when recording (null when not) */
  private recorded: Buffer[] | null
  /** the most bytes recorded: REPLAY_LIMIT for a replay, or a copy's larger limit */
  private limit: number
  /** bytes read of the client's body so far */
  private size = 0
  private ended = false
  private started = false
  /** the attempt the client's body streams to now */
  private current: AttemptBody | null = null
  /** the copy waiting for the whole body, if any */
  private copy: BodyCopy | null = null

  constructor (source: Readable, record: boolean) {
    this.source = source
    this.replay = record
    this.recorded = record ? [] : null
    this.limit = record ? REPLAY_LIMIT : 0
  }

  /** Records the body for `copy` as well, up to its limit (called before the first attempt reads). */
  copyTo (copy: BodyCopy): void {
    this.copy = copy
    this.recorded ??= []
    if (copy.limit > this.limit) this.limit = copy.limit
  }

  /** A stream of the whole body for the next attempt. */
  attempt (): Readable {
    return new AttemptBody(this)
  }

  /** true when another attempt can send the whole body again */
  replayable (): boolean {
    if (!this.started) return !this.source.destroyed
    if (!this.replay || this.size > REPLAY_LIMIT) return false
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
      this.source.once('error', (error) => {
        this.handOver(null)
        this.current?.destroy(error)
      })
    }
    this.source.resume()
  }

  /** `body` was destroyed (its attempt ended): a body that can be replayed stays for the next one. */
  release (body: AttemptBody, error: Error | null): void {
    if (this.current !== body) return
    this.current = null
    if (this.replay && this.size <= REPLAY_LIMIT) this.source.pause()
    else this.source.destroy(error ?? undefined)
  }

  private data (chunk: Buffer): void {
    this.size += chunk.length
    const recorded = this.recorded
    if (recorded !== null) {
      if (this.size <= this.limit) recorded.push(chunk)
      // past every limit: nothing more is kept, and nothing kept is of use
      else if (recorded.length > 0) recorded.length = 0
    }
    if (this.copy !== null && this.size > this.copy.limit) this.handOver(null)
    const current = this.current
    if (current === null) this.source.pause()
    else if (!current.push(chunk)) this.source.pause()
  }

  private end (): void {
    this.ended = true
    const current = this.current
    current?.push(null)
    // whole only when it streamed to an attempt: with none reading, the client's stream was
    // being dropped (Node discards the rest of a request whose answer has been sent)
    if (this.copy !== null) this.handOver(current !== null && this.recorded !== null ? Buffer.concat(this.recorded, this.size) : null)
  }

  /** Gives the copy its body (or null), once; what only the copy needed is let go. */
  private handOver (body: Buffer | null): void {
    const copy = this.copy
    if (copy === null) return
    this.copy = null
    if (!this.replay || this.size > REPLAY_LIMIT) this.recorded = null
    copy.bodyRecorded(body)
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
