import net, { type LookupFunction } from 'node:net'
import type { TargetView } from '../contracts'
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
