import type { Logger } from '../contracts'
import { EtcdError, type EtcdClient, type Watch, type WatchEvent } from './client'

/** One change under a watched prefix: a key's new value, or null when it was deleted. */
export interface PrefixChange {
  key: string
  value: string | null
}

/** The longest wait between two attempts to reach etcd again (ms). */
const MAX_BACKOFF = 2000
const FIRST_BACKOFF = 100
/** How often the member a watch is on is asked whether it is healthy (ms). */
const HEALTH_INTERVAL = 2000

/**
 * Every key under a prefix, kept in step with etcd: a read (which gives the revision it
 * was made at), then a watch from the next revision, so that no change between the two is
 * missed. The listener gets the changes, the first time every key.
 *
 * When the watch breaks (the member went away or lost its leader, the connection dropped,
 * or etcd compacted past it), the last known keys stay as they are, and the prefix is read
 * afresh, with backoff, from whichever member answers: the listener then gets only what
 * differs from what it had. An outage is logged once when it starts and once when it ends.
 */
export class PrefixWatch {
  private readonly client: EtcdClient
  private readonly prefix: string
  private readonly listener: (changes: PrefixChange[]) => void
  private readonly log: Logger
  /** what the prefix holds, in words, for the log ('pools', 'targets of pool api') */
  private readonly what: string
  /** the keys as last applied */
  private readonly keys = new Map<string, string>()
  private watch: Watch | undefined = undefined
  private timer: NodeJS.Timeout | undefined = undefined
  private health: NodeJS.Timeout | undefined = undefined
  private backoff = FIRST_BACKOFF
  /** when the current outage began (Date.now()), undefined while etcd answers */
  private outage: number | undefined = undefined
  private isSynced = false
  private readonly waiting: Array<(synced: boolean) => void> = []
  private closed = false

  constructor (client: EtcdClient, prefix: string, listener: (changes: PrefixChange[]) => void, log: Logger, what: string) {
    this.client = client
    this.prefix = prefix
    this.listener = listener
    this.log = log
    this.what = what
  }

  /** Starts reading and watching; `synced()` says when the first read is applied. */
  start (): void {
    this.sync()
  }

  /** Resolves true once the first read is applied, false if it was not within `timeout` ms (or the watch was closed first). */
  async synced (timeout: number): Promise<boolean> {
    if (this.isSynced) return true
    return await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => { resolve(false) }, timeout)
      timer.unref()
      this.waiting.push((synced) => {
        clearTimeout(timer)
        resolve(synced)
      })
    })
  }

  close (): void {
    this.closed = true
    this.watch?.close()
    this.watch = undefined
    clearTimeout(this.timer)
    clearInterval(this.health)
    for (const wake of this.waiting.splice(0)) wake(false)
  }

  private sync (): void {
    this.timer = undefined
    this.read().catch((error: Error) => { this.broken(error) })
  }

  private async read (): Promise<void> {
    const { revision, kvs } = await this.client.range(this.prefix)
    if (this.closed) return
    const changes: PrefixChange[] = []
    const seen = new Set<string>()
    for (const kv of kvs) {
      seen.add(kv.key)
      if (this.keys.get(kv.key) !== kv.value) {
        this.keys.set(kv.key, kv.value)
        changes.push({ key: kv.key, value: kv.value })
      }
    }
    for (const key of [...this.keys.keys()]) {
      if (seen.has(key)) continue
      this.keys.delete(key)
      changes.push({ key, value: null })
    }
    if (this.outage !== undefined) {
      this.log.info({ prefix: this.prefix, ms: Date.now() - this.outage, changes: changes.length }, `etcd is reachable again: the ${this.what} are read afresh`)
      this.outage = undefined
    }
    this.backoff = FIRST_BACKOFF
    this.watch = this.client.watch(this.prefix, revision + 1, { events: this.events, ended: this.broken })
    this.health = setInterval(this.checkHealth, HEALTH_INTERVAL)
    this.health.unref()
    if (changes.length > 0) this.deliver(changes)
    if (!this.isSynced) {
      this.isSynced = true
      for (const wake of this.waiting.splice(0)) wake(true)
    }
  }

  private readonly events = (events: WatchEvent[]): void => {
    if (this.closed) return
    const changes: PrefixChange[] = []
    for (const event of events) {
      if (event.value === null) {
        if (!this.keys.delete(event.key)) continue
      } else {
        this.keys.set(event.key, event.value)
      }
      changes.push({ key: event.key, value: event.value })
    }
    if (changes.length > 0) this.deliver(changes)
  }

  /** Hands changes to the listener: what it cannot apply is its affair, no failure of etcd's. */
  private deliver (changes: PrefixChange[]): void {
    try {
      this.listener(changes)
    } catch (error) {
      this.log.warn({ prefix: this.prefix, err: { message: (error as Error).message } }, `a change of the ${this.what} from etcd could not be applied`)
    }
  }

  /** The watch, or a read, failed: keep what is known, and read afresh after a while. */
  private readonly broken = (error: Error): void => {
    if (this.closed) return
    this.watch?.close()
    this.watch = undefined
    clearInterval(this.health)
    this.health = undefined
    if (error instanceof EtcdError && error.code === 'canceled') {
      // compacted past the watch: a fresh read catches up, no outage
      this.log.info({ prefix: this.prefix, reason: error.message }, `etcd ended the watch of the ${this.what}: reading them afresh`)
    } else if (this.outage === undefined) {
      this.outage = Date.now()
      this.log.warn({ prefix: this.prefix, err: { message: error.message } }, `etcd is unreachable: the ${this.what} stay as last known; trying again`)
    }
    if (this.timer !== undefined) return
    // jittered, so that many instances do not come back at the same instant
    const delay = this.backoff / 2 + Math.random() * this.backoff / 2
    this.backoff = Math.min(MAX_BACKOFF, this.backoff * 2)
    this.timer = setTimeout(() => { this.sync() }, delay)
    this.timer.unref()
  }

  private readonly checkHealth = (): void => {
    const watch = this.watch
    if (watch === undefined) return
    this.client.healthy(watch.member).then((healthy) => {
      if (!healthy && this.watch === watch) this.broken(new Error('the member the watch is on is not healthy'))
    }, () => {})
  }
}
