import type { Readable } from 'node:stream'
import type { FastifyReplyFromHooks } from '@fastify/reply-from'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { InvalidOptionError } from '../errors'
import { closest } from '../options/validate'
import type { MirrorConfig } from '../traffic/schema'

/**
 * Per-call options of `reply.forward` (and a mount's `replyOptions`): `url`, and the
 * per-call options of `reply.from` the plugin passes through. reply-from's own retries
 * (`retriesCount`, `retryDelay`) and `getUpstream` are not among them: retries and the
 * choice of target are the plugin's. Any other key is an error at run time too.
 */
export interface ForwardOptions extends Pick<FastifyReplyFromHooks,
'queryString' | 'contentType' | 'onResponse' | 'onError' | 'body' | 'rewriteHeaders' | 'rewriteRequestHeaders' | 'method' | 'timeout'> {
  /** the path (and optional query) sent upstream; default: the path the router matched */
  url?: string
}

/** The keys of ForwardOptions (see contracts.ts), what `prepare` accepts: the compiler holds the two to each other. */
const FORWARD_OPTION_KEYS: Record<keyof ForwardOptions, true> = {
  url: true, queryString: true, contentType: true, onResponse: true, onError: true, body: true, rewriteHeaders: true, rewriteRequestHeaders: true, method: true, timeout: true
}
const FORWARD_OPTIONS = Object.keys(FORWARD_OPTION_KEYS)
const FORWARD_OPTION_SET = new Set(FORWARD_OPTIONS)

/**
 * Throws FST_UPSTREAM_INVALID_OPTION, naming `field`, for an option `prepare` does not
 * know: a misspelt `url` would otherwise proxy the request's own path without a word.
 */
export function checkForwardOptions (options: ForwardOptions, field: string): void {
  for (const key in options) {
    if (FORWARD_OPTION_SET.has(key)) continue
    const guess = closest(key, FORWARD_OPTIONS)
    const why = key === 'retriesCount' || key === 'retryDelay' || key === 'maxRetriesOn503' || key === 'getUpstream'
      ? ': retries and the choice of target are the plugin\'s own (see the pool\'s retry option)'
      : (guess === undefined ? '' : `, did you mean \`${guess}\`?`)
    throw new InvalidOptionError(`${field}.${key}: unknown option${why}`)
  }
}

/** true when `options` holds nothing but `url` (the options prepared once then serve). */
export function onlyUrl (options: ForwardOptions): boolean {
  for (const key in options) if (key !== 'url') return false
  return true
}

// reply-from's hook types are generic over every server type; the plugin works with the
// default HTTP/1 ones and hands the callbacks through untouched.
export type ReplyFromOptions = Record<string, unknown>
export interface UpstreamResponse { statusCode: number, headers: Record<string, unknown>, stream: Readable }
export type OnResponse = (request: FastifyRequest, reply: FastifyReply, res: UpstreamResponse) => void
export type OnError = (reply: FastifyReply, error: { error: Error }) => void
export type HeaderRecord = Record<string, string | string[] | number | undefined>
export type RewriteRequestHeaders = (request: FastifyRequest, headers: HeaderRecord) => HeaderRecord
export type RewriteHeaders = (headers: HeaderRecord, request: FastifyRequest) => HeaderRecord
export type RewriteLocation = (location: string, request: FastifyRequest) => string

/**
 * Options prepared once (per route, or per `reply.forward` call with options): the object
 * handed to `reply.from`, with this module's callbacks in place of the user's, which are
 * kept beside it and called from there.
 */
export interface PreparedOptions {
  readonly from: ReplyFromOptions
  readonly onResponse: OnResponse | undefined
  readonly onError: OnError | undefined
  readonly rewriteRequestHeaders: RewriteRequestHeaders | undefined
  readonly rewriteHeaders: RewriteHeaders | undefined
  /** a mount's rewrite of a `Location` header back under its prefix */
  readonly rewriteLocation: RewriteLocation | undefined
  /** a mount's own mirror (else the pool's, if any) */
  readonly mirror: MirrorConfig | undefined
}
