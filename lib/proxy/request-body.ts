import type { Readable } from 'node:stream'
import { Transform, type TransformCallback } from 'node:stream'
import { BodyTimeoutError, BodyTooLargeError } from '../errors'

const kGuard = Symbol('fastify-upstream.body-guard')
type Guarded = Readable & { [kGuard]?: BodyGuard }

// shared listeners (no closures per request): `this` is the client's body stream
function onPause (this: Guarded): void { this[kGuard]?.disarm() }
function onResume (this: Guarded): void { this[kGuard]?.arm() }
function expire (guard: BodyGuard): void { guard.expire() }

/**
 * A mounted route's guard on a request body streamed to the target: it fails the body
 * with 413 once it grows past `limit` bytes, and with 408 when the client sends nothing
 * for `idle` ms (NGINX's `client_body_timeout`), so a slow upload cannot hold a target's
 * connection for ever.
 *
 * Idle time counts only while the body is wanted: when the target (or the wait for a
 * connection to it) holds the stream back, the client is paused and its silence is not
 * its fault. One guard per guarded request; a route with neither limit passes the body
 * through untouched.
 */
export class BodyGuard extends Transform {
  private readonly limit: number
  private readonly idle: number
  private readonly source: Guarded
  private timer: NodeJS.Timeout | undefined = undefined
  private seen = 0

  constructor (source: Readable, limit: number | undefined, idle: number | undefined) {
    super()
    this.source = source
    this.limit = limit ?? Infinity
    this.idle = idle ?? 0
    if (this.idle > 0) {
      this.source[kGuard] = this
      source.on('pause', onPause)
      source.on('resume', onResume)
      source.on('end', onPause)
      source.on('close', onPause)
      this.arm()
    }
    source.pipe(this)
  }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.seen += chunk.length
    if (this.seen > this.limit) {
      callback(new BodyTooLargeError(this.limit))
      return
    }
    this.timer?.refresh()
    callback(null, chunk)
  }

  override _destroy (error: Error | null, callback: (error?: Error | null) => void): void {
    this.disarm()
    this.source[kGuard] = undefined
    callback(error)
  }

  arm (): void {
    if (this.timer === undefined && !this.destroyed && !this.source.readableEnded) {
      this.timer = setTimeout(expire, this.idle, this)
      this.timer.unref()
    }
  }

  disarm (): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer)
      this.timer = undefined
    }
  }

  expire (): void {
    this.timer = undefined
    this.destroy(new BodyTimeoutError(this.idle))
  }
}
