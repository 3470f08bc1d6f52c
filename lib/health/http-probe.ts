import { Client, type buildConnector } from 'undici'
import type { ActiveCheckConfig } from '../options/config'
import type { Target } from '../upstream/target'
import type { Probe } from './probes'

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
  protected readonly config: ActiveCheckConfig
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

  protected client (origin: string): Client {
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
