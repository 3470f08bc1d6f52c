import type { Target } from './target'

interface Drain {
  readonly timer: NodeJS.Timeout
  readonly done: () => void
}

/**
 * Targets being removed with `drain`: each wait ends when the target's last in-flight
 * request does (see Target.onIdle), when the pool's `drainTimeout` passes, or when the
 * pool closes, whichever comes first.
 */
export class Drains {
  private readonly pending = new Set<Drain>()

  /** Resolves when `target` has no request in flight, or after `timeout` ms. */
  wait (target: Target, timeout: number): Promise<void> {
    return new Promise((resolve) => {
      const drain: Drain = {
        timer: setTimeout(() => drain.done(), timeout),
        done: () => {
          clearTimeout(drain.timer)
          target.onIdle = undefined
          this.pending.delete(drain)
          resolve()
        }
      }
      target.onIdle = drain.done
      this.pending.add(drain)
    })
  }

  /** Ends every wait at once (the pool is closing). */
  close (): void {
    for (const drain of this.pending) drain.done()
  }
}
