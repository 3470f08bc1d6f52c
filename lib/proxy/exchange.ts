import type { IncomingHttpHeaders } from 'node:http'
import { performance } from 'node:perf_hooks'
import type { Duplex } from 'node:stream'
import type { Dispatcher } from 'undici'
import { headerPairs } from '../header-syntax'
import { countFailure, type OutlierDetector } from '../health/outlier-detector'
import type { Target } from '../upstream/target'
import type { Forwarding } from './forwarding'
import { passTrailers } from './header-policy'
import { targetsFault } from './upstream-error'

type Handler = Dispatcher.DispatchHandler
type Controller = Dispatcher.DispatchController

/**
 * The deprecated handler calls, as undici 7's own handlers implement them (the one
 * `dispatcher.request()` builds for reply-from among them).
 */
interface LegacyHandler {
  onConnect?: (abort: (reason?: Error) => void, context: unknown) => void
  onHeaders?: (statusCode: number, headers: Buffer[] | string[], resume: () => void, statusText: string) => boolean | undefined
  onData?: (chunk: Buffer) => boolean | undefined
  onComplete?: (trailers: Buffer[] | string[]) => void
  onError?: (error: Error) => void
  onUpgrade?: (statusCode: number, headers: Buffer[] | string[], socket: Duplex) => void
}

/**
 * One attempt of a request at a target, seen from undici: it wraps the handler of the
 * request sent, and is the one place that records what the attempt did. Made when the
 * attempt is dispatched, it puts the request in the target's in-flight count; on the
 * response headers it records the status and the latency (a status that counts as a
 * failure counts at once); when undici reports the exchange over (the response body read
 * to its end, an error, or the body dropped by its reader) it takes the request out of
 * the in-flight count and tells passive checks how it went. The forwarder reads the
 * record to decide between a retry and the answer; it counts nothing itself.
 *
 * The exchange ends when the target's part is done, as Envoy counts active requests: not
 * when a slow client has finished reading. undici reports the end of every request it was
 * given (once; a second report is ignored), so in-flight counts go down in one place; it
 * costs one small object per attempt instead of stream listeners.
 *
 * It speaks undici's controller API (`onRequestStart`, `onResponseStart`...), the only one
 * left in undici 8. The handler it wraps may speak either: one with `onRequestStart` gets
 * every call as it came; one with the deprecated calls (`onConnect`, `onHeaders`...), as
 * undici 7's `request()` builds, gets them translated here (the `relay` functions below,
 * which a Hedge shares) rather than through undici's `WrapHandler`, which would add an
 * object per request and encode the headers once more.
 *
 * A hedged request (see hedge.ts) has one Exchange per arm, each wrapping an arm of the
 * Hedge rather than reply-from's handler: each arm is an attempt of its own, recorded here
 * like any other.
 */
export class Exchange implements Handler {
  private readonly handler: Handler
  private readonly forwarding: Forwarding
  private readonly target: Target
  private readonly detector: OutlierDetector | undefined
  /** the wrapped handler has only the deprecated calls (see isLegacy) */
  private readonly legacy: boolean
  /** when the attempt was sent (performance.now() ms; read by a Hedge) */
  readonly start: number
  /** the final response status, 0 until its headers arrive (written here only; read by a Hedge) */
  status = 0
  /** undici reported the end (guards against a second report) */
  private ended = false
  /** the answer was complete before undici said so (a 204 or 304): its later report is not passed on */
  private complete = false
  /** undici's controller of the attempt, from its start (see cancel) */
  private controller: Controller | null = null

  /**
   * An attempt of `forwarding`'s request at `target` (the request's current target unless
   * a Hedge sends its second arm elsewhere), which becomes the request's current exchange.
   */
  constructor (handler: Handler, forwarding: Forwarding, target: Target = forwarding.target as Target) {
    this.handler = handler
    this.forwarding = forwarding
    this.target = target
    this.detector = forwarding.pool.detector
    this.legacy = isLegacy(handler)
    this.start = performance.now()
    forwarding.exchange = this
    target.start()
  }

  onRequestStart (controller: Controller, context: unknown): void {
    this.controller = controller
    relayRequestStart(this.handler, this.legacy, controller, context)
  }

  /** Aborts the attempt with `reason` (reported as its failure); false when it is over or not started. */
  cancel (reason: Error): boolean {
    if (this.ended || this.controller === null) return false
    this.controller.abort(reason)
    return true
  }

  onResponseStarted (): void {
    this.handler.onResponseStarted?.()
  }

  onResponseStart (controller: Controller, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    // a 1xx (103 Early Hints, say) is not the answer: the exchange is still before headers
    if (statusCode >= 200) this.answered(statusCode)
    relayResponseStart(this.handler, this.legacy, controller, statusCode, headers, statusMessage)
    // A 204 or 304 has no body, whatever its Content-Length says (RFC 9110 §8.6 lets a 304
    // carry the length the full answer would have): undici would fail the exchange for
    // the body that never comes. It is complete with its headers.
    if ((statusCode === 204 || statusCode === 304) && headers['content-length'] !== undefined && !this.complete) {
      this.complete = true
      this.onResponseEnd(controller, {})
    }
  }

  onResponseData (controller: Controller, chunk: Buffer): void {
    relayResponseData(this.handler, this.legacy, controller, chunk)
  }

  onRequestUpgrade (controller: Controller, statusCode: number, headers: IncomingHttpHeaders, socket: Duplex): void {
    this.end()
    relayRequestUpgrade(this.handler, this.legacy, controller, statusCode, headers, socket)
  }

  onResponseEnd (controller: Controller, trailers: IncomingHttpHeaders): void {
    if (this.ended && this.complete) return
    // a status that counts as a failure was counted when it arrived (see answered)
    const detector = this.detector
    if (this.end() && detector !== undefined && !detector.isFailureStatus(this.status)) detector.success(this.target)
    // before the body's end reaches the client: the trailers go out with it (an answer
    // dropped for a retry is no longer the request's exchange)
    const forwarding = this.forwarding
    if (forwarding.trailersTo !== null && forwarding.exchange === this) passTrailers(forwarding.trailersTo, trailers)
    relayResponseEnd(this.handler, this.legacy, controller, trailers)
  }

  onResponseError (controller: Controller, error: Error): void {
    // undici's length check of a bodiless answer already passed on as complete
    if (this.complete) return
    const detector = this.detector
    const now = performance.now()
    if (this.end()) {
      if (this.status === 0) {
        // before headers: a failure of the target's, unless the client's body or a header
        // the gateway built was at fault (then no target would have done better), or a
        // hedge cancelled the attempt (see targetsFault)
        if (this.forwarding.exchange === this) this.forwarding.time = now - this.start
        if (targetsFault(error)) countFailure(this.target, detector, now)
      } else if (targetsFault(error) && (error as { code?: string }).code !== 'UND_ERR_ABORTED' && detector?.isFailureStatus(this.status) !== true) {
        // after them the answer broke off, unless its reader dropped it (undici reports
        // that as an abort), the call's deadline cut it, or a hedge did (no fault of the
        // target's: see targetsFault), or its status was counted already
        countFailure(this.target, detector, now)
      }
    }
    relayResponseError(this.handler, this.legacy, controller, error)
  }

  /** The final response headers arrived: the attempt's status and latency, and a failure status counted at once. */
  private answered (status: number): void {
    const now = performance.now()
    const elapsed = now - this.start
    this.status = status
    this.target.observeLatency(elapsed, now)
    const forwarding = this.forwarding
    if (forwarding.exchange === this) {
      forwarding.status = status
      forwarding.time = elapsed
    }
    const detector = this.detector
    if (detector !== undefined && detector.isFailureStatus(status)) countFailure(this.target, detector, now)
  }

  /** Takes the request out of the target's in-flight count; false if that was done already. */
  private end (): boolean {
    if (this.ended) return false
    this.ended = true
    this.target.finish()
    return true
  }
}

// The calls as the wrapped handler takes them: passed on as they came to a handler with
// the controller API; translated to the deprecated calls for one without (`legacy`).
// Shared functions, not methods, so that a Hedge relays its winning arm's calls to
// reply-from's handler through the same translation, with its own controller.

/** true when `handler` has only the deprecated calls (undici's own test: no onRequestStart) */
export function isLegacy (handler: Handler): boolean {
  return typeof handler.onRequestStart !== 'function'
}

export function relayRequestStart (handler: Handler, legacy: boolean, controller: Controller, context: unknown): void {
  if (!legacy) {
    handler.onRequestStart?.(controller, context)
    return
  }
  // the deprecated handler calls abort() detached from any object, or with no reason
  ;(handler as LegacyHandler).onConnect?.((reason) => { controller.abort(reason as Error) }, context)
}

export function relayResponseStart (handler: Handler, legacy: boolean, controller: Controller, statusCode: number, headers: IncomingHttpHeaders, statusMessage: string | undefined): void {
  if (!legacy) {
    handler.onResponseStart?.(controller, statusCode, headers, statusMessage)
    return
  }
  // a deprecated handler asks to stop reading by returning false, and to go on by resume()
  if ((handler as LegacyHandler).onHeaders?.(statusCode, raw(controller.rawHeaders, headers), () => { controller.resume() }, statusMessage ?? '') === false) {
    controller.pause()
  }
}

export function relayResponseData (handler: Handler, legacy: boolean, controller: Controller, chunk: Buffer): void {
  if (!legacy) {
    handler.onResponseData?.(controller, chunk)
    return
  }
  if ((handler as LegacyHandler).onData?.(chunk) === false) controller.pause()
}

export function relayRequestUpgrade (handler: Handler, legacy: boolean, controller: Controller, statusCode: number, headers: IncomingHttpHeaders, socket: Duplex): void {
  if (!legacy) {
    handler.onRequestUpgrade?.(controller, statusCode, headers, socket)
    return
  }
  ;(handler as LegacyHandler).onUpgrade?.(statusCode, raw(controller.rawHeaders, headers), socket)
}

export function relayResponseEnd (handler: Handler, legacy: boolean, controller: Controller, trailers: IncomingHttpHeaders): void {
  if (!legacy) {
    handler.onResponseEnd?.(controller, trailers)
    return
  }
  ;(handler as LegacyHandler).onComplete?.(raw(controller.rawTrailers, trailers))
}

export function relayResponseError (handler: Handler, legacy: boolean, controller: Controller, error: Error): void {
  if (!legacy) {
    handler.onResponseError?.(controller, error)
    return
  }
  ;(handler as LegacyHandler).onError?.(error)
}

/**
 * Headers or trailers as the deprecated calls take them: the raw list undici keeps on the
 * controller (undici 7 and 8 both do), else one rebuilt from the parsed object.
 */
function raw (list: Controller['rawHeaders'], parsed: IncomingHttpHeaders | null | undefined): Buffer[] | string[] {
  if (Array.isArray(list)) return list
  return parsed == null ? [] : headerPairs(parsed)
}
