import { test } from 'tap'
import type { BalancerOptions } from '../../lib/index'
import { load, startGateway, startUpstream, type Teardown, type Upstream } from '../helpers'

/** Sends `total` GET requests with 8 clients, each with headers from `headers()`; returns the x-upstream counts. */
async function loadWith (url: string, total: number, headers: () => Record<string, string>): Promise<Record<string, number>> {
  const counts: Record<string, number> = {}
  let sent = 0
  async function client (): Promise<void> {
    while (sent < total) {
      sent++
      const res = await fetch(url, { headers: headers() })
      const name = res.headers.get('x-upstream') ?? `status-${res.status}`
      counts[name] = (counts[name] ?? 0) + 1
      await res.arrayBuffer()
    }
  }
  await Promise.all(Array.from({ length: 8 }, client))
  return counts
}

/** Two primaries (p0, p1) and two backups (b0, b1) behind a mount. */
async function setup (t: Teardown, balancer: BalancerOptions) {
  const ups: Upstream[] = []
  for (const name of ['p0', 'p1', 'b0', 'b1']) ups.push(await startUpstream(t, name))
  const [p0, p1, b0, b1] = ups
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [p0.url, { url: b0.url, backup: true }, { url: p1.url, weight: 2 }, { url: b1.url, backup: true, weight: 1 }],
        balancer
      }
    },
    routes: [{ prefix: '/api', upstream: 'pool' }]
  })
  const pool = app.upstreams.get('pool')
  if (pool === undefined) throw new Error('pool missing')
  return { pool, url: `${url}/api/x`, p0, p1, b0, b1 }
}

const BALANCERS: BalancerOptions[] = [
  'round-robin',
  'random',
  'least-request',
  'ewma',
  { type: 'consistent-hash', key: 'header:x-user' }
]

for (const balancer of BALANCERS) {
  const name = typeof balancer === 'string' ? balancer : (balancer as { type: string }).type
  test(`${name}: backups take traffic only while no primary is available`, async (t) => {
    const { pool, url, p0, p1, b0, b1 } = await setup(t, balancer)
    // a different x-user on every request, so that consistent hashing spreads the keys too
    let user = 0
    const send = (n: number) => loadWith(url, n, () => ({ 'x-user': `user-${user++}` }))

    let counts = await send(200)
    t.equal((counts.b0 ?? 0) + (counts.b1 ?? 0), 0, `backups get nothing while both primaries are healthy: ${JSON.stringify(counts)}`)
    t.equal((counts.p0 ?? 0) + (counts.p1 ?? 0), 200, 'primaries answered every request')

    pool.setState(p0.url, 'disabled')
    counts = await send(100)
    t.same(counts, { p1: 100 }, 'one primary left: it takes everything, backups still get nothing')

    pool.setState(p1.url, 'disabled')
    t.equal(pool.target(p1.url)?.state, 'disabled', 'the view reports the primary as disabled')
    const before = b0.hits + b1.hits
    counts = await send(200)
    t.equal((counts.b0 ?? 0) + (counts.b1 ?? 0), 200, `all primaries disabled: backups take all traffic: ${JSON.stringify(counts)}`)
    t.ok((counts.b0 ?? 0) > 0 && (counts.b1 ?? 0) > 0, 'the traffic is balanced over both backups')
    t.equal(b0.hits + b1.hits - before, 200, 'the backups really received the requests')

    pool.setState(p1.url, 'enabled')
    const p0Hits = p0.hits
    counts = await send(100)
    t.same(counts, { p1: 100 }, 're-enabled primary takes the traffic back from the backups')
    t.equal(p0.hits, p0Hits, 'the still-disabled primary gets nothing')

    pool.setState(p0.url, 'enabled')
    counts = await send(200)
    t.equal((counts.b0 ?? 0) + (counts.b1 ?? 0), 0, 'both primaries back: backups idle again')
    t.ok((counts.p0 ?? 0) > 0 && (counts.p1 ?? 0) > 0, `both primaries serve again: ${JSON.stringify(counts)}`)
  })
}

test('with every target disabled, including backups, the client gets 503 FST_UPSTREAM_NO_TARGET', async (t) => {
  const { pool, url, p0, p1, b0, b1 } = await setup(t, 'round-robin')
  for (const u of [p0, p1, b0, b1]) pool.setState(u.url, 'disabled')
  const res = await fetch(url)
  t.equal(res.status, 503)
  t.equal((await res.json() as { code: string }).code, 'FST_UPSTREAM_NO_TARGET')
  pool.setState(b1.url, 'enabled')
  const counts = await load(url, 20, 2)
  t.same(counts, { b1: 20 }, 'a re-enabled backup serves when it is the only target available')
})
