import { lookup as systemLookup } from 'node:dns'
import { Resolver } from 'node:dns/promises'
import { isIP, type LookupFunction } from 'node:net'

interface Address { address: string, family: number }
interface Entry { addresses: Address[], expires: number }

/** The least time an answer is kept (ms), whatever its TTL: a busy pool asks once a second at most. */
const MIN_KEEP = 1000

/**
 * Host names of a pool's targets resolved by the DNS servers its discovery names (A and
 * AAAA, kept for their TTL), for the connections to its targets. An SRV record names a
 * host (`node1.node.dc1.consul.`) that only the discovery's servers may know (Consul's
 * DNS); the target keeps that name in its URL, so Host and SNI carry it. A name those
 * servers do not know (`localhost`) is resolved by the system, as without them.
 */
export class NameLookup {
  private readonly resolver: Resolver
  private readonly cache = new Map<string, Entry>()
  /** what `net.connect` takes as `lookup` */
  readonly lookup: LookupFunction

  constructor (servers: string[], timeout: number) {
    this.resolver = new Resolver({ timeout, tries: 2 })
    this.resolver.setServers(servers)
    this.lookup = (hostname, options, callback) => {
      this.addresses(hostname).then((found) => {
        const wanted = options.family === 4 || options.family === 6 ? found.filter((a) => a.family === options.family) : found
        if (wanted.length === 0) {
          systemLookup(hostname, options, callback as never)
        } else if (options.all === true) {
          (callback as (error: null, addresses: Address[]) => void)(null, wanted)
        } else {
          callback(null, wanted[0].address, wanted[0].family)
        }
      }, (error: NodeJS.ErrnoException) => callback(error, '', 0))
    }
  }

  /** The addresses of `hostname` the servers give (none when they know no such name). */
  async addresses (hostname: string): Promise<Address[]> {
    const family = isIP(hostname)
    if (family !== 0) return [{ address: hostname, family }]
    const now = Date.now()
    const hit = this.cache.get(hostname)
    if (hit !== undefined && hit.expires > now) return hit.addresses
    const [v4, v6] = await Promise.all([
      this.resolver.resolve4(hostname, { ttl: true }).catch(noData),
      this.resolver.resolve6(hostname, { ttl: true }).catch(noData)
    ])
    const records = [...v4.map((r) => ({ ...r, family: 4 })), ...v6.map((r) => ({ ...r, family: 6 }))]
    const ttl = records.length === 0 ? 0 : Math.min(...records.map((r) => r.ttl))
    const addresses = records.map((r) => ({ address: r.address, family: r.family }))
    this.cache.set(hostname, { addresses, expires: now + Math.max(MIN_KEEP, ttl * 1000) })
    return addresses
  }

  close (): void {
    this.resolver.cancel()
    this.cache.clear()
  }
}

/** No such name, or no record of that type: none. Other failures (the servers did not answer) stand. */
function noData (error: NodeJS.ErrnoException): Array<{ address: string, ttl: number }> {
  if (error.code === 'ENODATA' || error.code === 'ENOTFOUND') return []
  throw error
}
