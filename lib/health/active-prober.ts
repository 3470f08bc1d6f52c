import type { LookupFunction } from 'node:net'
import type { buildConnector } from 'undici'
import type { ActiveCheckConfig } from '../options/config'
import { untraced } from '../otel'
import type { Target } from '../upstream/target'
import type { HealthHost } from './host'
import type { OutlierDetector } from './outlier-detector'
import { GrpcProbe } from './grpc-probe'
import { HttpProbe } from './http-probe'
import { CustomProbe, TcpProbe, type Probe } from './probes'
import type { TargetView } from '../contracts'

/**
 * Active health checks: probes every target on `interval` (plus up to `jitter`), by HTTP
 * request, gRPC health check, TCP connect or a custom function (see createProbe). A target turns unhealthy after
 * `unhealthyThreshold` failed probes in a row and healthy after `healthyThreshold`
 * passed ones. The first round runs when the app gets ready, before it serves, and its
 * result counts at once, so that a target that is down at start never gets traffic.
 * Probes of one target never overlap; probes use their own connections, opened with the
 * pool's connection settings and protocol (HTTP/2 when `http2` says so), so that busy
 * traffic connections never delay them. Probes are not traced (see untraced).
 */
export class ActiveProber {
  private readonly config: ActiveCheckConfig
  private readonly host: HealthHost
  private readonly detector: OutlierDetector | undefined
  private readonly probe: Probe
  private readonly timers = new Map<Target, NodeJS.Timeout>()
  private started = false
  private closed = false

  constructor (config: ActiveCheckConfig, host: HealthHost, detector: OutlierDetector | undefined, connect: buildConnector.connector, lookup?: LookupFunction, http2 = false) {
    this.config = config
    this.host = host
    this.detector = detector
    this.probe = createProbe(config, (target) => host.viewOf(target), connect, lookup, http2)
  }

  /** Runs the first round of probes and schedules the next; resolves when the round is done. */
  async start (): Promise<void> {
    if (this.started || this.closed) return
    this.started = true
    await Promise.all(this.host.targetList.map((target) => this.run(target, true)))
  }

  /** A target joined the pool: probe it now when probes are running. */
  add (target: Target): void {
    if (this.started && !this.closed) this.run(target, true).catch(ignore)
  }

  /** A target left the pool (it is out of the host's list): the probe lets its origin go when no other target is on it. */
  remove (target: Target): void {
    const timer = this.timers.get(target)
    if (timer !== undefined) clearTimeout(timer)
    this.timers.delete(target)
    if (!this.host.targetList.some((other) => other.origin === target.origin)) this.probe.release?.(target.origin)
  }

  async close (): Promise<void> {
    this.closed = true
    for (const timer of this.timers.values()) clearTimeout(timer)
    this.timers.clear()
    await this.probe.close()
  }

  private schedule (target: Target): void {
    if (this.closed || !this.host.targetList.includes(target)) return
    const delay = this.config.interval + Math.floor(Math.random() * (this.config.jitter + 1))
    const timer = setTimeout(() => { this.run(target, false).catch(ignore) }, delay)
    timer.unref()
    this.timers.set(target, timer)
  }

  private async run (target: Target, first: boolean): Promise<void> {
    this.timers.delete(target)
    let healthy: boolean
    try {
      // probes are no traffic: a span (and a trace of its own) for each would bury the
      // requests' traces, and a target would get trace headers with them
      healthy = await untraced(this.probe.check, this.probe, target)
    } catch {
      healthy = false
    }
    if (this.closed || !this.host.targetList.includes(target)) return
    this.record(target, healthy, first)
    this.schedule(target)
  }

  private record (target: Target, healthy: boolean, first: boolean): void {
    const { healthyThreshold, unhealthyThreshold } = this.config
    if (healthy) {
      target.probeSuccesses++
      target.probeFailures = 0
      if (target.unhealthy && (first || target.probeSuccesses >= healthyThreshold)) {
        const passes = target.probeSuccesses
        this.host.transition(target, (t) => { t.unhealthy = false }, `active check passed ${passes} time(s)`)
      }
      if (target.ejected) this.detector?.release(target, 'active check passed')
    } else {
      target.probeFailures++
      target.probeSuccesses = 0
      if (!target.unhealthy && (first || target.probeFailures >= unhealthyThreshold)) {
        const failures = target.probeFailures
        this.host.transition(target, (t) => { t.unhealthy = true }, `active check failed ${failures} time(s)`)
      }
    }
  }
}

/** run() records every failure itself and never rejects */
function ignore (): void {}

/**
 * The probe a pool's active check asks for: its own function, a TCP connect, a gRPC health
 * check (see grpc-probe.ts) or an HTTP request, sent with `connect`: the pool's connector, so that the probe speaks the
 * protocol the pool's traffic does (HTTP/2 when `http2` says so).
 */
export function createProbe (config: ActiveCheckConfig, viewOf: (target: Target) => TargetView, connect: buildConnector.connector, lookup?: LookupFunction, http2 = false): Probe {
  if (config.check !== undefined) return new CustomProbe(config.check, config.timeout, viewOf)
  if (config.type === 'tcp') return new TcpProbe(config.timeout, lookup)
  if (config.type === 'grpc') return new GrpcProbe(config, connect, true)
  return new HttpProbe(config, connect, http2)
}
