import { channels } from '../channels'
import type { Logger, SplitChangeEvent, SplitStatus } from '../contracts'
import { DuplicateError } from '../errors'
import type { SplitOptions } from './schema'
import { Split } from './split'

/** A split as users get it: `app.upstreams.split(name)`. */
export interface TrafficSplit {
  readonly name: string
  /** the weights of the branches without rules, by pool */
  weights (): Record<string, number>
  /**
   * changes the weights of the branches named by pool (integers 0-1000; the others keep
   * theirs); logged and published on `fastify-upstream:split`
   */
  setWeights (weights: Record<string, number>): void
  /** the split's part of `upstreams.status()` */
  status (): SplitStatus
}

/** The named splits of one plugin instance: set at register, re-weighted at run time. */
export class SplitRegistry implements Iterable<Split> {
  private readonly splits = new Map<string, Split>()
  private readonly faces = new Map<string, TrafficSplit>()
  private readonly log: Logger
  private readonly hook: ((event: SplitChangeEvent) => void) | undefined

  constructor (log: Logger, hook?: (event: SplitChangeEvent) => void) {
    this.log = log
    this.hook = hook
  }

  /** Adds a split; `path` names its options in errors (`splits.api`, `routes[2].upstream`). */
  add (name: string, options: SplitOptions, path: string): Split {
    if (this.splits.has(name)) throw new DuplicateError(`Split "${name}"`)
    const split = new Split(name, options, path)
    this.splits.set(name, split)
    this.faces.set(name, Object.freeze({
      name,
      weights: () => split.weights(),
      setWeights: (weights: Record<string, number>) => { this.setWeights(split, weights) },
      status: () => split.status()
    }))
    return split
  }

  get (name: string): Split | undefined {
    return this.splits.get(name)
  }

  has (name: string): boolean {
    return this.splits.has(name)
  }

  /** The public face of split `name`. */
  api (name: string): TrafficSplit | undefined {
    return this.faces.get(name)
  }

  status (): Record<string, SplitStatus> {
    const status: Record<string, SplitStatus> = {}
    for (const [name, split] of this.splits) status[name] = split.status()
    return status
  }

  [Symbol.iterator] (): Iterator<Split> {
    return this.splits.values()
  }

  private setWeights (split: Split, weights: Record<string, number>): void {
    const from = split.weights()
    split.setWeights(weights)
    const event: SplitChangeEvent = { split: split.name, from, to: split.weights() }
    this.log.info(event, 'upstream split re-weighted')
    this.hook?.(event)
    channels.split.publish(event)
  }
}
