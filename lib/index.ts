import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyPluginCallback } from 'fastify'
import { UpstreamDispatcher } from './proxy/dispatcher'
import { AlreadyRegisteredError } from './errors'
import { onlyUrl, type ForwardOptions } from './proxy/forward-options'
import { Forwarder } from './proxy/forwarder'
import { warnOfUnknownMirrors } from './proxy/mirror'
import { requestDecorations } from './proxy/forwarding'
import { normalizeOptions } from './options/normalize'
import { PoolRegistry } from './upstream/registry'
import { EtcdPools } from './etcd/pools'
import { registerTarget, type RegisterTargetOptions, type TargetRegistration } from './etcd/register'
import type { EtcdPoolsOptions, EtcdDiscoveryOptions } from './etcd/schema'
import { SplitRegistry, type TrafficSplit } from './traffic/splits'
import type { MatchRule, MirrorOptions, SplitBranchOptions, SplitOptions } from './traffic/schema'
import { setUpReplyFrom } from './proxy/reply-from'
import { mountRoute, routerPathOptions } from './proxy/routes'
import { forwardUpgrade, kUpgrade, listenForUpgrades, type UpgradeRequest } from './proxy/websocket'
import { mountStatus } from './status/route'

// the rest of the public API, exported as members of the plugin at the end of the file
import type {
  PluginOptions, PoolOptions, RouteOptions, TargetOptions, TimeoutOptions,
  ActiveCheckOptions, PassiveCheckOptions, RetryOptions, TlsOptions, DiscoveryOptions, HeaderPolicyOptions,
  MetricsOptions, StatusRouteOptions
} from './options/types'
import type { DiscoverySource, DiscoveredTargets } from './options/schema'
import type { BalancerOptions, HashKeyOption } from './balancers/schema'
import type { Balancer, BalancerFactory, BalancerTarget, SelectRequest } from './balancers/types'
import {
  StatusSchema, PoolStatusSchema, TargetStatusSchema, SplitStatusSchema,
  type TargetView, type TargetState, type TargetStatus, type PoolStatus, type RegistryStatus, type RemoveTargetOptions, type TargetStateEvent,
  type SplitStatus, type SplitChangeEvent
} from './contracts'
import type { UpstreamPool, UpstreamRegistry } from './upstream/api'
import { DnsSource, DnsSrvSource } from './upstream/discovery'
import type { SelectEvent, ProxyErrorEvent, RetryEvent } from './events'
import type { UpstreamOutcome, UpstreamAttempt } from './proxy/outcome'
import * as errors from './errors'
import { RoundRobinBalancer, RandomBalancer, LeastRequestBalancer, EwmaBalancer, ConsistentHashBalancer } from './balancers'

declare module 'fastify' {
  interface FastifyInstance {
    /** the upstream pools of fastify-upstream */
    upstreams: UpstreamRegistry
  }
  interface FastifyReply {
    /** proxies the current request to a target chosen from pool `name` */
    forward (name: string, options?: ForwardOptions): FastifyReply
  }
  interface FastifyRequest {
    /**
     * What the upstream did for this request: its pool, and each attempt's target, status
     * or error, and time (built when read); null for a request not routed to a pool.
     */
    readonly upstream: import('./proxy/outcome').UpstreamOutcome | null
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
  // one registry per application: pools and the decorators are shared by every scope below
  if (fastify.hasDecorator('upstreams')) throw new AlreadyRegisteredError()

  const dispatcher = new UpstreamDispatcher()
  const registry = new PoolRegistry(fastify.log, config.onTargetStateChange, new SplitRegistry(fastify.log, config.onSplitChange))
  for (const [name, pool] of config.pools) registry.add(name, pool)
  for (const [name, split] of config.splits) registry.splits.add(name, split.options, split.path)
  warnOfUnknownMirrors(fastify.log, registry, config.routes)
  const router = routerPathOptions(fastify)
  // reply-from's own retries go back to the same target: off (an empty method list turns
  // them off without a per-request callback); the plugin retries on other targets itself
  const from = setUpReplyFrom(fastify, { undici: dispatcher as never, disableRequestLogging: true, retryMethods: [] })
  const forwarder = new Forwarder(registry, dispatcher, config, router, from, config.etcd !== undefined)
  const etcdPools = config.etcd === undefined ? undefined : new EtcdPools(config.etcd, registry, config.pools, fastify.log)
  fastify.decorate('upstreams', registry.api)
  for (const [key, initial] of requestDecorations) fastify.decorateRequest(key, initial as null)
  fastify.decorateReply('forward', function forward (this, name: string, options?: ForwardOptions) {
    if ((this.request.raw as UpgradeRequest)[kUpgrade] !== undefined) {
      const routed = forwarder.upgradeRoute(this.request, name)
      return routed instanceof Error ? this.send(routed) : forwardUpgrade(this, routed.pool, options?.url, routed.branch?.rewritePrefix)
    }
    // the README's own usage, `reply.forward(name, { url })`, prepares nothing per call
    const prepared = options === undefined || onlyUrl(options) ? forwarder.defaults : forwarder.prepare(options)
    return forwarder.forward(this, name, options?.url, prepared)
  })
  const websockets = config.routes.flatMap((route, i) => mountRoute(fastify, route, forwarder, i, router) ?? [])
  listenForUpgrades(fastify, websockets, () => { for (const pool of registry) pool.closeStreams() })
  mountStatus(fastify, registry, config.statusRoute, config.metrics)
  // the pools from etcd, then the first round of every pool's active checks, before the
  // server starts serving
  fastify.addHook('onReady', async () => {
    await etcdPools?.start()
    await registry.start()
  })
  fastify.addHook('onClose', async () => {
    await etcdPools?.close()
    await registry.close()
  })
}

type FastifyUpstream = FastifyPluginCallback<PluginOptions>

// A function declaration, so that the namespace below can merge with it (a const cannot).
// It keeps three parameters: Fastify calls done() itself for a plugin declaring fewer.
function fastifyUpstream (instance: FastifyInstance, options: PluginOptions, done: (error?: Error) => void): void {
  plugin(instance, options, done)
}
fp(fastifyUpstream, { fastify: '5.x', name: 'fastify-upstream' })

// The CommonJS shape of the official @fastify plugins, typed with `export =` and this
// namespace: `require()`, a default import under any module setting and the named import
// `fastifyUpstream` all give the plugin, and every other export is a property of it.
// A new public name goes here and, if it is a value, in the module.exports lines below.
declare namespace fastifyUpstream {
  export type { PluginOptions as FastifyUpstreamOptions, ForwardOptions }
  export type {
    PoolOptions, RouteOptions, TargetOptions, BalancerOptions, TimeoutOptions, HashKeyOption,
    ActiveCheckOptions, PassiveCheckOptions, RetryOptions, TlsOptions, DiscoveryOptions, HeaderPolicyOptions
  }
  export type { Balancer, BalancerFactory, BalancerTarget, SelectRequest }
  export type { TargetView, TargetState, TargetStatus }
  export type { UpstreamPool, PoolStatus, RemoveTargetOptions }
  export type { UpstreamRegistry, RegistryStatus }
  export type { MetricsOptions }
  export type { DiscoverySource, DiscoveredTargets }
  export type { StatusRouteOptions }
  export type { SplitOptions, SplitBranchOptions, MatchRule, MirrorOptions, TrafficSplit, SplitStatus, SplitChangeEvent }
  export type { EtcdPoolsOptions, EtcdDiscoveryOptions, RegisterTargetOptions, TargetRegistration }
  export type { SelectEvent, ProxyErrorEvent, TargetStateEvent, RetryEvent }
  export type { UpstreamOutcome, UpstreamAttempt }
  export { errors, DnsSource, DnsSrvSource, StatusSchema, PoolStatusSchema, TargetStatusSchema, SplitStatusSchema }
  export { RoundRobinBalancer, RandomBalancer, LeastRequestBalancer, EwmaBalancer, ConsistentHashBalancer }
  export { registerTarget }
  export const fastifyUpstream: FastifyUpstream
  export { fastifyUpstream as default }
}

// Set here as well as where tsc puts `export =` (last), so that the values below land on
// the plugin. One `module.exports.name =` line per value: Node's ES module loader reads a
// CommonJS file's named exports from lines of this form.
module.exports = fastifyUpstream
module.exports.default = fastifyUpstream
module.exports.fastifyUpstream = fastifyUpstream
module.exports.errors = errors
module.exports.DnsSource = DnsSource
module.exports.DnsSrvSource = DnsSrvSource
module.exports.StatusSchema = StatusSchema
module.exports.PoolStatusSchema = PoolStatusSchema
module.exports.TargetStatusSchema = TargetStatusSchema
module.exports.SplitStatusSchema = SplitStatusSchema
module.exports.RoundRobinBalancer = RoundRobinBalancer
module.exports.RandomBalancer = RandomBalancer
module.exports.LeastRequestBalancer = LeastRequestBalancer
module.exports.EwmaBalancer = EwmaBalancer
module.exports.ConsistentHashBalancer = ConsistentHashBalancer
module.exports.registerTarget = registerTarget

export = fastifyUpstream
