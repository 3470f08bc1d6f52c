import { performance } from 'node:perf_hooks'
import type { Duplex } from 'node:stream'
import type { Dispatcher } from 'undici'
import { countFailure, type OutlierDetector } from './outlier-detector'
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
 * given (once; a second report is ignored), so this is the single place in-flight counts
 * go down; it costs one small object per request instead of stream listeners.
 */
export class Exchange implements Handler {
  private readonly handler: Handler
  private readonly target: Target
  private readonly detector: OutlierDetector | undefined
  /** the final response status, 0 until its headers arrive */
  private status = 0
  /** undici reported the end (guards against a second report) */
  private ended = false

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
    // a 1xx (103 Early Hints, say) is not the answer: the exchange is still before headers
    if (statusCode >= 200) this.status = statusCode
    return this.handler.onHeaders?.(statusCode, headers, resume, statusText) ?? true
  }

  onData (chunk: Buffer): boolean {
    return this.handler.onData?.(chunk) ?? true
  }

  onBodySent (chunkSize: number, totalBytesSent: number): void {
    this.handler.onBodySent?.(chunkSize, totalBytesSent)
  }

  onUpgrade (statusCode: number, headers: Buffer[] | string[] | null, socket: Duplex): void {
    this.end()
    this.handler.onUpgrade?.(statusCode, headers, socket)
  }

  onComplete (trailers: string[] | null): void {
    // a status that counts as a failure was reported when it arrived (see Forwarder)
    const detector = this.detector
    if (this.end() && detector !== undefined && !detector.isFailureStatus(this.status)) detector.success(this.target)
    this.handler.onComplete?.(trailers)
  }

  onError (error: Error): void {
    const target = this.target
    const detector = this.detector
    // Before headers, the forwarder hears of the error and accounts for it (and may
    // retry). After them the answer broke off, unless its reader dropped it (undici
    // reports that as an abort, no fault of the target) or its status was counted as a
    // failure already.
    if (this.end() && this.status !== 0 && (error as { code?: string }).code !== 'UND_ERR_ABORTED' &&
      detector?.isFailureStatus(this.status) !== true) {
      countFailure(target, detector, performance.now())
    }
    this.handler.onError?.(error)
  }

  /** Takes the request out of the target's in-flight count; false if that was done already. */
  private end (): boolean {
    if (this.ended) return false
    this.ended = true
    this.target.finish()
    return true
  }
}
