import http from 'node:http'
import net from 'node:net'
import Fastify, { type FastifyServerOptions } from 'fastify'
import { test } from 'tap'
import fastifyUpstream, { type HashKeyOption, type SelectRequest } from '../../lib/index'
import { listen, startGateway, startUpstreams, type Teardown, type Upstream } from '../helpers'

/** tap's test object */
type Tap = Parameters<Parameters<typeof test>[0]>[0]

/** One GET through node:http (so that the client's local address can be chosen); resolves to the x-upstream header. */
function get (url: string, options: { headers?: Record<string, string>, localAddress?: string } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: options.headers, localAddress: options.localAddress, agent: false }, (res) => {
      res.resume()
      res.on('end', () => resolve(String(res.headers['x-upstream'] ?? `status-${res.statusCode}`)))
      res.on('error', reject)
    })
    req.on('error', reject)
  })
}

/** Runs `fn` over `items` with `concurrency` workers, keeping the results in order. */
async function mapLimit<T, R> (items: readonly T[], concurrency: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length)
  let next = 0
  async function worker (): Promise<void> {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i])
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return out
}

async function setup (t: Teardown, key: HashKeyOption, count = 4, fastifyOptions?: FastifyServerOptions) {
  const ups = await startUpstreams(t, count)
  // built here rather than by startGateway(), which takes no Fastify options
  const app = Fastify(fastifyOptions)
  await app.register(fastifyUpstream, {
    upstreams: { pool: { targets: ups.map((u) => u.url), balancer: { type: 'consistent-hash', key } } },
    routes: [{ prefix: '/api', upstream: 'pool' }]
  })
  const url = await listen(t, app)
  const pool = app.upstreams.get('pool')
  if (pool === undefined) throw new Error('pool missing')
  const nameOf = new Map(ups.map((u) => [u.url, u.name]))
  /** the name of the upstream the pool selects for this request shape, without sending it */
  const selectName = (request: SelectRequest) => nameOf.get(pool.select(request)?.url ?? '') ?? 'none'
  return { ups, pool, url: `${url}/api`, selectName }
}

/** true when this host lets a socket bind to 127.0.0.2 (Linux does: all of 127/8 is loopback) */
function loopbackAliases (): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer()
    server.once('error', () => resolve(false))
    server.listen(0, '127.0.0.2', () => server.close(() => resolve(true)))
  })
}

/**
 * Sends `repeat` requests for each key value (built by `send`) and checks that each value
 * always reached the same upstream and that the values spread over several upstreams.
 */
async function checkSticky (t: Tap, ups: Upstream[], values: string[], repeat: number, send: (value: string) => Promise<string>) {
  const jobs = values.flatMap((v) => Array.from({ length: repeat }, () => v))
  const answers = await mapLimit(jobs, 8, send)
  const seen = new Map<string, Set<string>>()
  jobs.forEach((v, i) => {
    const set = seen.get(v) ?? new Set<string>()
    set.add(answers[i])
    seen.set(v, set)
  })
  const unstable = [...seen].filter(([, s]) => s.size !== 1)
  t.same(unstable, [], `each of ${values.length} keys × ${repeat} requests always reached the same upstream`)
  const used = new Set(answers)
  t.ok([...used].every((name) => ups.some((u) => u.name === name)), `every request was answered by an upstream: ${[...used].join(',')}`)
  t.ok(used.size >= Math.min(3, ups.length), `the keys spread over ${used.size} of ${ups.length} upstreams`)
  return new Map([...seen].map(([v, s]) => [v, [...s][0]]))
}

const keys = (n: number, prefix = 'user') => Array.from({ length: n }, (_, i) => `${prefix}-${i}`)

test('header key: the same key always lands on the same target (50 keys × 5 requests)', async (t) => {
  const { ups, url, selectName } = await setup(t, 'header:x-user')
  const placed = await checkSticky(t, ups, keys(50), 5, (v) => get(`${url}/x`, { headers: { 'x-user': v } }))
  const mismatch = [...placed].filter(([v, name]) => selectName({ headers: { 'x-user': v }, url: '/' }) !== name)
  t.same(mismatch, [], 'pool.select() predicts the target real requests reach')
  // the header name is matched case-insensitively, as HTTP requires
  t.equal(await get(`${url}/x`, { headers: { 'X-User': 'user-7' } }), placed.get('user-7'), 'header name case does not matter')
})

test('cookie key: the named cookie picks the target, wherever it sits in the Cookie header', async (t) => {
  const { ups, url } = await setup(t, 'cookie:sid')
  const placed = await checkSticky(t, ups, keys(30, 's'), 3, (v) => get(`${url}/x`, { headers: { cookie: `sid=${v}` } }))
  for (const v of ['s-1', 's-2', 's-3', 's-4']) {
    const target = placed.get(v)
    t.equal(await get(`${url}/x`, { headers: { cookie: `theme=dark; sid=${v}; lang=en` } }), target, `sid=${v} between other cookies`)
    t.equal(await get(`${url}/x`, { headers: { cookie: `xsid=nope; sid=${v}` } }), target, `a cookie whose name ends in "sid" does not shadow sid=${v}`)
  }
})

test('query key: the named query parameter picks the target', async (t) => {
  const { ups, url } = await setup(t, 'query:tenant')
  const placed = await checkSticky(t, ups, keys(30, 't'), 3, (v) => get(`${url}/x?tenant=${v}&n=${Math.random()}`))
  t.equal(await get(`${url}/other/path?a=1&tenant=t-5`), placed.get('t-5'), 'the path and other parameters do not matter')
})

test('ip key: the client address picks the target (clients bound to different loopback addresses)', async (t) => {
  if (!await loopbackAliases()) {
    t.plan(0, 'this host has no loopback addresses besides 127.0.0.1')
    return
  }
  const { ups, url, selectName } = await setup(t, 'ip')
  // each "client" binds its own source address in 127.0.0.0/8
  const addresses = Array.from({ length: 30 }, (_, i) => `127.0.0.${i + 2}`)
  const placed = await checkSticky(t, ups, addresses, 3, (ip) => get(`${url}/x`, { localAddress: ip }))
  const mismatch = [...placed].filter(([ip, name]) => selectName({ ip, headers: {}, url: '/' }) !== name)
  t.same(mismatch, [], 'the target follows request.ip as pool.select() computes it')
})

test('ip key behind a trusted proxy: request.ip from X-Forwarded-For picks the target', async (t) => {
  const { ups, url, selectName } = await setup(t, 'ip', 4, { trustProxy: true })
  const clients = Array.from({ length: 30 }, (_, i) => `203.0.113.${i + 1}`)
  const placed = await checkSticky(t, ups, clients, 3, (ip) => get(`${url}/x`, { headers: { 'x-forwarded-for': ip } }))
  const mismatch = [...placed].filter(([ip, name]) => selectName({ ip, headers: {}, url: '/' }) !== name)
  t.same(mismatch, [], 'the target follows the client address Fastify derived')
})

test('url key: the request URL picks the target', async (t) => {
  const { ups, url } = await setup(t, 'url')
  await checkSticky(t, ups, keys(30, '/item'), 3, (path) => get(`${url}${path}`))
})

test('function key: the value the function returns picks the target', async (t) => {
  const calls: string[] = []
  const key = (request: SelectRequest) => {
    const tenant = request.headers['x-tenant']
    calls.push(String(tenant))
    return typeof tenant === 'string' ? tenant.split('.')[0] : undefined
  }
  const { ups, url } = await setup(t, key)
  const placed = await checkSticky(t, ups, keys(30, 'acme'), 3, (v) => get(`${url}/x`, { headers: { 'x-tenant': `${v}.eu` } }))
  t.ok(calls.includes('acme-3.eu'), 'the function saw the request headers')
  // only the part the function returns counts: another suffix lands on the same target
  t.equal(await get(`${url}/x`, { headers: { 'x-tenant': 'acme-3.us' } }), placed.get('acme-3'), 'same function result, same target')
})

test('requests without the key are spread over the targets, not pinned to one', async (t) => {
  const { ups, url } = await setup(t, 'header:x-user')
  const answers = await mapLimit(Array.from({ length: 400 }), 8, () => get(`${url}/x`))
  const counts: Record<string, number> = {}
  for (const name of answers) counts[name] = (counts[name] ?? 0) + 1
  t.comment(`counts ${JSON.stringify(counts)}`)
  t.equal(Object.keys(counts).length, 4, 'every target got some of the keyless requests')
  t.ok(ups.every((u) => (counts[u.name] ?? 0) <= 400 * 0.45), 'no target took more than 45% of them')
})

test('removing one of four targets moves under 10% of the keys that were not on it', async (t) => {
  const { ups, pool, url, selectName } = await setup(t, 'header:x-user')
  const all = keys(2000)
  const request = (k: string): SelectRequest => ({ headers: { 'x-user': k }, url: '/' })
  const before = new Map(all.map((k) => [k, selectName(request(k))]))
  const removed = ups[2]
  await pool.removeTarget(removed.url)
  t.equal(pool.targets.length, 3, 'the target is gone')
  const after = new Map(all.map((k) => [k, selectName(request(k))]))

  const onRemoved = all.filter((k) => before.get(k) === removed.name)
  const others = all.filter((k) => before.get(k) !== removed.name)
  const moved = others.filter((k) => after.get(k) !== before.get(k))
  t.comment(`${onRemoved.length} keys were on the removed target; ${moved.length} of ${others.length} others moved`)
  t.ok(onRemoved.length > 2000 * 0.15 && onRemoved.length < 2000 * 0.35, `the removed target held about a quarter of the keys (${onRemoved.length})`)
  t.ok(moved.length / others.length < 0.10, `${moved.length} of ${others.length} keys not on the removed target moved (< 10%)`)
  t.ok(onRemoved.every((k) => after.get(k) !== removed.name && after.get(k) !== 'none'), 'the keys of the removed target went to the others')
  const landed = new Set(onRemoved.map((k) => after.get(k)))
  t.ok(landed.size >= 2, `the removed target's keys spread over ${landed.size} of the 3 remaining targets`)

  // real requests agree with select(): a sample of moved, unmoved and orphaned keys
  const sample = [...others.slice(0, 60), ...moved.slice(0, 20), ...onRemoved.slice(0, 40)]
  const hitsBefore = removed.hits
  const answers = await mapLimit(sample, 8, (k) => get(`${url}/x`, { headers: { 'x-user': k } }))
  const wrong = sample.filter((k, i) => answers[i] !== after.get(k))
  t.same(wrong, [], `${sample.length} real requests reached the target select() predicts`)
  t.equal(removed.hits, hitsBefore, 'the removed target received none of them')
})

test('weights shift the share of keys: weight 3 vs 1 gives about 75/25 of 4000 keys', async (t) => {
  const ups = await startUpstreams(t, 2)
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [{ url: ups[0].url, weight: 3 }, { url: ups[1].url, weight: 1 }],
        balancer: { type: 'consistent-hash', key: 'header:x-user' }
      }
    },
    routes: [{ prefix: '/api', upstream: 'pool' }]
  })
  const pool = app.upstreams.get('pool')
  if (pool === undefined) throw new Error('pool missing')
  const all = keys(4000)
  const placed = all.map((k) => pool.select({ headers: { 'x-user': k }, url: '/' })?.url)
  const heavy = placed.filter((u) => u === ups[0].url).length / all.length
  t.ok(Math.abs(heavy - 0.75) <= 0.03, `the weight-3 target holds ${(100 * heavy).toFixed(1)}% of the keys (75% ± 3)`)
  t.equal(placed.filter((u) => u === ups[1].url).length + placed.filter((u) => u === ups[0].url).length, all.length, 'every key has a target')

  // a sample through the gateway agrees
  const sample = all.slice(0, 100)
  const answers = await mapLimit(sample, 8, (k) => get(`${url}/api/x`, { headers: { 'x-user': k } }))
  const expected = sample.map((_, i) => (placed[i] === ups[0].url ? 'u0' : 'u1'))
  t.same(answers, expected, 'real requests land where select() says')

  // changing a weight at run time rebuilds the table: 1:1 now splits about evenly
  pool.setWeight(ups[0].url, 1)
  const even = all.filter((k) => pool.select({ headers: { 'x-user': k }, url: '/' })?.url === ups[0].url).length / all.length
  t.ok(Math.abs(even - 0.5) <= 0.03, `after setWeight(1) the former heavy target holds ${(100 * even).toFixed(1)}% (50% ± 3)`)
})
