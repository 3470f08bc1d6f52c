// Maglev tables built from the same targets in any order are the same table: gateway
// instances that learnt of the targets in different orders send each key to the same target.
import { test } from 'tap'
import { ConsistentHashBalancer } from '../../lib/balancers/consistent-hash'
import type { BalancerTarget } from '../../lib/balancers/types'

function target (url: string, weight = 1): BalancerTarget {
  return { url, weight, inflight: 0, latency: 0, meanLatency: 0, latencyUpdatedAt: 0 }
}

test('the same targets in another order give every key the same target', async (t) => {
  const targets = [target('http://127.0.0.1:3001', 2), target('http://127.0.0.1:3002'), target('http://127.0.0.1:3003', 3), target('http://127.0.0.1:3004')]
  const orders = [targets, [...targets].reverse(), [targets[2], targets[0], targets[3], targets[1]]]
  const balancers = orders.map((order) => {
    const balancer = new ConsistentHashBalancer({ key: 'header:x-user', tableSize: 4099 })
    balancer.update(order)
    return balancer
  })
  let agree = 0
  for (let i = 0; i < 10_000; i++) {
    const request = { url: '/', headers: { 'x-user': `user-${i}` } }
    const urls = balancers.map((balancer) => balancer.pick(request)?.url)
    if (urls[0] !== undefined && urls.every((url) => url === urls[0])) agree++
  }
  t.equal(agree, 10_000, 'all 10,000 keys agree')
})
