import { performance } from 'node:perf_hooks'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { FastifyReplyFromHooks } from '@fastify/reply-from'
import { BadGatewayError, ConnectError, NoTargetError, TimeoutError, UnknownPoolError } from './errors'
import { channels, type ProxyErrorEvent } from './events'
import type { PluginOptions } from './options'
import type { UpstreamPool } from './pool'
import type { UpstreamRegistry } from './registry'
import type { Target } from './target'

/** Per-call options of `reply.forward`: `url` plus the per-call options of `reply.from`. */
export interface ForwardOptions extends FastifyReplyFromHooks {
  /** the path (and optional query) sent upstream; default: the request's own path */
  url?: string
  [option: string]: unknown
}

// reply-from's hook types are generic over every server type; the plugin works with the
// default HTTP/1 ones and hands the callbacks through untouched.
type ReplyFromOptions = Record<string, unknown>
type UpstreamResponse = { statusCode: number, headers: Record<string, unknown>, stream: NodeJS.ReadableStream }
type OnResponse = (request: FastifyRequest, reply: FastifyReply, res: UpstreamResponse) => void
type OnError = (reply: FastifyReply, error: { error: Error }) => void

/**
 * Options prepared once (per route, or per `reply.forward` call with options): the object
 * handed to `reply.from`, with this module's callbacks in place of the user's, which are
 * kept beside it and called from there.
 */
export interface PreparedOptions {
  readonly from: ReplyFromOptions
  readonly onResponse: OnResponse | undefined
  readonly onError: OnError | undefined
}

// Per-request state lives in request decorations declared at register (stable shapes,
// no per-request closures): the target, when the request left, the prepared options.
export const kTarget = Symbol('fastify-upstream.target')
export const kPool = Symbol('fastify-upstream.pool')
export const kStart = Symbol('fastify-upstream.start')
export const kPrepared = Symbol('fastify-upstream.prepared')

interface ForwardState {
  [kTarget]: Target | null
  [kPool]: UpstreamPool | null
  [kStart]: number
  [kPrepared]: PreparedOptions | null
}

type StatefulRequest = FastifyRequest & ForwardState

type Hooks = Pick<PluginOptions, 'onSelect' | 'onProxyError'>

// Error codes of the connection phase: the target was never reached.
const CONNECT_CODES = new Set([
  'ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT'
])
const TLS_CODE = /^(ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO|HOSTNAME_MISMATCH)/

/** Maps what reply-from or undici reported to one of the plugin's stable errors. */
export function upstreamError (error: Error & { cause?: unknown }): Error & { code: string, statusCode: number } {
  const cause = (error.cause ?? error) as Error & { code?: string }
  const code = cause.code ?? ''
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return new TimeoutError('no connection within the connect timeout', { cause })
  if (code === 'UND_ERR_HEADERS_TIMEOUT') return new TimeoutError('no response within the response timeout', { cause })
  if (code === 'UND_ERR_BODY_TIMEOUT') return new TimeoutError('the response body stalled past the idle timeout', { cause })
  if (CONNECT_CODES.has(code) || TLS_CODE.test(code)) return new ConnectError(code, { cause })
  return new BadGatewayError(code !== '' ? code : cause.message, { cause })
}

function noRetry (): null {
  return null
}

/** The raw response carries its target until it closes. */
type RawResponse = FastifyReply['raw'] & { [kTarget]?: Target }

// A shared listener, not a closure per request: a request stays in flight until the
// response to the client has closed, whether it finished, failed or was aborted.
function onClientResponseClosed (this: RawResponse): void {
  const target = this[kTarget]
  if (target !== undefined) {
    this[kTarget] = undefined
    target.finish()
  }
}

/** Glue to `@fastify/reply-from`: selects a target, proxies, and accounts for the outcome. */
export class Forwarder {
  private readonly registry: UpstreamRegistry
  private readonly hooks: Hooks
  readonly defaults: PreparedOptions

  constructor (registry: UpstreamRegistry, hooks: Hooks) {
    this.registry = registry
    this.hooks = hooks
    this.defaults = this.prepare(undefined)
  }

  prepare (options: ForwardOptions | undefined): PreparedOptions {
    const from: ReplyFromOptions = {
      ...options,
      onResponse: this.onResponse,
      onError: this.onError,
      // retries and failover are the plugin's own: reply-from would retry the same target
      retryDelay: noRetry
    }
    delete from.url
    return Object.freeze({
      from: Object.freeze(from),
      onResponse: options?.onResponse as OnResponse | undefined,
      onError: options?.onError as OnError | undefined
    })
  }

  /**
   * Proxies the request of `reply` to a target of pool `name`; `path` is the path (and
   * optional query) to send, by default the request's own path.
   */
  forward (reply: FastifyReply, name: string, path: string | undefined, prepared: PreparedOptions): FastifyReply {
    const request = reply.request as StatefulRequest
    const pool = this.registry.get(name)
    if (pool === undefined) return reply.send(new UnknownPoolError(name))
    const target = pool.pick(request)
    if (target === undefined) {
      const after = pool.retryAfter()
      if (after !== undefined) reply.header('retry-after', after)
      return reply.send(new NoTargetError(name))
    }
    if (this.hooks.onSelect !== undefined || channels.select.hasSubscribers) {
      const event = { pool: name, target: pool.viewOf(target), request }
      this.hooks.onSelect?.(event)
      channels.select.publish(event)
    }
    if (path === undefined) {
      const url = request.raw.url as string
      const query = url.indexOf('?')
      path = query === -1 ? url : url.slice(0, query)
    }
    request[kTarget] = target
    request[kPool] = pool
    request[kPrepared] = prepared
    request[kStart] = performance.now()
    target.start()
    const raw = reply.raw as RawResponse
    raw[kTarget] = target
    raw.on('close', onClientResponseClosed)
    return reply.from(target.origin + target.basePath + path, prepared.from as never)
  }

  private readonly onResponse = (request: FastifyRequest, reply: FastifyReply, res: UpstreamResponse): void => {
    const state = request as StatefulRequest
    const target = state[kTarget] as Target
    const now = performance.now()
    target.observeLatency(now - state[kStart], now)
    const user = (state[kPrepared] as PreparedOptions).onResponse
    if (user !== undefined) user(request, reply, res)
    else reply.send(res.stream)
  }

  private readonly onError = (reply: FastifyReply, { error }: { error: Error }): void => {
    const request = reply.request as StatefulRequest
    const target = request[kTarget] as Target
    const pool = request[kPool] as UpstreamPool
    target.failures++
    const mapped = upstreamError(error)
    if (this.hooks.onProxyError !== undefined || channels.proxyError.hasSubscribers) {
      const event: ProxyErrorEvent = { pool: pool.name, target: pool.viewOf(target), request, error: mapped }
      this.hooks.onProxyError?.(event)
      channels.proxyError.publish(event)
    }
    const user = (request[kPrepared] as PreparedOptions).onError
    if (user !== undefined) user(reply, { error: mapped })
    else reply.send(mapped)
  }
}
