import { normalizeTarget } from '../options/normalize'
import { EtcdClient, type EtcdConnection } from './client'

/** The options of `registerTarget`. */
export interface RegisterTargetOptions extends EtcdConnection {
  /** the prefix a pool's etcd discovery watches ('services/api/') */
  prefix: string
  /** this target's URL, as gateways are to reach it */
  url: string
  /** seconds the key outlives this process when it stops renewing (default 10; etcd may grant more) */
  ttl?: number
  weight?: number
  backup?: boolean
  /** the key's name under `prefix` (default: the URL, percent-encoded) */
  name?: string
  /** told of each failure to reach etcd (the registration keeps trying) */
  onError?: (error: Error) => void
}

/** A target's registration: its key, while it lasts. */
export interface TargetRegistration {
  /** the key the target is under */
  readonly key: string
  /** Stops renewing, and removes the key now (rather than when the lease runs out). */
  close (): Promise<void>
}

const DEFAULT_TTL = 10
/** The longest wait before trying etcd again (ms). */
const MAX_RETRY = 2000

/**
 * Puts a target under `prefix` with a lease of `ttl` seconds, and keeps the lease alive
 * (a renewal every third of the TTL) for as long as the process runs: a target that dies
 * without calling close() leaves every gateway's pool when its lease runs out. A lease
 * etcd lost (expired while etcd was away) is granted anew and the key put again. Resolves
 * once the key is in etcd; its timers do not keep the process alive.
 */
export async function registerTarget (options: RegisterTargetOptions): Promise<TargetRegistration> {
  const target = normalizeTarget(options.weight === undefined && options.backup === undefined
    ? options.url
    : { url: options.url, ...(options.weight === undefined ? {} : { weight: options.weight }), ...(options.backup === undefined ? {} : { backup: options.backup }) }, 'registerTarget')
  const ttl = options.ttl ?? DEFAULT_TTL
  if (!Number.isInteger(ttl) || ttl < 1) throw new TypeError('registerTarget: ttl must be an integer of seconds >= 1')
  const key = options.prefix + (options.name ?? encodeURIComponent(target.url))
  const value = JSON.stringify(target)
  const client = new EtcdClient(options)
  let lease: string | undefined
  let timer: NodeJS.Timeout | undefined
  let closed = false
  let retry = 100

  /** A new lease, and the key under it. */
  async function register (): Promise<void> {
    const granted = await client.grant(ttl)
    lease = granted.id
    await client.put(key, value, granted.id)
  }

  function schedule (delay: number): void {
    if (closed) return
    timer = setTimeout(() => { renew().catch(() => {}) }, delay)
    timer.unref()
  }

  async function renew (): Promise<void> {
    try {
      const left = lease === undefined ? 0 : await client.keepAlive(lease)
      if (left === 0) await register()
      retry = 100
      schedule(ttl * 1000 / 3)
    } catch (error) {
      if (closed) return
      schedule(retry)
      retry = Math.min(MAX_RETRY, retry * 2)
      try {
        options.onError?.(error as Error)
      } catch {
        // the caller's callback failing must not stop the renewals
      }
    }
  }

  try {
    await register()
  } catch (error) {
    await client.close()
    throw error
  }
  schedule(ttl * 1000 / 3)
  return Object.freeze({
    key,
    async close (): Promise<void> {
      if (closed) return
      closed = true
      clearTimeout(timer)
      try {
        if (lease !== undefined) await client.revoke(lease)
      } finally {
        await client.close()
      }
    }
  })
}
