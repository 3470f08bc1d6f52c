import { test } from 'tap'
import { Target } from '../../lib/upstream/target'
import type { BalancerOptions } from '../../lib/index'
import { delayed, drive, load, startGateway, startUpstream, startUpstreams, type Teardown, type Upstream } from '../helpers'

const SLOW_MS = 80
const TOTAL = 1500
const CONCURRENCY = 16
/** requests sent before measuring: JIT, keep-alive connections and counters settle */
const WARMUP = 300

/** Two fast upstreams (u0, u1) and one `delay` ms slower (slow), behind a mount. */
async function slowSetup (t: Teardown, balancer: BalancerOptions, delay = SLOW_MS): Promise<{ url: string, ups: Upstream[] }> {
  const ups = await startUpstreams(t, 2)
  ups.push(await startUpstream(t, 'slow', delayed(delay)))
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: ups.map((u) => u.url), balancer } },
    routes: [{ prefix: '/api', upstream: 'pool' }]
  })
  return { url, ups }
}

// The slow target is more than twice as slow as the others (slowRatio), so least-request
// charges it for its latency once measured. Client, gateway and upstreams share this
// process's event loop: the warm-up lets JIT, keep-alive connections and latency figures
// settle first.
test('least-request sends at most 5% of requests to an upstream 80 ms slower than the others', async (t) => {
  const { url } = await slowSetup(t, 'least-request')
  await drive(`${url}/api/x`, WARMUP, CONCURRENCY)
  const counts = await drive(`${url}/api/x`, TOTAL, CONCURRENCY)
  const slow = counts.slow ?? 0
  t.comment(`counts ${JSON.stringify(counts)}`)
  t.equal((counts.u0 ?? 0) + (counts.u1 ?? 0) + slow, TOTAL, 'every request was answered by an upstream')
  t.ok(slow / TOTAL <= 0.05, `slow target got ${slow} of ${TOTAL} (${(100 * slow / TOTAL).toFixed(1)}%), at most 5% expected`)
})

test('round-robin sends about a third of requests to the slow upstream in the same setup', async (t) => {
  const { url } = await slowSetup(t, 'round-robin')
  await drive(`${url}/api/x`, WARMUP, CONCURRENCY)
  const counts = await drive(`${url}/api/x`, TOTAL, CONCURRENCY)
  const slow = counts.slow ?? 0
  t.comment(`counts ${JSON.stringify(counts)}`)
  t.equal((counts.u0 ?? 0) + (counts.u1 ?? 0) + slow, TOTAL, 'every request was answered by an upstream')
  t.ok(slow / TOTAL >= 0.30 && slow / TOTAL <= 0.37, `slow target got ${slow} of ${TOTAL}, between 30% and 37% expected`)
})

// The figure the resilience work asks for, on real servers: with one of three targets 100 ms
// slow, the slow answers stay out of the top 1%. With in-flight counts alone it would hold
// as many requests as a fast target, about 1% of them (see bench/README.md, §3).
test('least-request keeps a 100 ms target out of the p99 (one of three slow, 8 clients)', async (t) => {
  const { url } = await slowSetup(t, 'least-request', 100)
  await drive(`${url}/api/x`, WARMUP, 8)
  const latencies: number[] = []
  const counts = await drive(`${url}/api/x`, 3000, 8, latencies)
  latencies.sort((a, b) => a - b)
  const p99 = latencies[Math.floor(latencies.length * 0.99)]
  const slow = counts.slow ?? 0
  t.comment(`counts ${JSON.stringify(counts)}, p99 ${p99.toFixed(1)} ms`)
  t.equal((counts.u0 ?? 0) + (counts.u1 ?? 0) + slow, 3000, 'every request was answered by an upstream')
  t.ok(slow <= 3, `the slow target got ${slow} of 3000 (at most 0.1%)`)
  t.ok(p99 < 100, `p99 ${p99.toFixed(1)} ms is below the slow target's 100 ms`)
})

// One client: requests never overlap, every pick sees both targets idle, and only the
// weights can decide. 16 clients: in-flight counts decide, per unit of weight.
for (const concurrency of [1, CONCURRENCY]) {
  test(`weighted least-request respects weights 3:1 between equally fast upstreams (${concurrency} client${concurrency > 1 ? 's' : ''})`, async (t) => {
    const ups = await startUpstreams(t, 2)
    const { url } = await startGateway(t, {
      upstreams: { pool: { targets: [{ url: ups[0].url, weight: 3 }, ups[1].url], balancer: { type: 'least-request' } } },
      routes: [{ prefix: '/api', upstream: 'pool' }]
    })
    const total = 1200
    const counts = await load(`${url}/api/x`, total, concurrency)
    const heavy = (counts.u0 ?? 0) / total
    t.comment(`counts ${JSON.stringify(counts)}`)
    t.equal((counts.u0 ?? 0) + (counts.u1 ?? 0), total, 'every request was answered by an upstream')
    t.ok(heavy >= 0.65 && heavy <= 0.85, `weight-3 target got ${(100 * heavy).toFixed(1)}%, between 65% and 85% expected`)
  })
}

test('a target mean latency blends answers in, and starts afresh after 10 s without one', async (t) => {
  const target = new Target({ url: 'http://127.0.0.1:1', weight: 1, backup: false })
  target.observeLatency(100, 1000)
  target.observeLatency(1, 1100)
  t.ok(Math.abs(target.meanLatency - 90.1) < 1e-9, `one fast answer after a slow one moves the mean a tenth of the way (${target.meanLatency})`)
  target.observeLatency(1, 1100 + 10_001)
  t.equal(target.meanLatency, 1, 'after a 10 s silence the next answer is the mean: a once-slow target is not held back')
})
