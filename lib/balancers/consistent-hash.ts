import { hashRange, hashString } from './hash'
import type { BalancerTypeOptions, HashKeyOption } from './schema'
import type { Balancer, BalancerTarget, SelectRequest } from './types'

/** Returns the hash of a request's key, or -1 when the request has no such key. */
type KeyHasher = (request: SelectRequest) => number

function firstHeader (request: SelectRequest, name: string): string | undefined {
  const value = request.headers[name]
  return Array.isArray(value) ? value[0] : value
}

/** Finds `name=value` in a Cookie header and hashes the value in place. */
function hashCookie (header: string | undefined, name: string): number {
  if (header === undefined) return -1
  let from = 0
  while (from < header.length) {
    const at = header.indexOf(name, from)
    if (at === -1) return -1
    const boundary = at === 0 || header.charCodeAt(at - 1) === 32 || header.charCodeAt(at - 1) === 59
    const eq = at + name.length
    if (boundary && header.charCodeAt(eq) === 61) {
      let end = header.indexOf(';', eq + 1)
      if (end === -1) end = header.length
      return hashRange(header, eq + 1, end)
    }
    from = at + 1
  }
  return -1
}

function hashOf (value: unknown): number {
  if (typeof value === 'string') return hashString(value)
  if (Array.isArray(value) && typeof value[0] === 'string') return hashString(value[0])
  return -1
}

export function keyHasher (key: HashKeyOption): KeyHasher {
  if (typeof key === 'function') return (request) => hashOf(key(request))
  if (key === 'ip') return (request) => hashOf(request.ip)
  if (key === 'url') return (request) => hashString(request.url)
  const colon = key.indexOf(':')
  const kind = key.slice(0, colon)
  const name = key.slice(colon + 1)
  const lower = name.toLowerCase()
  if (kind === 'header') return (request) => hashOf(firstHeader(request, lower))
  if (kind === 'cookie') return (request) => hashCookie(firstHeader(request, 'cookie'), name)
  if (kind === 'query') {
    return (request) => {
      const query = request.query as Record<string, unknown> | undefined
      return query === undefined || query === null ? -1 : hashOf(query[name])
    }
  }
  throw new TypeError(`unsupported hash key ${key}`)
}

function byUrl (a: BalancerTarget, b: BalancerTarget): number {
  return a.url < b.url ? -1 : a.url > b.url ? 1 : 0
}

/**
 * Consistent hashing with a Maglev lookup table (Envoy MAGLEV): O(1) a pick, and removing
 * one of N targets moves only the keys that were on it plus a small fraction of the rest.
 * Weights set each target's share of table entries. A request without the key is spread
 * over the table in turn rather than pinned to one target.
 */
export class ConsistentHashBalancer implements Balancer {
  private targets: readonly BalancerTarget[] = []
  /** entry -> index into `targets`; typed, so that a rebuild is a few integer loops */
  private table = new Int32Array(0)
  private readonly size: number
  private readonly hashKey: KeyHasher
  private cursor = 0
  /**
   * How far the cursor moves for each request without a key: a large prime, taken modulo
   * the (prime) table size. With a table of exactly 7919 entries that would be 0 and pin
   * every such request to one entry, so it is then 1.
   */
  private readonly stride: number

  constructor (options: Omit<BalancerTypeOptions<'consistent-hash'>, 'type'> = {}) {
    this.size = options.tableSize ?? 65537
    this.stride = 7919 % this.size || 1
    this.hashKey = keyHasher(options.key ?? 'ip')
  }

  update (candidates: readonly BalancerTarget[]): void {
    // by URL: the table depends on the order the targets claim entries in, and gateways
    // that learnt of the same targets in another order must build the same table
    const targets = [...candidates].sort(byUrl)
    const n = targets.length
    const m = this.size
    this.targets = targets
    if (n === 0) {
      this.table = new Int32Array(0)
      return
    }
    // each target walks its own permutation of the table: offset, offset + skip, ... (mod m)
    const position = new Float64Array(n)
    const skip = new Float64Array(n)
    const credit = new Float64Array(n)
    let maxWeight = 0
    for (let i = 0; i < n; i++) {
      position[i] = hashString(targets[i].url, 0x9e3779b9) % m
      skip[i] = (hashString(targets[i].url, 0x7f4a7c15) % (m - 1)) + 1
      if (targets[i].weight > maxWeight) maxWeight = targets[i].weight
    }
    const table = new Int32Array(m).fill(-1)
    let count = 0
    while (count < m) {
      for (let i = 0; i < n && count < m; i++) {
        // a target of weight w claims an entry in w of every maxWeight rounds
        credit[i] += targets[i].weight
        if (credit[i] < maxWeight) continue
        credit[i] -= maxWeight
        let slot = position[i]
        while (table[slot] !== -1) {
          slot += skip[i]
          if (slot >= m) slot -= m
        }
        table[slot] = i
        slot += skip[i]
        position[i] = slot >= m ? slot - m : slot
        count++
      }
    }
    this.table = table
  }

  pick (request: SelectRequest): BalancerTarget | undefined {
    const table = this.table
    if (table.length === 0) return undefined
    const hash = this.hashKey(request)
    if (hash >= 0) return this.targets[table[hash % table.length]]
    // the table is full whenever it is not empty, so its length is `size` and stride < length
    this.cursor += this.stride
    if (this.cursor >= table.length) this.cursor -= table.length
    return this.targets[table[this.cursor]]
  }
}
