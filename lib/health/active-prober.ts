import net from 'node:net'
import { Agent, type buildConnector } from 'undici'
import { untraced } from '../otel'
import type { HealthHost } from './host'
import type { ActiveCheckConfig } from '../options/config'
import type { OutlierDetector } from './outlier-detector'
import type { Target } from '../upstream/target'

/**
 * Active health checks: probes every target on `interval` (plus up to `jitter`), by HTTP
 * request, TCP connect or a custom function. A target turns unhealthy after
 * `unhealthyThreshold` failed probes in a row and healthy after `healthyThreshold`
 * passed ones. The first round runs when the app gets ready, before it serves, and its
 * result counts at once, so that a target that is down at start never gets traffic.
 * Probes of one target never overlap; probes use their own connections, opened with the
 * pool's connection settings, so that busy traffic connections never delay them. Probes
 * are not traced (see untraced).
 */
export class ActiveProber {
  private readonly config: ActiveCheckConfig
  private readonly host: HealthHost
  private readonly detector: OutlierDetector | undefined
  private readonly agent: Agent | undefined
  private readonly timers = new Map<Target, NodeJS.Timeout>()
  /**
   * Ends each custom or TCP probe in flight (as failed). close() calls them: a hanging
   * custom check would otherwise hold its timeout timer, and a TCP probe its socket,
   * past the app's close. (HTTP probes end when the agent is destroyed.)
   */
  private readonly cancels = new Set<() => void>()
  private started = false
  private closed = false

  constructor (config: ActiveCheckConfig, host: HealthHost, detector: OutlierDetector | undefined, connect: buildConnector.connector) {
    this.config = config
    this.host = host
    this.detector = detector
    if (config.type === 'http' && config.check === undefined) {
      this.agent = new Agent({ connect, connections: 1, keepAliveTimeout: Math.max(config.interval * 2, 1000) })
    }
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

  /** A target left the pool. */
  remove (target: Target): void {
    const timer = this.timers.get(target)
    if (timer !== undefined) clearTimeout(timer)
    this.timers.delete(target)
  }

  async close (): Promise<void> {
    this.closed = true
    for (const timer of this.timers.values()) clearTimeout(timer)
    this.timers.clear()
    for (const cancel of this.cancels) cancel()
    await this.agent?.destroy()
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
      healthy = await untraced(this.probe, this, target)
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

  private probe (target: Target): Promise<boolean> {
    const { check, timeout } = this.config
    if (check !== undefined) return withTimeout(Promise.resolve(check(this.host.viewOf(target))).then((ok) => ok === true), timeout, this.cancels)
    if (this.config.type === 'tcp') return tcpProbe(target, timeout, this.cancels)
    return this.httpProbe(target)
  }

  private async httpProbe (target: Target): Promise<boolean> {
    const { method, headers, path, timeout, expectedStatus } = this.config
    const response = await (this.agent as Agent).request({
      origin: target.origin,
      path: target.basePath + path,
      method: method as 'GET',
      headers,
      signal: AbortSignal.timeout(timeout)
    })
    // drain the body so that the connection can be kept alive
    await response.body.dump()
    return expectedStatus[response.statusCode] === 1
  }
}

function tcpProbe (target: Target, timeout: number, cancels: Set<() => void>): Promise<boolean> {
  const url = new URL(target.origin)
  const port = url.port !== '' ? Number(url.port) : (url.protocol === 'https:' ? 443 : 80)
  return new Promise((resolve) => {
    const socket = net.connect({ host: url.hostname.replace(/^\[|\]$/g, ''), port })
    const done = (ok: boolean): void => {
      cancels.delete(cancel)
      socket.destroy()
      resolve(ok)
    }
    const cancel = (): void => done(false)
    cancels.add(cancel)
    socket.setTimeout(timeout, () => done(false))
    socket.once('connect', () => done(true))
    socket.once('error', () => done(false))
  })
}

/** `promise`, or false after `ms` or when cancelled (at close), whichever comes first */
function withTimeout (promise: Promise<boolean>, ms: number, cancels: Set<() => void>): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  let cancel: () => void = ignore
  const expired = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms)
    cancel = () => resolve(false)
    cancels.add(cancel)
  })
  return Promise.race([promise, expired]).finally(() => {
    clearTimeout(timer)
    cancels.delete(cancel)
  })
}

/** run() records every failure itself and never rejects */
function ignore (): void {}
