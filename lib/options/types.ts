import type { Static } from '@sinclair/typebox'
import type { RouteShorthandOptions } from 'fastify'
import type { Registry } from 'prom-client'
import type { SplitChangeEvent, TargetStateEvent } from '../contracts'
import type { SplitOptions } from '../traffic/schema'
import type { EtcdPoolsOptions } from '../etcd/schema'
import type { ProxyErrorEvent, RetryEvent, SelectEvent } from '../events'
import type { ForwardOptions } from '../proxy/forward-options'
import type {
  ActiveCheckSchema, DiscoverySchema, HeaderPolicySchema, PassiveCheckSchema, PoolSchema, RetrySchema,
  RouteSchema, StatusRouteSchema, TargetSchema, TimeoutSchema, TlsSchema
} from './schema'

/**
 * The public types of the options, derived from their schemas (see schema.ts). Only
 * what a schema cannot say is written here: that a pool needs `targets` or `discovery`,
 * and which Fastify route options a mount and the status route take, typed as Fastify
 * types them.
 */

export type TargetOptions = Static<typeof TargetSchema>
export type TimeoutOptions = Static<typeof TimeoutSchema>
export type ActiveCheckOptions = Static<typeof ActiveCheckSchema>
export type PassiveCheckOptions = Static<typeof PassiveCheckSchema>
export type RetryOptions = Static<typeof RetrySchema>
export type TlsOptions = Static<typeof TlsSchema>
export type DiscoveryOptions = Static<typeof DiscoverySchema>
export type HeaderPolicyOptions = Static<typeof HeaderPolicySchema>

export type PoolOptions = Omit<Static<typeof PoolSchema>, 'targets' | 'discovery'> & ({
  /** the targets; may be empty and filled at run time */
  targets: TargetOptions[]
  /** where targets come from at run time: DNS A/AAAA, DNS SRV, or a source of your own */
  discovery?: DiscoveryOptions
} | {
  /** targets besides the discovered ones (default none) */
  targets?: TargetOptions[]
  /** where targets come from at run time: DNS A/AAAA, DNS SRV, or a source of your own */
  discovery: DiscoveryOptions
})

/** The plugin's own route options; the others are Fastify's route options, typed as Fastify types them. */
type OwnRouteKeys = 'prefix' | 'upstream' | 'rewritePrefix' | 'methods' | 'replyOptions' | 'strictPaths' | 'bodyTimeout' | 'websocket' | 'mirror'
export type RouteOptions = Pick<Static<typeof RouteSchema>, Exclude<OwnRouteKeys, 'replyOptions'>> &
Pick<RouteShorthandOptions, Exclude<keyof Static<typeof RouteSchema>, OwnRouteKeys>> & {
  /** per-call options of `reply.from` for every request of the mount (as `reply.forward` takes them, without `url`) */
  replyOptions?: Omit<ForwardOptions, 'url'>
}

/**
 * The status route: `url`, and Fastify's own route options for the keys the plugin
 * accepts (hooks such as `onRequest`, `config`, `logLevel`, `constraints`, ...), typed as
 * Fastify types them. The keys come from the schema that validates them.
 */
export interface StatusRouteOptions extends Pick<RouteShorthandOptions, Exclude<keyof Static<typeof StatusRouteSchema>, 'url'>> {
  /** where the status is served; metrics at `${url}/metrics` */
  url: string
}

export interface MetricsOptions {
  /**
   * the prom-client registry to add the metrics to, with or without a status route
   * (default: a registry of their own, served by the status route only)
   */
  registry?: Registry
  /** metric name prefix (default `fastify_upstream_`) */
  prefix?: string
}

export interface PluginOptions {
  /** named pools of targets */
  upstreams?: Record<string, PoolOptions>
  /** prefix mounts proxied to a pool or a split */
  routes?: RouteOptions[]
  /** named splits of traffic between pools: a mount's `upstream` or `reply.forward` may name one */
  splits?: Record<string, SplitOptions>
  /** called after each selection (also on diagnostics channel `fastify-upstream:select`) */
  onSelect?: (event: SelectEvent) => void
  /** called when proxying fails (also on diagnostics channel `fastify-upstream:proxy-error`) */
  onProxyError?: (event: ProxyErrorEvent) => void
  /** called when a target changes state (also on diagnostics channel `fastify-upstream:target-state`) */
  onTargetStateChange?: (event: TargetStateEvent) => void
  /** called before a failed request is tried again (also on diagnostics channel `fastify-upstream:retry`) */
  onRetry?: (event: RetryEvent) => void
  /** pools from etcd: the key `<prefix><name>` holds pool `name`'s options as JSON, watched */
  etcd?: EtcdPoolsOptions
  /** called when a split's weights change (also on diagnostics channel `fastify-upstream:split`) */
  onSplitChange?: (event: SplitChangeEvent) => void
  /** serves the status (JSON, or HTML to a browser) here, and Prometheus metrics at `/metrics` below it */
  statusRoute?: string | StatusRouteOptions
  /**
   * Prometheus metrics (default true): served at `${statusRoute}/metrics`, and added to
   * `registry` when one is given, with or without a status route; `false` turns them off
   */
  metrics?: boolean | MetricsOptions
}
