import { Registry } from 'prom-client'
import { TARGET_STATES } from '../contracts'
import type { MetricsOptions } from '../options/types'
import { poolProxy, type PoolProxy } from '../proxy/forwarding'
import type { Branch } from '../traffic/split'
import type { PoolRegistry } from '../upstream/registry'
import { LATENCY_BUCKETS, type Target } from '../upstream/target'

/**
 * Prometheus metrics through prom-client. Nothing is counted per request for them: each
 * metric is a collector that reads the targets' own counters when it is scraped (the
 * latency histogram's buckets are counted where the latency is measured anyway).
 */

interface Sample { value: number, labels: Record<string, string | number>, metricName?: string }
interface Family { name: string, help: string, type: 'counter' | 'gauge' | 'histogram', values: Sample[], aggregator: 'sum' }

type Emit = (sample: Sample) => void
type Each = (emit: Emit, pool: string, target: Target) => void

/** A prom-client metric (the shape its Registry formats) computed at scrape time by `collect`. */
class Collector {
  readonly name: string
  readonly help: string
  readonly type: Family['type']
  readonly aggregator = 'sum' as const
  private readonly collect: (emit: Emit) => void

  constructor (name: string, help: string, type: Family['type'], collect: (emit: Emit) => void) {
    this.name = name
    this.help = help
    this.type = type
    this.collect = collect
  }

  async get (): Promise<Family> {
    const values: Sample[] = []
    this.collect((sample) => { values.push(sample) })
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator }
  }

  // prom-client calls these on registered metrics in some paths (reset, clear)
  reset (): void {}
}

/** The plugin's metrics, registered into `registry`; `close()` takes them out again. */
export class UpstreamMetrics {
  readonly registry: Registry
  private readonly names: string[] = []

  constructor (pools: PoolRegistry, options: MetricsOptions = {}) {
    this.registry = options.registry ?? new Registry()
    const prefix = options.prefix ?? 'fastify_upstream_'
    // a metric with a sample (or several) per target of every pool
    const perTarget = (name: string, help: string, type: Family['type'], each: Each): Collector =>
      new Collector(prefix + name, help, type, (emit) => {
        for (const pool of pools) for (const target of pool.targetList) each(emit, pool.name, target)
      })
    const counter = (name: string, help: string, read: (t: Target) => number): Collector =>
      perTarget(name, help, 'counter', (emit, pool, target) => emit({ value: read(target), labels: { pool, target: target.url } }))
    // a metric with a sample (or several) per pool, from its proxy-side counters
    const perPool = (name: string, help: string, each: (emit: Emit, pool: string, proxy: PoolProxy) => void): Collector =>
      new Collector(prefix + name, help, 'counter', (emit) => {
        for (const pool of pools) each(emit, pool.name, poolProxy(pool))
      })
    // a metric with a sample per branch of every split
    const perBranch = (name: string, help: string, type: Family['type'], read: (branch: Branch) => number): Collector =>
      new Collector(prefix + name, help, type, (emit) => {
        for (const split of pools.splits) {
          for (const branch of split.branches) emit({ value: read(branch), labels: { split: split.name, branch: branch.index, pool: branch.pool } })
        }
      })
    const collectors = [
      counter('requests_total', 'Requests sent to the target (each attempt counts).', (t) => t.requests),
      counter('failures_total', 'Failed requests to the target: connection errors, resets, timeouts, broken bodies and failure statuses.', (t) => t.failures),
      counter('retries_total', 'Requests retried on another target after failing on this one.', (t) => t.retries),
      counter('ejections_total', 'Times passive checks ejected the target.', (t) => t.ejections),
      perTarget('inflight', 'Requests in flight on the target.', 'gauge',
        (emit, pool, target) => emit({ value: target.inflight, labels: { pool, target: target.url } })),
      perTarget('websockets', 'WebSocket connections open on the target.', 'gauge',
        (emit, pool, target) => emit({ value: target.openStreams.size, labels: { pool, target: target.url } })),
      perTarget('weight', 'The weight the balancer uses (ramped during slow start).', 'gauge',
        (emit, pool, target) => emit({ value: target.weight, labels: { pool, target: target.url } })),
      perTarget('target_state', 'The target state: 1 for the current state, 0 for the others.', 'gauge', (emit, pool, target) => {
        const current = target.state
        for (const state of TARGET_STATES) emit({ value: state === current ? 1 : 0, labels: { pool, target: target.url, state } })
      }),
      perTarget('latency_seconds', 'Time from sending a request to the target to its response headers.', 'histogram', (emit, pool, target) => {
        let cumulative = 0
        for (let i = 0; i <= LATENCY_BUCKETS.length; i++) {
          cumulative += target.latencyCounts[i]
          const le = i < LATENCY_BUCKETS.length ? LATENCY_BUCKETS[i] / 1000 : '+Inf'
          emit({ value: cumulative, labels: { pool, target: target.url, le }, metricName: `${prefix}latency_seconds_bucket` })
        }
        emit({ value: target.latencySum / 1000, labels: { pool, target: target.url }, metricName: `${prefix}latency_seconds_sum` })
        emit({ value: cumulative, labels: { pool, target: target.url }, metricName: `${prefix}latency_seconds_count` })
      }),
      perPool('mirror_requests_total', 'Copies of requests mirrored to the pool, by result: sent (answered), failed (error or timeout), dropped (over the limits, or no target).', (emit, pool, proxy) => {
        const mirrors = proxy.mirrors
        emit({ value: mirrors.sent, labels: { pool, result: 'sent' } })
        emit({ value: mirrors.failed, labels: { pool, result: 'failed' } })
        emit({ value: mirrors.dropped, labels: { pool, result: 'dropped' } })
      }),
      perPool('hedges_total', 'Hedged second attempts sent to the pool\'s targets.', (emit, pool, proxy) => emit({ value: proxy.hedges.sent, labels: { pool } })),
      perPool('hedge_wins_total', 'Hedged second attempts that answered first.', (emit, pool, proxy) => emit({ value: proxy.hedges.won, labels: { pool } })),
      perBranch('split_requests_total', 'Requests sent down a branch of a split (fallbacks included).', 'counter', (branch) => branch.requests),
      perBranch('split_fallbacks_total', 'Requests a branch took because their own branch had no available target.', 'counter', (branch) => branch.fallbacks),
      perBranch('split_weight', 'The weight of a split\'s branch (0 for a branch chosen by its rules).', 'gauge', (branch) => branch.match === undefined ? branch.weight : 0)
    ]
    for (const collector of collectors) {
      this.registry.registerMetric(collector as never)
      this.names.push(collector.name)
    }
  }

  contentType (): string {
    return this.registry.contentType
  }

  text (): Promise<string> {
    return this.registry.metrics()
  }

  /** Takes the plugin's metrics out of the registry (it may be the user's). */
  close (): void {
    for (const name of this.names) this.registry.removeSingleMetric(name)
  }
}
