import { performance } from 'node:perf_hooks'
import { test } from 'tap'
import { EwmaBalancer, type Balancer, type BalancerTarget } from '../../lib/index'
import { delayed, drive, startGateway, startUpstream, startUpstreams } from '../helpers'

const SLOW_MS = 80

/** A fake target as the pool would hand it to a balancer. */
function fake (url: string, latency: number, latencyUpdatedAt: number, inflight = 0, weight = 1): BalancerTarget {
  return { url, latency, meanLatency: latency, latencyUpdatedAt, inflight, weight }
}

/** How often each target is picked over `n` picks. */
function tally (balancer: Balancer, n: number): Record<string, number> {
  const counts: Record<string, number> = {}
  for (let i = 0; i < n; i++) {
    const url = balancer.pick({ headers: {}, url: '/' })?.url ?? 'none'
    counts[url] = (counts[url] ?? 0) + 1
  }
  return counts
}

test('ewma sends at most 5% of requests to an upstream 80 ms slower than the others', async (t) => {
  const ups = await startUpstreams(t, 2)
  ups.push(await startUpstream(t, 'slow', delayed(SLOW_MS)))
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: ups.map((u) => u.url), balancer: 'ewma' } },
    routes: [{ prefix: '/api', upstream: 'pool' }]
  })
  const total = 1500
  // no warm-up: the count includes the cold start, when no target has been measured yet and
  // the slow one must not take every pick until its first answer comes back
  const counts = await drive(`${url}/api/x`, total, 16)
  const slow = counts.slow ?? 0
  t.comment(`counts ${JSON.stringify(counts)}`)
  t.equal((counts.u0 ?? 0) + (counts.u1 ?? 0) + slow, total, 'every request was answered by an upstream')
  t.ok(slow / total <= 0.05, `slow target got ${slow} of ${total} (${(100 * slow / total).toFixed(1)}%), at most 5% expected`)
  const view = app.upstreams.get('pool')?.target(ups[2].url)
  t.ok((view?.latency ?? 0) >= SLOW_MS * 0.9, `the pool measured the slow target's latency (${view?.latency} ms)`)
})

test('ewma: the cost of a once-slow target decays with idle time, so it is picked again', async (t) => {
  const decay = 100
  const balancer = new EwmaBalancer({ decay })
  const now = performance.now()
  // "fast" was measured just now at 5 ms; "slow" measured 100 ms some time ago
  const at = (idle: number) => [fake('http://fast', 5, now), fake('http://slow', 100, now - idle)]

  balancer.update(at(0))
  t.same(tally(balancer, 500), { 'http://fast': 500 }, 'freshly measured as slow: never picked')

  balancer.update(at(decay))
  t.same(tally(balancer, 500), { 'http://fast': 500 }, 'after one decay time (100 ms → ~37 ms): still dearer than 5 ms')

  balancer.update(at(5 * decay))
  t.same(tally(balancer, 500), { 'http://slow': 500 }, 'after five decay times (100 ms → ~0.7 ms): cheaper than 5 ms, picked')

  // the fast target's cost decays too when it has not been measured: only relative age counts
  balancer.update([fake('http://fast', 5, now - 10 * decay), fake('http://slow', 100, now - 5 * decay)])
  t.same(tally(balancer, 500), { 'http://fast': 500 }, 'when both are idle, the one measured faster more recently stays cheaper')
})

test('ewma: in-flight requests multiply the cost, and weights divide it', async (t) => {
  const now = performance.now()
  const balancer = new EwmaBalancer({ decay: 10_000 })
  balancer.update([fake('http://a', 10, now, 0), fake('http://b', 10, now, 3)])
  t.same(tally(balancer, 200), { 'http://a': 200 }, 'equal latency: the one with fewer in flight wins')

  // 10 ms × 4 in flight = 40 vs 30 ms × 1 = 30: latency × load, not latency alone
  balancer.update([fake('http://a', 10, now, 3), fake('http://b', 30, now, 0)])
  t.same(tally(balancer, 200), { 'http://b': 200 }, 'a faster but loaded target loses to a slower idle one')

  balancer.update([fake('http://a', 10, now, 0, 1), fake('http://b', 20, now, 0, 4)])
  t.same(tally(balancer, 200), { 'http://b': 200 }, 'weight 4 makes a 2× slower target the cheaper one')
})

test('ewma: an unmeasured target takes one request at a time until its first answer', async (t) => {
  const now = performance.now()
  const balancer = new EwmaBalancer()
  const fresh = { url: 'http://new', latency: 0, meanLatency: 0, latencyUpdatedAt: 0, inflight: 0, weight: 1 }
  const known = fake('http://known', 20, now, 5)
  balancer.update([fresh, known])
  t.same(tally(balancer, 100), { 'http://new': 100 }, 'idle and unmeasured: it looks cheap, so it gets probed')
  fresh.inflight = 1
  t.same(tally(balancer, 100), { 'http://known': 100 }, 'with a probe out, it waits for the answer even against a loaded target')
  balancer.update([{ ...fresh, inflight: 3 }, { ...fresh, url: 'http://new2', inflight: 1 }])
  t.same(tally(balancer, 100), { 'http://new2': 100 }, 'among unmeasured busy targets, the one with fewer in flight wins')
})

test('ewma: an unmeasured target costs initialLatency', async (t) => {
  const now = performance.now()
  const cheap = new EwmaBalancer({ initialLatency: 1 })
  cheap.update([fake('http://new', 0, 0), fake('http://known', 20, now)])
  t.same(tally(cheap, 200), { 'http://new': 200 }, 'a new target with a low initial latency is tried first')

  const dear = new EwmaBalancer({ initialLatency: 1000 })
  dear.update([fake('http://new', 0, 0), fake('http://known', 20, now)])
  t.same(tally(dear, 200), { 'http://known': 200 }, 'a high initial latency keeps new targets out until measured')
})
