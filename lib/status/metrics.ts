import { Registry } from 'prom-client'
import { TARGET_STATES } from '../contracts'
import type { MetricsOptions } from '../options/types'
import type { PoolRegistry } from '../upstream/registry'
import { LATENCY_BUCKETS, type Target } from '../upstream/target'

/**
 * Prometheus metrics through prom-client. Nothing is counted per request for them: each
 * metric is a collector that reads the targets' own counters when it is scraped (the
 * latency histogram's buckets are counted where the latency is measured anyway).
 */

interface Sample { value: number, labels: Record<string, string | number>, metricName?: string }
interface Family { name: string, help: string, type: 'counter' | 'gauge' | 'histogram', values: Sample[], aggregator: 'sum' }

type Each = (emit: (sample: Sample) => void, pool: string, target: Target) => void

/** A prom-client metric (the shape its Registry formats) computed at scrape time. */
class Collector {
  readonly name: string
  readonly help: string
  readonly type: Family['type']
  readonly aggregator = 'sum' as const
  private readonly pools: PoolRegistry
  private readonly each: Each

  constructor (name: string, help: string, type: Family['type'], pools: PoolRegistry, each: Each) {
    this.name = name
    this.help = help
    this.type = type
    this.pools = pools
    this.each = each
  }

  async get (): Promise<Family> {
    const values: Sample[] = []
    const emit = (sample: Sample): void => { values.push(sample) }
    for (const pool of this.pools) {
      for (const target of pool.targetList) this.each(emit, pool.name, target)
    }
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
    const counter = (name: string, help: string, read: (t: Target) => number): Collector =>
      new Collector(prefix + name, help, 'counter', pools, (emit, pool, target) => emit({ value: read(target), labels: { pool, target: target.url } }))
    const collectors = [
      counter('requests_total', 'Requests sent to the target (each attempt counts).', (t) => t.requests),
      counter('failures_total', 'Failed requests to the target: connection errors, resets, timeouts, broken bodies and failure statuses.', (t) => t.failures),
      counter('retries_total', 'Requests retried on another target after failing on this one.', (t) => t.retries),
      counter('ejections_total', 'Times passive checks ejected the target.', (t) => t.ejections),
      new Collector(prefix + 'inflight', 'Requests in flight on the target.', 'gauge', pools,
        (emit, pool, target) => emit({ value: target.inflight, labels: { pool, target: target.url } })),
      new Collector(prefix + 'websockets', 'WebSocket connections open on the target.', 'gauge', pools,
        (emit, pool, target) => emit({ value: target.openStreams.size, labels: { pool, target: target.url } })),
      new Collector(prefix + 'weight', 'The weight the balancer uses (ramped during slow start).', 'gauge', pools,
        (emit, pool, target) => emit({ value: target.weight, labels: { pool, target: target.url } })),
      new Collector(prefix + 'target_state', 'The target state: 1 for the current state, 0 for the others.', 'gauge', pools, (emit, pool, target) => {
        const current = target.state
        for (const state of TARGET_STATES) emit({ value: state === current ? 1 : 0, labels: { pool, target: target.url, state } })
      }),
      new Collector(prefix + 'latency_seconds', 'Time from sending a request to the target to its response headers.', 'histogram', pools, (emit, pool, target) => {
        let cumulative = 0
        for (let i = 0; i <= LATENCY_BUCKETS.length; i++) {
          cumulative += target.latencyCounts[i]
          const le = i < LATENCY_BUCKETS.length ? LATENCY_BUCKETS[i] / 1000 : '+Inf'
          emit({ value: cumulative, labels: { pool, target: target.url, le }, metricName: `${prefix}latency_seconds_bucket` })
        }
        emit({ value: target.latencySum / 1000, labels: { pool, target: target.url }, metricName: `${prefix}latency_seconds_sum` })
        emit({ value: cumulative, labels: { pool, target: target.url }, metricName: `${prefix}latency_seconds_count` })
      })
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
