import Fastify from 'fastify'
import { performance } from 'node:perf_hooks'
import { test } from 'tap'
import fastifyUpstream, {
  ConsistentHashBalancer,
  EwmaBalancer,
  LeastRequestBalancer,
  RandomBalancer,
  RoundRobinBalancer,
  type Balancer,
  type BalancerTarget,
  type SelectRequest
} from '../../lib/index'
import { load, startGateway, startUpstreams } from '../helpers'

/** A plain target as the pool hands it to balancers: only picked, never connected to (its URL is a name). */
interface FakeTarget { url: string, weight: number, inflight: number, latency: number, meanLatency: number, latencyUpdatedAt: number }

function targets (...weights: number[]): FakeTarget[] {
  return weights.map((weight, i) => ({ url: `http://10.0.0.${i + 1}:3000`, weight, inflight: 0, latency: 0, meanLatency: 0, latencyUpdatedAt: 0 }))
}

/** Gives each target a mean latency (ms), measured `age` ms ago. */
function measured (list: FakeTarget[], latencies: number[], age = 0): FakeTarget[] {
  const at = performance.now() - age
  list.forEach((target, i) => { target.latency = target.meanLatency = latencies[i]; target.latencyUpdatedAt = at })
  return list
}

const NO_KEY: SelectRequest = { url: '/', headers: {} }

/** How often each target URL is picked over `n` picks (request built from the pick number). */
function tally (balancer: Balancer, n: number, request: (i: number) => SelectRequest = () => NO_KEY): Record<string, number> {
  const counts: Record<string, number> = {}
  for (let i = 0; i < n; i++) {
    const url = balancer.pick(request(i))?.url ?? 'none'
    counts[url] = (counts[url] ?? 0) + 1
  }
  return counts
}

const BUILT_INS: Array<[string, () => Balancer]> = [
  ['round-robin', () => new RoundRobinBalancer()],
  ['random', () => new RandomBalancer()],
  ['least-request', () => new LeastRequestBalancer()],
  ['ewma', () => new EwmaBalancer()],
  ['consistent-hash', () => new ConsistentHashBalancer({ key: 'header:x-user', tableSize: 101 })]
]

test('every built-in balancer: no targets → undefined; one target → always that one', async (t) => {
  for (const [name, make] of BUILT_INS) {
    const balancer = make()
    t.equal(balancer.pick(NO_KEY), undefined, `${name}: undefined before the first update`)
    balancer.update([])
    t.equal(balancer.pick(NO_KEY), undefined, `${name}: undefined with an empty list`)
    t.equal(balancer.pick({ url: '/', headers: { 'x-user': 'a' } }), undefined, `${name}: undefined with an empty list, with a key`)

    const [only] = targets(5)
    balancer.update([only])
    const keyed = (i: number): SelectRequest => ({ url: `/${i}`, headers: i % 2 === 0 ? { 'x-user': `u${i}` } : {} })
    t.same(tally(balancer, 200, keyed), { [only.url]: 200 }, `${name}: a single target is always returned`)
    t.equal(balancer.pick(NO_KEY), only, `${name}: it is the very object given to update()`)

    balancer.update(targets(1, 1))
    balancer.update([])
    t.equal(balancer.pick(NO_KEY), undefined, `${name}: emptied again → undefined`)
  }
})

test('round-robin: equal weights rotate exactly, in order', async (t) => {
  const balancer: Balancer = new RoundRobinBalancer()
  const list = targets(1, 1, 1)
  balancer.update(list)
  const sequence = Array.from({ length: 30 }, () => list.indexOf(balancer.pick(NO_KEY) as FakeTarget))
  t.same(sequence, Array.from({ length: 30 }, (_, i) => i % 3), 'a, b, c, a, b, c, …')
})

test('round-robin: the rotation survives update() (the pool refreshes on state changes and slow-start steps)', async (t) => {
  const balancer: Balancer = new RoundRobinBalancer()
  const list = targets(1, 1, 1)
  const sequence: number[] = []
  for (let i = 0; i < 30; i++) {
    balancer.update(list)
    sequence.push(list.indexOf(balancer.pick(NO_KEY) as FakeTarget))
  }
  t.same(sequence, Array.from({ length: 30 }, (_, i) => i % 3), 'an update before every pick does not restart the rotation at the first target')

  // weights 3:1, with the heavy target's weight re-applied between picks (as a ramp does)
  const weighted = targets(3, 1)
  balancer.update(weighted)
  const counts = [0, 0]
  for (let i = 0; i < 400; i++) {
    balancer.update(weighted)
    counts[weighted.indexOf(balancer.pick(NO_KEY) as FakeTarget)]++
  }
  t.same(counts, [300, 100], 'weights are met exactly through updates')

  // a target that leaves and comes back joins the rotation without a burst
  balancer.update(list)
  balancer.update([list[0], list[1]])
  for (let i = 0; i < 5; i++) balancer.pick(NO_KEY)
  balancer.update(list)
  const back = Array.from({ length: 9 }, () => list.indexOf(balancer.pick(NO_KEY) as FakeTarget))
  t.same([0, 1, 2].map((i) => back.filter((x) => x === i).length), [3, 3, 3], `after it returns, each gets a third: ${back.join(',')}`)
})

test('round-robin: weights 3:2:1 are met exactly over every full cycle, and interleave', async (t) => {
  const balancer: Balancer = new RoundRobinBalancer()
  const list = targets(3, 2, 1)
  balancer.update(list)
  for (let cycle = 0; cycle < 20; cycle++) {
    const counts = [0, 0, 0]
    let run = 0
    let longest = 0
    let previous = -1
    for (let i = 0; i < 6; i++) {
      const index = list.indexOf(balancer.pick(NO_KEY) as FakeTarget)
      counts[index]++
      run = index === previous ? run + 1 : 1
      longest = Math.max(longest, run)
      previous = index
    }
    if (!t.same(counts, [3, 2, 1], `cycle ${cycle}: exactly 3, 2 and 1 picks`)) break
    t.ok(longest <= 2, `cycle ${cycle}: the heavy target is not picked 3 times in a row (smooth)`)
  }
})

test('random: picks follow the weights (plain logic, 60000 picks)', async (t) => {
  const balancer = new RandomBalancer()
  const list = targets(3, 2, 1)
  balancer.update(list)
  const counts = tally(balancer, 60_000)
  for (const [i, share] of [3 / 6, 2 / 6, 1 / 6].entries()) {
    const got = (counts[list[i].url] ?? 0) / 60_000
    t.ok(Math.abs(got - share) < 0.01, `target ${i}: ${(100 * got).toFixed(2)}% (expected ${(100 * share).toFixed(1)}% ± 1)`)
  }
  // weights far apart still work (the alias table carries the rounding)
  const skewed = targets(1000, 1)
  balancer.update(skewed)
  const few = tally(balancer, 100_000)[skewed[1].url] ?? 0
  t.ok(few > 30 && few < 200, `weight 1 against 1000 still gets about 0.1% (${few} of 100000)`)
})

test('least-request: the two draws are distinct targets', async (t) => {
  const balancer = new LeastRequestBalancer()
  const two = targets(1, 1)
  two[0].inflight = 5
  balancer.update(two)
  t.same(tally(balancer, 2000), { [two[1].url]: 2000 }, 'of two equal targets, the one with fewer in flight is picked every time')
  two[0].inflight = 0
  two[1].inflight = 1
  t.same(tally(balancer, 2000), { [two[0].url]: 2000 }, 'and follows the in-flight counts as they change')

  const three = targets(1, 1, 1)
  three[2].inflight = 9
  balancer.update(three)
  const counts = tally(balancer, 3000)
  t.equal(counts[three[2].url], undefined, 'the busiest of three is never picked: it is never compared with itself')
  t.ok(counts[three[0].url] > 1200 && counts[three[1].url] > 1200, `the two idle ones share the picks: ${JSON.stringify(counts)}`)

  // with every weight on one target, the second draw would keep hitting it without the fallback
  const lopsided = targets(1000, 1)
  lopsided[0].inflight = 2
  balancer.update(lopsided)
  t.same(tally(balancer, 2000), { [lopsided[1].url]: 2000 }, 'even when the weights make the same target likely twice')
})

test('least-request: idle targets tie, so light traffic follows the weights', async (t) => {
  const balancer = new LeastRequestBalancer()
  const list = targets(3, 1)
  balancer.update(list)
  const heavy = (tally(balancer, 40_000)[list[0].url] ?? 0) / 40_000
  t.ok(Math.abs(heavy - 0.75) < 0.01, `weight 3 of 4 with nothing in flight: ${(100 * heavy).toFixed(1)}% (75 ± 1)`)
  list[0].inflight = 3
  list[1].inflight = 1
  const tied = (tally(balancer, 40_000)[list[0].url] ?? 0) / 40_000
  t.ok(Math.abs(tied - 0.75) < 0.01, `in flight in proportion to the weights (3 vs 1) is a tie too: ${(100 * tied).toFixed(1)}%`)
  list[0].inflight = 4
  t.same(tally(balancer, 1000), { [list[1].url]: 1000 }, 'more than its share in flight: the heavy target yields')
})

test('least-request: a target more than slowRatio times slower is charged for its latency', async (t) => {
  const balancer = new LeastRequestBalancer()
  const list = measured(targets(1, 1, 1), [1, 1, 100])
  balancer.update(list)
  t.equal(tally(balancer, 3000)[list[2].url], undefined, 'all idle: the 100 ms target loses every comparison')
  list[0].inflight = 8
  list[1].inflight = 8
  t.equal(tally(balancer, 3000)[list[2].url], undefined, 'fast targets 8 deep still cost less than one request to the slow one')
  list[0].inflight = list[1].inflight = 60
  const counts = tally(balancer, 3000)
  t.ok(counts[list[2].url] > 1500, `with 60 in flight each, the fast ones yield: ${JSON.stringify(counts)}`)

  const comparable = measured(targets(3, 1), [1, 2.9])
  balancer.update(comparable)
  const heavy = (tally(balancer, 40_000)[comparable[0].url] ?? 0) / 40_000
  t.ok(Math.abs(heavy - 0.75) < 0.01, `1 ms against 2.9 ms is within the ratio (2 with a 1 ms floor): weights decide, ${(100 * heavy).toFixed(1)}%`)
})

test('least-request: slowRatio 0 compares in-flight counts alone', async (t) => {
  const balancer = new LeastRequestBalancer({ slowRatio: 0 })
  const list = measured(targets(1, 1), [1, 100])
  balancer.update(list)
  const share = (tally(balancer, 40_000)[list[1].url] ?? 0) / 40_000
  t.ok(Math.abs(share - 0.5) < 0.02, `idle, the slow target takes half: ${(100 * share).toFixed(1)}%`)
  list[0].inflight = 2
  list[1].inflight = 1
  t.same(tally(balancer, 1000), { [list[1].url]: 1000 }, 'and fewer in flight wins whatever the latency')
})

test('least-request: a slow latency older than 10 s no longer counts, so an idle slow target is tried again', async (t) => {
  const balancer = new LeastRequestBalancer()
  const list = measured(targets(1, 1), [1, 100], 11_000)
  balancer.update(list)
  const share = (tally(balancer, 40_000)[list[1].url] ?? 0) / 40_000
  t.ok(Math.abs(share - 0.5) < 0.02, `both measured 11 s ago: compared on in-flight alone, ${(100 * share).toFixed(1)}%`)
  list[0].latencyUpdatedAt = performance.now()
  const again = (tally(balancer, 40_000)[list[1].url] ?? 0) / 40_000
  t.ok(Math.abs(again - 0.5) < 0.02, `a fresh figure for the fast one changes nothing: ${(100 * again).toFixed(1)}%`)
  list[1].latencyUpdatedAt = performance.now()
  t.equal(tally(balancer, 1000)[list[1].url], undefined, 'a fresh figure for the slow one: it is charged again')
})

test('consistent-hash: the tableSize option sets the size of the lookup table', async (t) => {
  const small = new ConsistentHashBalancer({ key: 'header:x-user', tableSize: 7 })
  const list = targets(1, 1)
  small.update(list)
  t.equal((small as unknown as { table: unknown[] }).table.length, 7, 'a table of 7 entries')
  const user = (i: number): SelectRequest => ({ url: '/', headers: { 'x-user': `user-${i}` } })
  // each of the 7 entries belongs to one target, so a target holds a multiple of 1/7 of the keys
  const share = (tally(small, 14_000, user)[list[0].url] ?? 0) / 14_000
  const sevenths = Math.round(share * 7)
  t.ok(sevenths >= 3 && sevenths <= 4 && Math.abs(share - sevenths / 7) < 0.015, `share ${share.toFixed(3)} is ${sevenths}/7`)

  const big = new ConsistentHashBalancer({ key: 'header:x-user' })
  big.update(list)
  t.equal((big as unknown as { table: unknown[] }).table.length, 65537, 'the default table has 65537 entries')
  const even = (tally(big, 14_000, user)[list[0].url] ?? 0) / 14_000
  t.ok(Math.abs(even - 0.5) < 0.03, `with the default size, two equal targets split the keys evenly (${even.toFixed(3)})`)
})

test('consistent-hash: requests without the key are spread, whatever the tableSize', async (t) => {
  for (const tableSize of [7, 101, 7919, 65537]) {
    const balancer = new ConsistentHashBalancer({ key: 'header:x-user', tableSize })
    const list = targets(1, 1, 1)
    balancer.update(list)
    const counts = tally(balancer, 3000)
    t.equal(Object.keys(counts).length, 3, `tableSize ${tableSize}: every target gets keyless requests: ${JSON.stringify(counts)}`)
  }
})

test('consistent-hash tableSize through the plugin: a prime works, a non-prime fails at register', async (t) => {
  const ups = await startUpstreams(t, 3)
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: ups.map((u) => u.url), balancer: { type: 'consistent-hash', key: 'header:x-user', tableSize: 11 } } },
    routes: [{ prefix: '/api', upstream: 'pool' }]
  })
  const counts = await load(`${url}/api/x`, 20, 2, { headers: { 'x-user': 'alice' } })
  t.equal(Object.keys(counts).length, 1, `one key, one target: ${JSON.stringify(counts)}`)
  t.ok(ups.some((u) => counts[u.name] === 20), 'answered by an upstream')

  const bad = Fastify()
  t.teardown(() => bad.close())
  await t.rejects(async () => {
    await bad.register(fastifyUpstream, {
      upstreams: { pool: { targets: [ups[0].url], balancer: { type: 'consistent-hash', tableSize: 1000 } } }
    })
  }, { code: 'FST_UPSTREAM_INVALID_OPTION', message: /upstreams\.pool\.balancer\.tableSize/ })
})

/** A custom balancer: always the last candidate; records what it was given. */
function lastOne () {
  const seen: { updates: number, candidates: readonly BalancerTarget[], requests: SelectRequest[] } = { updates: 0, candidates: [], requests: [] }
  const balancer: Balancer = {
    update (list) {
      seen.updates++
      seen.candidates = list
    },
    pick (request) {
      seen.requests.push(request)
      return seen.candidates[seen.candidates.length - 1]
    }
  }
  return { balancer, seen }
}

test('a custom balancer object passed as `balancer` chooses the target of real requests', async (t) => {
  const ups = await startUpstreams(t, 3)
  const { balancer, seen } = lastOne()
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: ups.map((u) => u.url), balancer } },
    routes: [{ prefix: '/api', upstream: 'pool' }]
  })
  t.ok(seen.updates >= 1, 'update() was called at register')
  t.same(seen.candidates.map((c) => c.url), ups.map((u) => u.url), 'with every target, in order')
  t.match(seen.candidates[0], { weight: 1, inflight: 0, latency: 0 }, 'as BalancerTarget objects')

  const counts = await load(`${url}/api/x?tenant=t1`, 30, 3, { headers: { 'x-user': 'bob' } })
  t.same(counts, { u2: 30 }, 'every request went where the custom balancer said')
  t.equal(seen.requests.length, 30, 'pick() was called once per request')
  t.equal(seen.requests[0].headers['x-user'], 'bob', 'pick() saw the request headers')
  t.same(seen.requests[0].query, { tenant: 't1' }, 'and the parsed query')

  // the pool keeps feeding it: disabling the last target changes what pick() gets
  app.upstreams.get('pool')?.setState(ups[2].url, 'disabled')
  t.same(await load(`${url}/api/x`, 10, 2), { u1: 10 }, 'after setState(disabled), the candidates shrink')
  t.equal(app.upstreams.status().pools.pool.balancer, 'custom', 'status() names it custom')
})

test('a custom balancer that is a class instance (methods on the prototype) is accepted', async (t) => {
  class Sticky implements Balancer {
    private list: readonly BalancerTarget[] = []
    update (list: readonly BalancerTarget[]): void { this.list = list }
    pick (): BalancerTarget | undefined { return this.list[1] }
  }
  const ups = await startUpstreams(t, 3)
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: ups.map((u) => u.url), balancer: new Sticky() } },
    routes: [{ prefix: '/api', upstream: 'pool' }]
  })
  t.same(await load(`${url}/api/x`, 12, 3), { u1: 12 }, 'the instance picks the target')
})

test('a custom balancer with a `type` property of its own is still the custom balancer', async (t) => {
  // `type` is what built-in options are told by; a custom object that has one must not be
  // mistaken for them (it used to fall through to round robin, silently)
  const { balancer, seen } = lastOne()
  const ups = await startUpstreams(t, 3)
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: ups.map((u) => u.url), balancer: Object.assign(balancer, { type: 'sticky-last' }) } },
    routes: [{ prefix: '/api', upstream: 'pool' }]
  })
  t.same(await load(`${url}/api/x`, 12, 3), { u2: 12 }, 'its pick() chooses the target')
  t.equal(seen.requests.length, 12, 'pick() was called for every request')
  t.equal(app.upstreams.status().pools.pool.balancer, 'custom', 'status() names it custom')
})

test('a custom balancer that finds no target gives a 503 with a stable code', async (t) => {
  const ups = await startUpstreams(t, 1)
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: [ups[0].url], balancer: { update () {}, pick () { return undefined } } } },
    routes: [{ prefix: '/api', upstream: 'pool' }]
  })
  const res = await fetch(`${url}/api/x`)
  t.equal(res.status, 503)
  // no connection limit is involved, so it is not an overload
  t.equal((await res.json() as { code: string }).code, 'FST_UPSTREAM_NO_TARGET')
  t.equal(ups[0].hits, 0, 'nothing reached the upstream')
})

test('a custom balancer factory builds one balancer per pool, used for real requests', async (t) => {
  const ups = await startUpstreams(t, 4)
  const built: Array<ReturnType<typeof lastOne>> = []
  const factory = () => {
    const made = lastOne()
    built.push(made)
    return made.balancer
  }
  const { app, url } = await startGateway(t, {
    upstreams: {
      a: { targets: [ups[0].url, ups[1].url], balancer: factory },
      b: { targets: [ups[2].url, ups[3].url], balancer: factory }
    },
    routes: [{ prefix: '/a', upstream: 'a' }, { prefix: '/b', upstream: 'b' }]
  })
  t.equal(built.length, 2, 'the factory was called once for each pool')
  t.same(await load(`${url}/a/x`, 10, 2), { u1: 10 }, 'pool a: its own balancer')
  t.same(await load(`${url}/b/x`, 10, 2), { u3: 10 }, 'pool b: its own balancer')
  t.equal(built[0].seen.requests.length, 10, 'each balancer saw only its pool\'s requests')
  t.equal(built[1].seen.requests.length, 10)

  // a pool added at run time gets a fresh one too
  const c = app.upstreams.add('c', { targets: [ups[0].url, ups[3].url], balancer: factory })
  t.equal(built.length, 3, 'upstreams.add() calls the factory as well')
  t.equal(c.select({ url: '/', headers: {} })?.url, ups[3].url, 'and its balancer picks for that pool')
  t.equal(built[2].seen.requests.length, 1, 'only the new balancer was asked')
})

test('a factory that returns something without pick/update throws at register', async (t) => {
  const cases: Array<[string, () => unknown]> = [
    ['an empty object', () => ({})],
    ['only pick()', () => ({ pick () { return undefined } })],
    ['only update()', () => ({ update () {} })],
    ['pick that is not a function', () => ({ pick: 1, update () {} })],
    ['undefined', () => undefined],
    ['null', () => null],
    ['a class passed where a factory goes', class Mine { pick (): undefined { return undefined } update (): void {} } as unknown as () => unknown],
    ['a factory that throws', () => { throw new Error('no balancer today') }]
  ]
  for (const [what, factory] of cases) {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(
      async () => { await app.register(fastifyUpstream, { upstreams: { users: { targets: ['http://127.0.0.1:9'], balancer: factory as () => Balancer } } }) },
      { code: 'FST_UPSTREAM_INVALID_OPTION', message: /upstreams\.users\.balancer/ },
      `a factory returning ${what}`
    )
  }
})

test('a balancer option that is neither a name nor a balancer throws at register', async (t) => {
  const options: unknown[] = ['fastest', { type: 'fastest' }, { pick () { return undefined } }, 42]
  for (const balancer of options) {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(
      async () => { await app.register(fastifyUpstream, { upstreams: { users: { targets: ['http://127.0.0.1:9'], balancer: balancer as Balancer } } }) },
      { code: 'FST_UPSTREAM_INVALID_OPTION', message: /upstreams\.users\.balancer/ },
      `balancer: ${JSON.stringify(balancer) ?? String(balancer)}`
    )
  }
})
