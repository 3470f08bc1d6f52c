import net, { type LookupFunction } from 'node:net'
import { Client, type buildConnector } from 'undici'
import type { TargetView } from '../contracts'
import type { ActiveCheckConfig } from '../options/config'
import type { Target } from '../upstream/target'

/**
 * One way to tell whether a target is up: the active prober asks `check` on every round
 * and treats a rejection as a failure. `close` ends every check in flight (as failed) and
 * frees what the probe holds, so that nothing outlives the app's close; `release` frees
 * what it holds for an origin no target of the pool is on any more.
 */
export interface Probe {
  check (target: Target): Promise<boolean>
  release? (origin: string): void
  close (): Promise<void>
}

/**
 * The probe a pool's active check asks for: its own function, a TCP connect, or an HTTP
 * request, sent with `connect`: the pool's connector, so that the probe speaks the
 * protocol the pool's traffic does (HTTP/2 when `http2` says so).
 */
export function createProbe (config: ActiveCheckConfig, viewOf: (target: Target) => TargetView, connect: buildConnector.connector, lookup?: LookupFunction, http2 = false): Probe {
  if (config.check !== undefined) return new CustomProbe(config.check, config.timeout, viewOf)
  if (config.type === 'tcp') return new TcpProbe(config.timeout, lookup)
  return new HttpProbe(config, connect, http2)
}

/**
 * An HTTP request (`method` `path`, with `headers`) whose status must be in
 * `expectedStatus`, on connections of its own opened with the pool's connection settings
 * (one per origin), so that busy traffic connections never delay it.
 *
 * An HTTP/1.1 connection closes after its keep-alive timeout (twice the interval), and
 * its origin's client goes with it, as undici's Agent drops it; an HTTP/2 one stays open
 * (undici gives an HTTP/2 session no idle timeout), so it is closed when the last target
 * on its origin leaves the pool (`release`). An HTTP/2 probe connection sends no PING:
 * the probes keep it busy enough.
 */
export class HttpProbe implements Probe {
  private readonly config: ActiveCheckConfig
  private readonly options: Client.Options
  /** a client per origin probed (each one connection) */
  private readonly clients = new Map<string, Client>()

  constructor (config: ActiveCheckConfig, connect: buildConnector.connector, http2 = false) {
    this.config = config
    this.options = { connect, keepAliveTimeout: Math.max(config.interval * 2, 1000), ...(http2 ? { allowH2: true, pingInterval: 0 } : {}) }
  }

  async check (target: Target): Promise<boolean> {
    const { method, headers, path, timeout, expectedStatus } = this.config
    const response = await this.client(target.origin).request({
      path: target.basePath + path,
      method: method as 'GET',
      headers,
      signal: AbortSignal.timeout(timeout)
    })
    // drain the body so that the connection can be kept alive
    await response.body.dump()
    return expectedStatus[response.statusCode] === 1
  }

  private client (origin: string): Client {
    let client = this.clients.get(origin)
    if (client === undefined) {
      const made = new Client(origin, this.options)
      // its connection closed (a keep-alive timeout, the target's close): made again on the next probe
      made.on('disconnect', () => { this.release(origin, made) })
      this.clients.set(origin, made)
      client = made
    }
    return client
  }

  /** Closes the origin's client (`only` that one, when given), once its probe in flight is done. */
  release (origin: string, only?: Client): void {
    const client = this.clients.get(origin)
    if (client === undefined || (only !== undefined && client !== only)) return
    this.clients.delete(origin)
    client.close().catch(() => {})
  }

  // requests in flight end when the clients are destroyed
  async close (): Promise<void> {
    const clients = [...this.clients.values()]
    this.clients.clear()
    await Promise.all(clients.map((client) => client.destroy()))
  }
}

/** Cancels of checks in flight: each ends its check as failed (see Probe.close). */
class InFlight {
  private readonly cancels = new Set<() => void>()

  add (cancel: () => void): void {
    this.cancels.add(cancel)
  }

  delete (cancel: () => void): void {
    this.cancels.delete(cancel)
  }

  cancelAll (): void {
    for (const cancel of this.cancels) cancel()
  }
}

/** A TCP connection to the target's host and port, within `timeout`. */
export class TcpProbe implements Probe {
  private readonly timeout: number
  /** how the target's host name is resolved (the system's when undefined) */
  private readonly lookup: LookupFunction | undefined
  /** a connect in flight holds its socket past the app's close without this */
  private readonly inFlight = new InFlight()

  constructor (timeout: number, lookup?: LookupFunction) {
    this.timeout = timeout
    this.lookup = lookup
  }

  check (target: Target): Promise<boolean> {
    const url = new URL(target.origin)
    const port = url.port !== '' ? Number(url.port) : (url.protocol === 'https:' ? 443 : 80)
    return new Promise((resolve) => {
      const socket = net.connect({ host: url.hostname.replace(/^\[|\]$/g, ''), port, lookup: this.lookup })
      const done = (ok: boolean): void => {
        this.inFlight.delete(cancel)
        socket.destroy()
        resolve(ok)
      }
      const cancel = (): void => done(false)
      this.inFlight.add(cancel)
      socket.setTimeout(this.timeout, () => done(false))
      socket.once('connect', () => done(true))
      socket.once('error', () => done(false))
    })
  }

  async close (): Promise<void> {
    this.inFlight.cancelAll()
  }
}

/** The user's own check, given the target's view: healthy when it resolves true within `timeout`. */
export class CustomProbe implements Probe {
  private readonly fn: (target: TargetView) => boolean | Promise<boolean>
  private readonly timeout: number
  private readonly viewOf: (target: Target) => TargetView
  /** a hanging check would hold its timeout timer past the app's close without this */
  private readonly inFlight = new InFlight()

  constructor (fn: (target: TargetView) => boolean | Promise<boolean>, timeout: number, viewOf: (target: Target) => TargetView) {
    this.fn = fn
    this.timeout = timeout
    this.viewOf = viewOf
  }

  check (target: Target): Promise<boolean> {
    const result = Promise.resolve(this.fn(this.viewOf(target))).then((ok) => ok === true)
    let timer: NodeJS.Timeout | undefined
    let cancel: () => void = ignore
    const expired = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), this.timeout)
      cancel = () => resolve(false)
      this.inFlight.add(cancel)
    })
    return Promise.race([result, expired]).finally(() => {
      clearTimeout(timer)
      this.inFlight.delete(cancel)
    })
  }

  async close (): Promise<void> {
    this.inFlight.cancelAll()
  }
}

function ignore (): void {}
