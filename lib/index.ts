import fp from 'fastify-plugin'
import replyFrom from '@fastify/reply-from'
import type { FastifyInstance, FastifyPluginCallback } from 'fastify'
import { UpstreamDispatcher } from './dispatcher'
import { InvalidOptionError } from './errors'
import { Forwarder, requestDecorations, type ForwardOptions } from './forward'
import { normalizeOptions, type PluginOptions } from './options'
import { UpstreamRegistry } from './registry'
import { mountRoute, routerPathOptions } from './routes'
import { mountStatus } from './status-route'

export type { ForwardOptions } from './forward'
export type {
  PluginOptions as FastifyUpstreamOptions, PoolOptions, RouteOptions, TargetOptions, BalancerOptions, TimeoutOptions, HashKeyOption,
  ActiveCheckOptions, PassiveCheckOptions, RetryOptions, TlsOptions, DiscoveryOptions, HeaderPolicyOptions
} from './options'
export type { Balancer, BalancerFactory, BalancerTarget, SelectRequest } from './balancers/types'
export type { TargetView, TargetState, TargetStatus } from './target'
export type { UpstreamPool, PoolStatus, RemoveTargetOptions } from './pool'
export type { UpstreamRegistry, RegistryStatus } from './registry'
export type { MetricsOptions } from './metrics'
export type { DiscoverySource, DiscoveredTargets } from './discovery'
export { DnsSource, DnsSrvSource } from './discovery'
export type { StatusRouteOptions } from './status-route'
export { StatusSchema, PoolStatusSchema, TargetStatusSchema } from './status'
export type { SelectEvent, ProxyErrorEvent, TargetStateEvent, RetryEvent } from './events'
export * as errors from './errors'
export { RoundRobinBalancer, RandomBalancer, LeastRequestBalancer, EwmaBalancer, ConsistentHashBalancer } from './balancers'

declare module 'fastify' {
  interface FastifyInstance {
    /** the upstream pools of fastify-upstream */
    upstreams: UpstreamRegistry
  }
  interface FastifyReply {
    /** proxies the current request to a target chosen from pool `name` */
    forward (name: string, options?: ForwardOptions): FastifyReply
  }
}

const plugin: FastifyPluginCallback<PluginOptions> = function fastifyUpstream (fastify: FastifyInstance, options, done) {
  try {
    wire(fastify, options)
  } catch (error) {
    done(error as Error)
    return
  }
  done()
}

/** Validates the options and wires the parts into the Fastify instance. */
function wire (fastify: FastifyInstance, options: PluginOptions): void {
  const config = normalizeOptions(options)
  if (fastify.hasReplyDecorator('from')) {
    throw new InvalidOptionError('@fastify/reply-from is already registered: fastify-upstream registers it with its own dispatcher')
  }

  const dispatcher = new UpstreamDispatcher()
  const registry = new UpstreamRegistry(fastify.log, config.onTargetStateChange)
  for (const [name, pool] of config.pools) registry.add(name, pool)
  const router = routerPathOptions(fastify)
  const forwarder = new Forwarder(registry, dispatcher, config, router)

  // reply-from's own retries go back to the same target: off (an empty method list turns
  // them off without a per-request callback); the plugin retries on other targets itself
  fastify.register(replyFrom, { undici: dispatcher as never, disableRequestLogging: true, retryMethods: [] })
  fastify.decorate('upstreams', registry)
  for (const [key, initial] of requestDecorations) fastify.decorateRequest(key, initial as null)
  fastify.decorateReply('forward', function forward (this, name: string, options?: ForwardOptions) {
    return forwarder.forward(this, name, options?.url, options === undefined ? forwarder.defaults : forwarder.prepare(options))
  })
  config.routes.forEach((route, i) => mountRoute(fastify, route, forwarder, i, router))
  if (config.statusRoute !== undefined) mountStatus(fastify, registry, config.statusRoute, config.metrics)
  // active checks run their first round before the server starts serving
  fastify.addHook('onReady', () => registry.start())
  fastify.addHook('onClose', () => registry.close())
}

const fastifyUpstream = fp(plugin, { fastify: '5.x', name: 'fastify-upstream' })

export { fastifyUpstream }
export default fastifyUpstream

// CommonJS: `require('fastify-upstream')` is the plugin itself, with the named exports on it
module.exports = Object.assign(fastifyUpstream, exports, { default: fastifyUpstream, fastifyUpstream })
