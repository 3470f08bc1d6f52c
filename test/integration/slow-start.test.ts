import { performance } from 'node:perf_hooks'
import { test } from 'tap'
import type { TargetView } from '../../lib/index'
import { sleep, startGateway, startUpstream, startUpstreams, until, type Upstream } from '../helpers'

// Slow start, end to end: a real gateway and real upstream servers on loopback; the
// weights are sampled over the window while real requests are balanced by them.

interface Sample { at: number, weight: number }

/**
 * Samples `view.effectiveWeight` every 10 ms from `start` until it reaches `full` (or
 * `timeout` ms pass); `at` is the time since `start`.
 */
async function sampleRamp (view: TargetView, start: number, full: number, timeout = 4000): Promise<Sample[]> {
  const samples: Sample[] = []
  for (;;) {
    const at = performance.now() - start
    samples.push({ at, weight: view.effectiveWeight })
    if (view.effectiveWeight === full || at > timeout) return samples
    await sleep(10)
  }
}

/** Checks a ramp of `full` over `window` ms that starts from `min` (its weight at once). */
/** A tap test (the argument of a test's callback). */
type Tap = Parameters<Parameters<typeof test>[0]>[0]

function checkRamp (t: Tap, samples: Sample[], min: number, full: number, window: number): void {
  t.equal(samples[0].weight, min, `starts at ${min}`)
  const last = samples[samples.length - 1]
  t.equal(last.weight, full, `reaches its full weight ${full}`)
  t.ok(last.at >= window, `not before the window is over (${Math.round(last.at)} ms)`)
  t.ok(last.at < window + 1000, `within the window, give or take the timer (${Math.round(last.at)} ms)`)
  t.ok(samples.every((s, i) => i === 0 || s.weight >= samples[i - 1].weight), 'never goes down')
  // the weight follows the time since the start (it is recomputed every window / 20 ms)
  t.ok(samples.every((s) => s.weight <= Math.max(min, (full * s.at) / window) + 1e-9), 'never ahead of the time passed')
  const between = new Set(samples.filter((s) => s.weight > min && s.weight < full).map((s) => s.weight))
  t.ok(between.size >= 5, `it ramps in steps: ${between.size} weights between ${min} and ${full}`)
  const middle = samples.find((s) => s.at >= window / 2)
  t.ok(middle !== undefined && middle.weight > min && middle.weight < full, `half way, part of the weight (${middle?.weight})`)
}

/** The upstream that answered a request to `url`. */
async function who (url: string): Promise<string> {
  const res = await fetch(url)
  await res.arrayBuffer()
  return res.headers.get('x-upstream') ?? `status-${res.status}`
}

/**
 * True when `counts` are `expected` to within one request each: round robin keeps its
 * schedule across weight and state changes, so a count may be one ahead or behind.
 */
function near (counts: Record<string, number>, expected: Record<string, number>): boolean {
  const names = new Set([...Object.keys(counts), ...Object.keys(expected)])
  return [...names].every((name) => Math.abs((counts[name] ?? 0) - (expected[name] ?? 0)) <= 1)
}

async function send (url: string, n: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {}
  for (let i = 0; i < n; i++) {
    const name = await who(url)
    counts[name] = (counts[name] ?? 0) + 1
  }
  return counts
}

test('a target added after ready ramps from a small weight to its full weight within the window', async (t) => {
  const ups = await startUpstreams(t, 3)
  const [old0, old1, added] = ups
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [old0.url, old1.url], slowStart: { window: 1000 } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const pool = app.upstreams.get('pool')
  if (pool === undefined) throw new Error('no pool')
  t.same(pool.targets.map((v) => v.effectiveWeight), [1, 1], 'targets present at startup do not ramp')

  const start = performance.now()
  const view = pool.addTarget(added.url)
  t.equal(view.weight, 1, 'the configured weight is kept')
  t.equal(view.effectiveWeight, 0.1, 'the effective weight starts at minWeightPercent (10 %) of it')

  // traffic during the ramp, each request with the added target's weight when it was sent
  const traffic: Array<{ weight: number, upstream: string }> = []
  const state = { ramping: true }
  const client = (async () => {
    while (state.ramping) {
      const weight = view.effectiveWeight
      traffic.push({ weight, upstream: await who(`${url}/x`) })
    }
  })()
  const samples = await sampleRamp(view, start, 1)
  state.ramping = false
  await client
  checkRamp(t, samples, 0.1, 1, 1000)
  t.same(pool.targets.map((v) => v.effectiveWeight), [1, 1, 1], 'the others kept their weight')

  // the first half of the window: the added target has at most half of its weight (and
  // 0.3 on average), so it gets clearly less than either established one, all weight 1
  const early = traffic.filter((r) => r.weight <= 0.5)
  const count = (name: string): number => early.filter((r) => r.upstream === name).length
  t.ok(early.length >= 30, `enough requests early in the window (${early.length})`)
  const counts = JSON.stringify({ u0: count('u0'), u1: count('u1'), u2: count('u2') })
  t.ok(count('u2') < count('u0') / 2 && count('u2') < count('u1') / 2, `early on, the added target got less than half of what an established one got: ${counts}`)
  t.ok(count('u2') > 0, 'but some traffic')

  // at full weight, its full share
  const full = await send(`${url}/x`, 60)
  t.ok(near(full, { u0: 20, u1: 20, u2: 20 }), `at full weight, its full share: ${JSON.stringify(full)}`)
})

test('a target that comes back from disabled ramps up again', async (t) => {
  const ups = await startUpstreams(t, 2)
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [ups[0].url, { url: ups[1].url, weight: 4 }], slowStart: { window: 1000, minWeightPercent: 25 } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const pool = app.upstreams.get('pool')
  if (pool === undefined) throw new Error('no pool')
  const view = pool.targets[1]
  t.equal(view.effectiveWeight, 4, 'full weight at startup')

  pool.setState(ups[1].url, 'disabled')
  t.same(await send(`${url}/x`, 4), { u0: 4 })
  const start = performance.now()
  pool.setState(ups[1].url, 'enabled')
  t.equal(view.state, 'healthy')
  const samples = await sampleRamp(view, start, 4)
  checkRamp(t, samples, 1, 4, 1000)
  const after = await send(`${url}/x`, 20)
  t.ok(near(after, { u0: 4, u1: 16 }), `then its full share: ${JSON.stringify(after)}`)
})

test('a target that comes back from unhealthy ramps up again', async (t) => {
  let health = 200
  const flaky = await startUpstream(t, 'flaky', (req, res, _body, upstream) => {
    res.statusCode = req.url === '/healthz' ? health : 200
    res.setHeader('x-upstream', upstream.name)
    res.end()
  })
  const steady = await startUpstream(t, 'steady')
  const { app } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [steady.url, flaky.url],
        slowStart: { window: 1000 },
        healthCheck: { active: { path: '/healthz', interval: 50, unhealthyThreshold: 1, healthyThreshold: 1 } }
      }
    }
  })
  const view = app.upstreams.get('pool')?.targets[1] as TargetView
  t.equal(view.effectiveWeight, 1, 'full weight at startup, with a passed first probe')
  health = 500
  await until('the target to turn unhealthy', () => view.state === 'unhealthy')
  health = 200
  await until('the target to turn healthy', () => view.state === 'healthy')
  const start = performance.now()
  t.ok(view.effectiveWeight <= 0.15, `back with a small weight (${view.effectiveWeight})`)
  const samples = await sampleRamp(view, start, 1)
  t.equal(samples[samples.length - 1].weight, 1, 'then its full weight')
  t.ok(samples.some((s) => s.weight > 0.2 && s.weight < 1), 'through weights in between')
})

test('without slowStart a new or returning target takes its full weight at once', async (t) => {
  const ups = await startUpstreams(t, 3)
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [ups[0].url, ups[1].url] } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const pool = app.upstreams.get('pool')
  if (pool === undefined) throw new Error('no pool')
  const view = pool.addTarget({ url: ups[2].url, weight: 2 })
  t.equal(view.effectiveWeight, 2)
  const counts = await send(`${url}/x`, 40)
  t.ok(near(counts, { u0: 10, u1: 10, u2: 20 }), `its full share from the first request: ${JSON.stringify(counts)}`)
  pool.setState(ups[2].url, 'disabled')
  pool.setState(ups[2].url, 'enabled')
  t.equal(view.effectiveWeight, 2)
  await sleep(100)
  t.equal(view.effectiveWeight, 2, 'and it stays there')
})

test('targets present at startup do not ramp, nor those of a pool added after ready', async (t) => {
  const ups: Upstream[] = await startUpstreams(t, 3)
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [ups[0].url, { url: ups[1].url, weight: 3 }],
        slowStart: { window: 1000 },
        healthCheck: { active: { path: '/', interval: 100 } }
      }
    },
    routes: [{ prefix: '/pool', upstream: 'pool' }]
  }, (app) => {
    app.get('/later/*', (_request, reply) => reply.forward('later'))
  })
  t.same(app.upstreams.get('pool')?.targets.map((v) => v.effectiveWeight), [1, 3])
  t.same(await send(`${url}/pool/x`, 40), { u0: 10, u1: 30 }, 'their full shares from the first request')
  const later = app.upstreams.add('later', { targets: [ups[1].url, { url: ups[2].url, weight: 2 }], slowStart: { window: 1000 } })
  t.same(later.targets.map((v) => v.effectiveWeight), [1, 2])
  t.same(await send(`${url}/later/x`, 30), { u1: 10, u2: 20 })
  await sleep(100)
  t.same(app.upstreams.get('pool')?.targets.map((v) => v.effectiveWeight), [1, 3], 'still full')
})
