import { AliasTable } from './alias-table'
import type { Balancer, BalancerTarget } from './types'

/** Weighted random (HAProxy `random`): O(1) a pick through an alias table. */
export class RandomBalancer implements Balancer {
  private targets: readonly BalancerTarget[] = []
  private readonly table = new AliasTable()

  update (targets: readonly BalancerTarget[]): void {
    this.targets = targets
    this.table.build(targets)
  }

  pick (): BalancerTarget | undefined {
    if (this.targets.length === 0) return undefined
    return this.targets[this.table.sample()]
  }
}
