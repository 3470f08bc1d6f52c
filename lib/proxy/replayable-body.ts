import { Readable } from 'node:stream'

/**
 * A request body handed to one attempt. undici destroys the body of a request that fails,
 * even when it failed before connecting; this wrapper reads the client's stream only when
 * undici starts sending, so after a refused connection the client's stream is untouched
 * and the next attempt can send it whole.
 */
export class LazyBody extends Readable {
  private readonly source: Readable
  private started = false

  constructor (source: Readable) {
    super()
    this.source = source
  }

  override _read (): void {
    if (this.started) {
      this.source.resume()
      return
    }
    this.started = true
    this.source.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) this.source.pause()
    })
    this.source.once('end', () => this.push(null))
    this.source.once('error', (error) => this.destroy(error))
  }

  override _destroy (error: Error | null, callback: (error?: Error | null) => void): void {
    // a body that was never read stays whole for the next attempt
    if (this.started) this.source.destroy(error ?? undefined)
    callback(error)
  }
}
