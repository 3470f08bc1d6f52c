import { performance } from 'node:perf_hooks'
import type { Duplex } from 'node:stream'
import type { Dispatcher } from 'undici'
import type { OutlierDetector } from './outlier-detector'
import type { Target } from './target'

type Handler = Dispatcher.DispatchHandler

/**
 * One exchange with a target, seen from undici: wraps the handler of the request sent to
 * it, and when undici reports the exchange over (the response body read to its end, an
 * error, or the body dropped by its reader) takes the request out of the target's
 * in-flight count and tells passive checks how it went.
 *
 * The exchange ends when the target's part is done, as Envoy counts active requests: not
 * when a slow client has finished reading. undici reports the end of every request it was
 * given exactly once, so this is the single place in-flight counts go down; it costs one
 * small object per request instead of stream listeners.
 */
export class Exchange implements Handler {
  private readonly handler: Handler
  private readonly target: Target
  private readonly detector: OutlierDetector | undefined
  /** the response status, 0 until headers arrive */
  private status = 0

  constructor (handler: Handler, target: Target, detector: OutlierDetector | undefined) {
    this.handler = handler
    this.target = target
    this.detector = detector
  }

  onConnect (abort: (err?: Error) => void): void {
    this.handler.onConnect?.(abort)
  }

  onResponseStarted (): void {
    this.handler.onResponseStarted?.()
  }

  onHeaders (statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    // a 1xx is not the answer; the final status replaces it
    this.status = statusCode
    return this.handler.onHeaders?.(statusCode, headers, resume, statusText) ?? true
  }

  onData (chunk: Buffer): boolean {
    return this.handler.onData?.(chunk) ?? true
  }

  onBodySent (chunkSize: number, totalBytesSent: number): void {
    this.handler.onBodySent?.(chunkSize, totalBytesSent)
  }

  onUpgrade (statusCode: number, headers: Buffer[] | string[] | null, socket: Duplex): void {
    this.target.finish()
    this.handler.onUpgrade?.(statusCode, headers, socket)
  }

  onComplete (trailers: string[] | null): void {
    this.target.finish()
    // a status that counts as a failure was reported when it arrived (see Forwarder)
    const detector = this.detector
    if (detector !== undefined && !detector.isFailureStatus(this.status)) detector.success(this.target)
    this.handler.onComplete?.(trailers)
  }

  onError (error: Error): void {
    const target = this.target
    target.finish()
    // Before headers, the forwarder hears of the error and accounts for it (and may
    // retry). After them the answer broke off, unless its reader dropped it: undici
    // reports that as an abort, which is no fault of the target.
    if (this.status !== 0 && (error as { code?: string }).code !== 'UND_ERR_ABORTED') {
      target.failures++
      this.detector?.failure(target, performance.now())
    }
    this.handler.onError?.(error)
  }
}
