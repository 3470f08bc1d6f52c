import { ConsistentHashBalancer } from './consistent-hash'
import { EwmaBalancer } from './ewma'
import { LeastRequestBalancer } from './least-request'
import { RandomBalancer } from './random'
import { RoundRobinBalancer } from './round-robin'
import type { BalancerOptions } from './schema'
import type { Balancer } from './types'

export type { Balancer, BalancerFactory, BalancerTarget, SelectRequest } from './types'
export { ConsistentHashBalancer, EwmaBalancer, LeastRequestBalancer, RandomBalancer, RoundRobinBalancer }

/**
 * True for a custom balancer object. It is told apart by its methods, not by the absence
 * of `type`: a custom balancer may well have a `type` of its own, and must not then be
 * mistaken for a built-in's options (and silently replaced by round robin).
 */
function isCustom (option: object): option is Balancer {
  return typeof (option as Partial<Balancer>).pick === 'function' && typeof (option as Partial<Balancer>).update === 'function'
}

/** Builds the balancer a pool option names: a built-in by name or `{ type }`, or a custom one. */
export function createBalancer (option: BalancerOptions): Balancer {
  if (typeof option === 'function') return option()
  if (typeof option === 'string') return createBalancer({ type: option } as BalancerOptions)
  if (isCustom(option) || !('type' in option)) return option as Balancer
  switch (option.type) {
    case 'random': return new RandomBalancer()
    case 'least-request': return new LeastRequestBalancer(option)
    case 'ewma': return new EwmaBalancer(option)
    case 'consistent-hash': return new ConsistentHashBalancer(option)
    default: return new RoundRobinBalancer()
  }
}

/** The name a status report shows for a balancer option. */
export function balancerName (option: BalancerOptions): string {
  if (typeof option === 'string') return option
  if (typeof option === 'object' && !isCustom(option) && 'type' in option) return option.type
  return 'custom'
}
