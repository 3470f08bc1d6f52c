import { test } from 'tap'
import { startGateway, startUpstream, until, type Teardown, type Upstream } from '../helpers'

// Panic mode, end to end: real upstream servers on loopback whose health endpoint fails
// (so that active checks find them unhealthy) while they still answer real traffic.

interface Checked extends Upstream { health: number }

/** An upstream whose /healthz answers `health` and whose other paths answer 200 with its name. */
async function startChecked (t: Teardown, name: string, health: number): Promise<Checked> {
  const up = await startUpstream(t, name, (req, res, _body, upstream) => {
    res.statusCode = req.url === '/healthz' ? (upstream as Checked).health : 200
    res.setHeader('x-upstream', upstream.name)
    res.end(upstream.name)
  }) as Checked
  up.health = health
  return up
}

/** Sends `n` requests, 4 at a time; returns who answered (x-upstream, or the status). */
async function send (url: string, n: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {}
  let sent = 0
  async function client (): Promise<void> {
    while (sent < n) {
      sent++
      const res = await fetch(url)
      await res.arrayBuffer()
      const name = res.status === 200 ? res.headers.get('x-upstream') as string : `status-${res.status}`
      counts[name] = (counts[name] ?? 0) + 1
    }
  }
  await Promise.all(Array.from({ length: 4 }, client))
  return counts
}

/** `counts` are `expected` to within one request each (round robin's schedule carries over changes). */
function near (counts: Record<string, number>, expected: Record<string, number>): boolean {
  const names = new Set([...Object.keys(counts), ...Object.keys(expected)])
  return [...names].every((name) => Math.abs((counts[name] ?? 0) - (expected[name] ?? 0)) <= 1)
}

async function setup (t: Teardown) {
  const ups = [await startChecked(t, 'u0', 200), await startChecked(t, 'u1', 500), await startChecked(t, 'u2', 500)]
  const pool = (panicThreshold?: number) => ({
    targets: ups.map((u) => u.url),
    panicThreshold,
    retry: { attempts: 0 },
    healthCheck: { active: { path: '/healthz', interval: 100, healthyThreshold: 1 } }
  })
  const { app, url } = await startGateway(t, {
    upstreams: { panicky: pool(50), calm: pool(undefined) },
    routes: [{ prefix: '/panicky', upstream: 'panicky' }, { prefix: '/calm', upstream: 'calm' }]
  })
  return { app, url, ups }
}

test('below panicThreshold, traffic spreads over every primary, healthy or not', async (t) => {
  const { app, url, ups } = await setup(t)
  const status = () => app.upstreams.status().pools
  t.same(app.upstreams.get('panicky')?.targets.map((v) => v.state), ['healthy', 'unhealthy', 'unhealthy'], 'the checks made two of three unhealthy')
  t.match(status().panicky, { panic: true, available: 1 }, '1 of 3 available is below 50 %: panic')
  const counts = await send(`${url}/panicky/x`, 60)
  t.ok(near(counts, { u0: 20, u1: 20, u2: 20 }), `spread over all three: ${JSON.stringify(counts)}`)

  // the same targets and checks without panicThreshold
  t.same(app.upstreams.get('calm')?.targets.map((v) => v.state), ['healthy', 'unhealthy', 'unhealthy'])
  t.match(status().calm, { panic: false, available: 1 })
  t.same(await send(`${url}/calm/x`, 30), { u0: 30 }, 'without panicThreshold only the healthy target')

  // the unhealthy ones recover: no more panic
  ups[1].health = 200
  ups[2].health = 200
  await until('every target to be healthy', () => status().panicky.available === 3)
  t.match(status().panicky, { panic: false, available: 3 })
})

test('disabled targets are left out of panic, and out of its count', async (t) => {
  const { app, url, ups } = await setup(t)
  const pool = app.upstreams.get('panicky')
  if (pool === undefined) throw new Error('no pool')
  const panic = (): boolean => app.upstreams.status().pools.panicky.panic

  // the healthy one disabled: 0 of the 2 left are available, panic over those 2 only
  pool.setState(ups[0].url, 'disabled')
  t.equal(panic(), true)
  const counts = await send(`${url}/panicky/x`, 40)
  t.ok(near(counts, { u1: 20, u2: 20 }), `over the unhealthy ones, not the disabled one: ${JSON.stringify(counts)}`)

  // an unhealthy one disabled instead: 1 of the 2 left (50 %) is available: no panic
  pool.setState(ups[0].url, 'enabled')
  pool.setState(ups[1].url, 'disabled')
  t.equal(panic(), false, 'a disabled target does not count towards the threshold')
  t.same(await send(`${url}/panicky/x`, 20), { u0: 20 })
})
