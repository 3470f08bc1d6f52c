import replyFrom, { type FastifyReplyFromOptions } from '@fastify/reply-from'
import type { FastifyInstance, FastifyReply } from 'fastify'

/** reply-from's `reply.from`, called with the reply as `this`. */
export type ReplyFrom = (this: FastifyReply, source: string, options: unknown) => FastifyReply

/**
 * Sets up `@fastify/reply-from` for the plugin's own use and returns its `from` function,
 * without decorating `reply.from`. The application may then register reply-from itself,
 * before or after the plugin, in any scope, for its own uses, and neither shadows the
 * other: the plugin never looks `from` up on a reply.
 *
 * reply-from's plugin function is given a host with the calls it makes (decorateReply,
 * addHook, onClose, hasPlugin, log); its `from` decorator is kept instead of set. Its
 * hooks (an onReady warning, the onClose that closes its dispatcher) land on `fastify`.
 */
export function setUpReplyFrom (fastify: FastifyInstance, options: FastifyReplyFromOptions): ReplyFrom {
  let from: ReplyFrom | undefined
  let failure: Error | undefined
  const host = {
    decorateReply (name: string, value: unknown): void {
      if (name === 'from') from = value as ReplyFrom
    },
    addHook: fastify.addHook.bind(fastify),
    onClose: (hook: (instance: FastifyInstance, done: () => void) => void): void => { fastify.addHook('onClose', hook) },
    hasPlugin: fastify.hasPlugin.bind(fastify),
    log: fastify.log
  }
  const plugin = replyFrom as unknown as (host: unknown, options: FastifyReplyFromOptions, done: (error?: Error) => void) => void
  plugin(host, options, (error) => { failure = error })
  if (failure !== undefined) throw failure
  if (from === undefined) throw new Error('@fastify/reply-from did not provide reply.from: an incompatible version is installed')
  return from
}
