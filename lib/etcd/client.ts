import { Pool, errors as undiciErrors, type Dispatcher } from 'undici'

/**
 * A small etcd v3 client over etcd's own JSON API (the gRPC gateway every etcd serves at
 * `/v3/...` on its client URLs): ranges, puts, deletes, leases and prefix watches, with
 * user/password auth and TLS. No maintained Node client of etcd v3 exists (the `etcd3`
 * package was last released in 2023, and brings gRPC and protobuf along); this one needs
 * nothing but undici, which the plugin has already, and keeps every timer and socket it
 * opens where `close()` can reach them.
 *
 * Keys and values are base64 on the wire and int64 numbers are decimal strings; here
 * they are strings and numbers. A call goes to the endpoint that answered last and, when
 * that one cannot be reached or has no leader, to the next, each attempt within `timeout`.
 */

/** How to reach etcd. */
export interface EtcdConnection {
  /** client URLs of the members: `http://127.0.0.1:2379`, `https://etcd-1:2379` */
  endpoints: readonly string[]
  username?: string
  password?: string
  /** TLS to etcd: the CA of its certificate, and a client certificate for mutual TLS */
  tls?: { ca?: string | Uint8Array, cert?: string | Uint8Array, key?: string | Uint8Array, servername?: string }
  /** longest wait for one call to one member (ms) */
  timeout?: number
}

export interface KeyValue {
  key: string
  value: string
  modRevision: number
  lease: string
}

/** One change of a watched prefix: a put (with the value) or a delete (value null). */
export interface WatchEvent {
  key: string
  value: string | null
  modRevision: number
}

/** What a watch reports: events; its end by compaction (resync from a fresh read), or a failure. */
export interface WatchHandlers {
  events (events: WatchEvent[], revision: number): void
  /** the watch is over (the connection broke, the member was compacted past it, or it was refused) */
  ended (error: Error): void
}

/** An etcd answer that is no success, with etcd's own code and message. */
export class EtcdError extends Error {
  readonly code: number | string
  constructor (message: string, code: number | string) {
    super(message)
    this.name = 'EtcdError'
    this.code = code
  }
}

const DEFAULT_TIMEOUT = 2000

/** A PEM as Node's TLS options take it. */
function pem (value: string | Uint8Array | undefined): string | Buffer | undefined {
  return value === undefined || typeof value === 'string' ? value : Buffer.from(value)
}

function b64 (text: string): string {
  return Buffer.from(text).toString('base64')
}

function text (base64: string | undefined): string {
  return base64 === undefined ? '' : Buffer.from(base64, 'base64').toString()
}

/** The first key after every key that starts with `prefix` (etcd's range_end for a prefix). */
function prefixEnd (prefix: string): string {
  const bytes = Buffer.from(prefix)
  for (let i = bytes.length - 1; i >= 0; i--) {
    if (bytes[i] < 0xff) {
      bytes[i]++
      return bytes.subarray(0, i + 1).toString('base64')
    }
  }
  // a prefix of 0xff bytes only: to the end of the key space
  return b64('\0')
}

/** true for a failure another member may not have: unreachable, timed out, or no leader. */
function tryAnother (error: unknown): boolean {
  if (error instanceof EtcdError) return /no leader|leader changed|timed out|too many requests|not capable|unavailable/i.test(error.message)
  return true
}

/** etcd's JSON answer; an answer that is no JSON (a proxy's, or a refusal in plain text) as its message. */
function parse (body: string): unknown {
  try {
    return JSON.parse(body)
  } catch {
    return { message: body.trim().slice(0, 200) || 'an empty answer' }
  }
}

interface RawKv { key?: string, value?: string, mod_revision?: string, lease?: string }

function keyValue (kv: RawKv): KeyValue {
  return { key: text(kv.key), value: text(kv.value), modRevision: Number(kv.mod_revision ?? 0), lease: kv.lease ?? '0' }
}

/** A watch on one member, open until it ends or is closed. */
export interface Watch {
  /** the member it is on (see healthy) */
  readonly member: number
  close (): void
}

export class EtcdClient {
  private readonly endpoints: readonly string[]
  private readonly pools: Pool[]
  private readonly username: string | undefined
  private readonly password: string | undefined
  private readonly timeout: number
  /** the member that answered last */
  private current = 0
  private token: string | undefined = undefined
  private closed = false
  private readonly watches = new Set<AbortController>()

  constructor (connection: EtcdConnection) {
    if (connection.endpoints.length === 0) throw new TypeError('etcd: no endpoints')
    this.endpoints = connection.endpoints.map((endpoint) => endpoint.replace(/\/+$/, ''))
    this.username = connection.username
    this.password = connection.password
    this.timeout = connection.timeout ?? DEFAULT_TIMEOUT
    const tls = connection.tls
    this.pools = this.endpoints.map((endpoint) => new Pool(endpoint, {
      connections: 4,
      connect: tls === undefined ? { timeout: this.timeout } : { timeout: this.timeout, ca: pem(tls.ca), cert: pem(tls.cert), key: pem(tls.key), servername: tls.servername }
    }))
  }

  /** Every key under `prefix`, and the store's revision at the time of the read. */
  async range (prefix: string): Promise<{ revision: number, kvs: KeyValue[] }> {
    const answer = await this.call('/v3/kv/range', { key: b64(prefix), range_end: prefixEnd(prefix) }) as { header?: { revision?: string }, kvs?: RawKv[] }
    return { revision: Number(answer.header?.revision ?? 0), kvs: (answer.kvs ?? []).map(keyValue) }
  }

  async get (key: string): Promise<KeyValue | undefined> {
    const answer = await this.call('/v3/kv/range', { key: b64(key) }) as { kvs?: RawKv[] }
    const kv = answer.kvs?.[0]
    return kv === undefined ? undefined : keyValue(kv)
  }

  /** Puts `value` at `key`; with `lease`, the key goes when the lease does. Resolves with the revision. */
  async put (key: string, value: string, lease?: string): Promise<number> {
    const answer = await this.call('/v3/kv/put', { key: b64(key), value: b64(value), ...(lease === undefined ? {} : { lease }) }) as { header?: { revision?: string } }
    return Number(answer.header?.revision ?? 0)
  }

  async delete (key: string): Promise<number> {
    const answer = await this.call('/v3/kv/deleterange', { key: b64(key) }) as { header?: { revision?: string } }
    return Number(answer.header?.revision ?? 0)
  }

  /** A lease of `ttl` seconds (etcd may grant a longer one): its id and TTL. */
  async grant (ttl: number): Promise<{ id: string, ttl: number }> {
    const answer = await this.call('/v3/lease/grant', { TTL: ttl }) as { ID?: string, TTL?: string, error?: string }
    if (answer.ID === undefined) throw new EtcdError(`etcd granted no lease: ${answer.error ?? 'no id'}`, 'lease')
    return { id: answer.ID, ttl: Number(answer.TTL ?? ttl) }
  }

  /** Renews a lease; resolves with its TTL again, 0 when the lease is gone (expired or revoked). */
  async keepAlive (id: string): Promise<number> {
    const answer = await this.call('/v3/lease/keepalive', { ID: id }) as { result?: { TTL?: string } }
    return Number(answer.result?.TTL ?? 0)
  }

  async revoke (id: string): Promise<void> {
    try {
      await this.call('/v3/lease/revoke', { ID: id })
    } catch (error) {
      // revoking a lease that is gone already is done
      if (!(error instanceof EtcdError && /not found/i.test(error.message))) throw error
    }
  }

  /**
   * Watches every key under `prefix` from `revision` on, on the member that answered last.
   * Events arrive in order; a watch ends (once) when its stream breaks, when etcd cancels it
   * (compacted past `revision`), or on `close()`, which reports nothing.
   */
  watch (prefix: string, revision: number, handlers: WatchHandlers): Watch {
    const abort = new AbortController()
    this.watches.add(abort)
    let ended = false
    const end = (error: Error): void => {
      this.watches.delete(abort)
      if (ended) return
      ended = true
      if (!abort.signal.aborted) {
        abort.abort()
        handlers.ended(error)
      }
    }
    const body = JSON.stringify({ create_request: { key: b64(prefix), range_end: prefixEnd(prefix), start_revision: revision } })
    const member = this.current
    this.stream(member, body, abort.signal, handlers, end).catch((error: Error) => { end(error) })
    return { member, close: () => { this.watches.delete(abort); ended = true; abort.abort() } }
  }

  /**
   * true when member `index` says it is healthy (it has a leader): a watch on a member cut
   * off from the others would otherwise wait in silence.
   */
  async healthy (index: number): Promise<boolean> {
    try {
      const response = await this.pools[index].request({ path: '/health', method: 'GET', headersTimeout: this.timeout, bodyTimeout: this.timeout })
      const answer = await response.body.json() as { health?: string }
      return response.statusCode === 200 && answer.health === 'true'
    } catch {
      return false
    }
  }

  private async stream (index: number, body: string, signal: AbortSignal, handlers: WatchHandlers, end: (error: Error) => void): Promise<void> {
    const response = await this.pools[index].request({
      path: '/v3/watch',
      method: 'POST',
      headers: await this.headers(index),
      body,
      signal,
      headersTimeout: this.timeout,
      // a watch is silent while nothing changes
      bodyTimeout: 0
    })
    if (response.statusCode !== 200) {
      const answer = await response.body.text()
      this.unauthorized(answer)
      throw new EtcdError(`etcd refused the watch: ${answer.slice(0, 200)}`, response.statusCode)
    }
    let buffered = ''
    for await (const chunk of response.body) {
      buffered += (chunk as Buffer).toString()
      let newline: number
      while ((newline = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, newline)
        buffered = buffered.slice(newline + 1)
        if (line.trim() === '') continue
        const message = JSON.parse(line) as { result?: WatchResult, error?: { message?: string, grpc_code?: number } }
        if (message.error !== undefined) {
          this.unauthorized(message.error.message ?? '')
          throw new EtcdError(`etcd ended the watch: ${message.error.message ?? 'unknown error'}`, message.error.grpc_code ?? 'watch')
        }
        const result = message.result
        if (result === undefined) continue
        if (result.canceled === true) {
          throw new EtcdError(`etcd cancelled the watch${result.compact_revision === undefined ? '' : ` (compacted to revision ${result.compact_revision})`}: ${result.cancel_reason ?? ''}`, 'canceled')
        }
        const events = result.events
        if (events !== undefined && events.length > 0) {
          handlers.events(events.map((event) => ({
            key: text(event.kv.key),
            value: event.type === 'DELETE' ? null : text(event.kv.value),
            modRevision: Number(event.kv.mod_revision ?? 0)
          })), Number(result.header?.revision ?? 0))
        }
      }
    }
    end(new EtcdError('the watch stream ended', 'ended'))
  }

  /** Closes every watch and connection; calls in flight fail. */
  async close (): Promise<void> {
    this.closed = true
    for (const abort of this.watches) abort.abort()
    this.watches.clear()
    await Promise.all(this.pools.map(async (pool) => { await pool.destroy() }))
  }

  /** One call, to the member that answered last, then to the others in turn. */
  private async call (path: string, body: unknown): Promise<unknown> {
    let last: unknown
    for (let tries = 0; tries < this.pools.length; tries++) {
      if (this.closed) throw new EtcdError('the etcd client is closed', 'closed')
      const index = (this.current + tries) % this.pools.length
      try {
        const answer = await this.once(index, path, body)
        this.current = index
        return answer
      } catch (error) {
        last = error
        if (!tryAnother(error)) throw error
      }
    }
    throw last
  }

  private async once (index: number, path: string, body: unknown, again = true): Promise<unknown> {
    const response = await this.pools[index].request({
      path,
      method: 'POST',
      headers: await this.headers(index),
      body: JSON.stringify(body),
      headersTimeout: this.timeout,
      bodyTimeout: this.timeout
    } as Dispatcher.RequestOptions)
    const answer = parse(await response.body.text()) as { error?: string, message?: string, code?: number }
    if (response.statusCode === 200) return answer
    const message = answer.message ?? answer.error ?? `status ${response.statusCode}`
    // a token expires (etcd's --auth-token-ttl): once more with a fresh one
    if (this.unauthorized(message) && again) return await this.once(index, path, body, false)
    throw new EtcdError(message, answer.code ?? response.statusCode)
  }

  /** The request headers: the auth token when there are credentials (fetched on first use, from member `index`). */
  private async headers (index: number): Promise<Record<string, string>> {
    if (this.username === undefined) return { 'content-type': 'application/json' }
    if (this.token === undefined) {
      const response = await this.pools[index].request({
        path: '/v3/auth/authenticate',
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: this.username, password: this.password ?? '' }),
        headersTimeout: this.timeout,
        bodyTimeout: this.timeout
      })
      const answer = parse(await response.body.text()) as { token?: string, message?: string, error?: string }
      if (answer.token === undefined) throw new EtcdError(`etcd authentication failed: ${answer.message ?? answer.error ?? response.statusCode}`, 'auth')
      this.token = answer.token
    }
    return { 'content-type': 'application/json', authorization: this.token }
  }

  /** Forgets the token when etcd says it is no longer valid; true when it did. */
  private unauthorized (message: string): boolean {
    if (this.token === undefined || !/invalid auth token|token/i.test(message)) return false
    this.token = undefined
    return true
  }
}

interface WatchResult {
  header?: { revision?: string }
  created?: boolean
  canceled?: boolean
  compact_revision?: string
  cancel_reason?: string
  events?: Array<{ type?: 'PUT' | 'DELETE', kv: RawKv }>
}

/** true for undici's abort of a watch that was closed (no failure to report). */
export function isAborted (error: unknown): boolean {
  return error instanceof undiciErrors.RequestAbortedError || (error as { name?: string }).name === 'AbortError'
}
