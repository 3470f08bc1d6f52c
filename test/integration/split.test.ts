// Traffic splits: a mount or reply.forward sends to a split of pools, by rules and weights.
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import WebSocket, { WebSocketServer } from 'ws'
import Fastify from 'fastify'
import { test } from 'tap'
import fastifyUpstream, { type SplitChangeEvent } from '../../lib/index'
import { drive, echo, listen, load, logCapture, registerError, startGateway, startUpstream, type Teardown } from '../helpers'

/** Two pools, v1 and v2, of one upstream each (named v1 and v2 in their answers). */
async function twoVersions (t: Parameters<typeof startUpstream>[0]): Promise<{ upstreams: Record<string, { targets: string[] }>, urls: string[] }> {
  const v1 = await startUpstream(t, 'v1')
  const v2 = await startUpstream(t, 'v2')
  return { upstreams: { v1: { targets: [v1.url] }, v2: { targets: [v2.url] } }, urls: [v1.url, v2.url] }
}

test('weights share the requests within 2% over thousands of requests, and status shows the shares', async (t) => {
  const { upstreams } = await twoVersions(t)
  const { app, url } = await startGateway(t, {
    upstreams,
    routes: [{ prefix: '/api', upstream: [{ pool: 'v1', weight: 95 }, { pool: 'v2', weight: 5 }] }]
  })
  const counts = await drive(`${url}/api/x`, 4000, 16)
  t.ok(Math.abs((counts.v2 ?? 0) / 4000 - 0.05) < 0.02, `v2 got ${counts.v2} of 4000`)
  t.equal((counts.v1 ?? 0) + (counts.v2 ?? 0), 4000, 'every request answered by one of the two')
  const split = app.upstreams.status().splits['/api']
  t.same(split.branches.map((b) => [b.pool, b.weight, b.share, b.requests]), [['v1', 95, 95, counts.v1], ['v2', 5, 5, counts.v2]])
  t.equal(split.sticky, false)
  t.equal(split.fallback, true)
})

test('match rules pick a branch first, in order: header, cookie, query, method, function, and lists of rules', async (t) => {
  const { upstreams } = await twoVersions(t)
  const v3 = await startUpstream(t, 'v3')
  const { url } = await startGateway(t, {
    upstreams: { ...upstreams, v3: { targets: [v3.url] } },
    splits: {
      api: {
        branches: [
          { pool: 'v3', match: [{ header: 'x-canary', equals: 'yes' }, { method: 'POST' }] },
          { pool: 'v2', match: { header: 'X-Canary', oneOf: ['yes', 'please'] } },
          { pool: 'v2', match: { header: 'x-group', regex: /^beta-\d+$/ } },
          { pool: 'v2', match: { cookie: 'tester', present: true } },
          { pool: 'v2', match: { query: 'version', equals: '2' } },
          { pool: 'v3', match: { method: ['DELETE', 'PATCH'] } },
          { pool: 'v3', match: (request) => request.headers['user-agent'] === 'robot' },
          { pool: 'v1' }
        ]
      }
    },
    routes: [{ prefix: '/api', upstream: 'api' }]
  })
  const to = async (init: RequestInit & { path?: string } = {}): Promise<string> => (await echo(fetch(`${url}/api${init.path ?? '/x'}`, init))).upstream
  t.equal(await to(), 'v1', 'no rule: the weighted branch')
  t.equal(await to({ headers: { 'x-canary': 'yes' } }), 'v2', 'header equals (a GET: the first rule list needs POST too)')
  t.equal(await to({ method: 'POST', headers: { 'x-canary': 'yes' } }), 'v3', 'both rules of a list hold: the first branch wins')
  t.equal(await to({ headers: { 'x-canary': 'please' } }), 'v2', 'header one of')
  t.equal(await to({ headers: { 'x-canary': 'no' } }), 'v1', 'header not one of')
  t.equal(await to({ headers: { 'x-group': 'beta-12' } }), 'v2', 'header regex')
  t.equal(await to({ headers: { 'x-group': 'beta-x' } }), 'v1', 'header regex not matched')
  t.equal(await to({ headers: { cookie: 'a=1; tester=' } }), 'v2', 'cookie present (even empty)')
  t.equal(await to({ headers: { cookie: 'notatester=1' } }), 'v1', 'another cookie')
  t.equal(await to({ path: '/x?version=2' }), 'v2', 'query equals')
  t.equal(await to({ path: '/x?version=3' }), 'v1', 'query not equal')
  t.equal(await to({ method: 'DELETE' }), 'v3', 'method one of')
  t.equal(await to({ headers: { 'user-agent': 'robot' } }), 'v3', 'a function of the request')
})

test('with a client key, each client keeps its branch, and moving 5% to 10% moves only clients from v1 to v2, about 5% of them', async (t) => {
  const { upstreams } = await twoVersions(t)
  const { app, url } = await startGateway(t, {
    upstreams,
    routes: [{ prefix: '/api', upstream: { branches: [{ pool: 'v1', weight: 95 }, { pool: 'v2', weight: 5 }], key: 'cookie:uid' } }]
  })
  const clients = Array.from({ length: 2000 }, (_, i) => `user-${i}`)
  async function branches (): Promise<string[]> {
    const out: string[] = []
    for (let i = 0; i < clients.length; i += 50) {
      out.push(...await Promise.all(clients.slice(i, i + 50).map(async (uid) => (await echo(fetch(`${url}/api/x`, { headers: { cookie: `uid=${uid}` } }))).upstream)))
    }
    return out
  }
  const before = await branches()
  t.same(await branches(), before, 'every client got the same branch again')
  const share = before.filter((b) => b === 'v2').length / clients.length
  t.ok(Math.abs(share - 0.05) < 0.02, `5% of clients on v2 (${share})`)
  app.upstreams.split('/api')?.setWeights({ v1: 90, v2: 10 })
  const after = await branches()
  const moved = clients.filter((_, i) => before[i] !== after[i])
  t.ok(moved.every((_, j) => before[clients.indexOf(moved[j])] === 'v1'), 'nobody moved from v2 to v1')
  t.ok(Math.abs(moved.length / clients.length - 0.05) < 0.02, `about 5% moved (${moved.length} of ${clients.length})`)
  const requests = app.upstreams.status().splits['/api'].branches.reduce((sum, b) => sum + b.requests, 0)
  t.equal(requests, 3 * clients.length, 'each request counted once')
})

test('weights change under load with no failed request, and each change is logged, hooked and published', async (t) => {
  const { upstreams } = await twoVersions(t)
  const events: SplitChangeEvent[] = []
  const published: unknown[] = []
  const onPublish = (message: unknown): void => { published.push(message) }
  subscribe('fastify-upstream:split', onPublish)
  t.teardown(() => unsubscribe('fastify-upstream:split', onPublish))
  const { lines, stream } = logCapture()
  const app = Fastify({ logger: { stream, level: 'info' } })
  await app.register(fastifyUpstream, {
    upstreams,
    splits: { rollout: { branches: [{ pool: 'v1', weight: 100 }, { pool: 'v2', weight: 0 }] } },
    routes: [{ prefix: '/', upstream: 'rollout' }],
    onSplitChange: (event) => events.push(event)
  })
  const url = await listen(t, app)
  const split = app.upstreams.split('rollout')
  if (split === undefined) throw new Error('no split')
  const running = load(`${url}/x`, 3000, 8)
  for (const weight of [10, 25, 50, 75, 100]) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    split.setWeights({ v1: 100 - weight, v2: weight })
  }
  const counts = await running
  t.same(Object.keys(counts).filter((k) => k !== 'v1' && k !== 'v2'), [], `only answers from v1 and v2: ${JSON.stringify(counts)}`)
  t.equal((counts.v1 ?? 0) + (counts.v2 ?? 0), 3000)
  t.same(split.weights(), { v1: 0, v2: 100 })
  t.same(await load(`${url}/x`, 50, 4), { v2: 50 }, 'all of it on v2 at the end')
  t.equal(events.length, 5)
  t.same(events[0], { split: 'rollout', from: { v1: 100, v2: 0 }, to: { v1: 90, v2: 10 } })
  t.same(published, events, 'the same events on the diagnostics channel')
  t.equal(lines.filter((l) => l.msg === 'upstream split re-weighted').length, 5, 'one log line per change')
})

test('bad weights at run time throw naming the field and change nothing', async (t) => {
  const { upstreams } = await twoVersions(t)
  const { app } = await startGateway(t, {
    upstreams,
    splits: { s: { branches: [{ pool: 'v2', match: { header: 'x', present: true } }, { pool: 'v1', weight: 3 }, { pool: 'v2', weight: 1 }] } }
  })
  const split = app.upstreams.split('s')
  if (split === undefined) throw new Error('no split')
  t.equal(app.upstreams.split('nope'), undefined)
  t.throws(() => { split.setWeights({ v3: 1 }) }, { code: 'FST_UPSTREAM_INVALID_OPTION', message: /splits\.s\.v3: no branch without match/ })
  t.throws(() => { split.setWeights({ v1: 1001 }) }, { message: /splits\.s\.v1: must be an integer from 0 to 1000/ })
  t.throws(() => { split.setWeights({ v1: 1.5 }) }, { message: /splits\.s\.v1/ })
  t.throws(() => { split.setWeights({ v1: 0, v2: 0 }) }, { message: /add up to 0/ })
  t.throws(() => { split.setWeights({ v2: 5, v1: -1 }) }, { message: /splits\.s\.v1/ })
  t.same(split.weights(), { v1: 3, v2: 1 }, 'unchanged')
  split.setWeights({ v2: 3 })
  t.same(split.weights(), { v1: 3, v2: 3 }, 'a partial change keeps the others')
  t.same(split.status().branches.map((b) => [b.match, b.weight, b.share]), [[true, 0, 0], [false, 3, 50], [false, 3, 50]])
})

test('a branch whose pool has no available target falls back to the others; with fallback false the client gets 503', async (t) => {
  const { upstreams, urls } = await twoVersions(t)
  const { app, url } = await startGateway(t, {
    upstreams,
    splits: {
      open: { branches: [{ pool: 'v1', weight: 50 }, { pool: 'v2', weight: 50 }, { pool: 'later', weight: 50 }] },
      strict: { branches: [{ pool: 'v1', weight: 1 }, { pool: 'v2', weight: 1 }], fallback: false }
    },
    routes: [{ prefix: '/open', upstream: 'open' }, { prefix: '/strict', upstream: 'strict' }]
  })
  app.upstreams.get('v2')?.setState(urls[1], 'disabled')
  const open = await load(`${url}/open/x`, 300, 4)
  t.same(open, { v1: 300 }, 'v2 (disabled) and "later" (no such pool yet) fell back to v1')
  const branches = app.upstreams.status().splits.open.branches
  t.equal(branches[0].requests, 300)
  t.equal(branches[0].fallbacks, 200, 'two of three chose a branch that could not take them')
  const strict = await load(`${url}/strict/x`, 100, 4)
  t.same(strict, { v1: 50, 'status-503': 50 }, 'no fallback: the disabled branch answers 503')
  const res = await fetch(`${url}/strict/x`)
  const second = await fetch(`${url}/strict/x`)
  const failed = res.status === 503 ? res : second
  t.equal(failed.status, 503)
  t.equal((await failed.json() as { code: string }).code, 'FST_UPSTREAM_NO_TARGET')
  // the pool that did not exist comes at run time, and takes its share
  const later = await startUpstream(t, 'later')
  app.upstreams.add('later', { targets: [later.url] })
  app.upstreams.get('v2')?.setState(urls[1], 'enabled')
  const counts = await load(`${url}/open/x`, 300, 4)
  t.same(counts, { v1: 100, v2: 100, later: 100 }, 'each branch its share again')
})

test('a branch sends to its own path and headers; reply.forward uses a split by name', async (t) => {
  const { upstreams } = await twoVersions(t)
  const { url } = await startGateway(t, {
    upstreams,
    splits: {
      byTenant: {
        branches: [
          { pool: 'v2', match: { header: 'x-v', equals: '2' }, rewritePrefix: '/next/:tenant' },
          { pool: 'v1' }
        ]
      },
      forwarded: { branches: [{ pool: 'v2', match: { header: 'x-v', equals: '2' }, rewritePrefix: '/next' }, { pool: 'v1' }] }
    },
    routes: [{ prefix: '/t/:tenant', rewritePrefix: '/tenants/:tenant', upstream: 'byTenant' }]
  }, (app) => {
    app.get('/forwarded/*', (_request, reply) => reply.forward('forwarded'))
  })
  const plain = await fetch(`${url}/t/acme/orders?x=1`, { headers: { 'x-legacy': 'yes' } })
  t.same(await echo(plain), { upstream: 'v1', method: 'GET', url: '/tenants/acme/orders?x=1', body: '' })
  const canary = await fetch(`${url}/t/acme/orders?x=1`, { headers: { 'x-v': '2', 'x-legacy': 'yes' } })
  t.same(await echo(canary), { upstream: 'v2', method: 'GET', url: '/next/acme/orders?x=1', body: '' }, 'the branch\'s rewritePrefix, with the param')
  const forwarded = await fetch(`${url}/forwarded/a?b=c`, { headers: { 'x-v': '2' } })
  t.same(await echo(forwarded), { upstream: 'v2', method: 'GET', url: '/next/forwarded/a?b=c', body: '' }, 'reply.forward: the branch prefix before the path')
  t.same(await echo(fetch(`${url}/forwarded/a`)), { upstream: 'v1', method: 'GET', url: '/forwarded/a', body: '' })
})

test('branch headers are set after the pool\'s and removed ones are gone', async (t) => {
  const seen: Array<Record<string, unknown>> = []
  const v2 = await startUpstream(t, 'v2', (req, res) => { seen.push(req.headers); res.end('ok') })
  const v1 = await startUpstream(t, 'v1')
  const { url } = await startGateway(t, {
    upstreams: { v1: { targets: [v1.url] }, v2: { targets: [v2.url], headers: { set: { 'x-pool': 'v2', 'x-version': 'pool' } } } },
    routes: [{ prefix: '/', upstream: [{ pool: 'v2', match: { method: 'GET' }, headers: { set: { 'X-Version': 'branch' }, remove: ['x-legacy', 'x-pool'] } }, { pool: 'v1' }] }]
  })
  const res = await fetch(`${url}/x`, { headers: { 'x-legacy': '1', 'x-keep': 'k' } })
  t.equal(await res.text(), 'ok')
  t.equal(seen[0]['x-version'], 'branch')
  t.equal(seen[0]['x-legacy'], undefined)
  t.equal(seen[0]['x-pool'], undefined, 'a branch may remove what the pool set')
  t.equal(seen[0]['x-keep'], 'k')
})

test('metrics show each branch\'s requests, fallbacks and weight', async (t) => {
  const { upstreams } = await twoVersions(t)
  const { url } = await startGateway(t, {
    upstreams,
    routes: [{ prefix: '/', upstream: [{ pool: 'v2', match: { header: 'x-v', equals: '2' } }, { pool: 'v1', weight: 3 }, { pool: 'v2', weight: 1 }] }],
    statusRoute: '/status'
  })
  await load(`${url}/x`, 40, 2)
  await load(`${url}/x`, 5, 1, { headers: { 'x-v': '2' } })
  const text = await (await fetch(`${url}/status/metrics`)).text()
  t.match(text, 'fastify_upstream_split_requests_total{split="/",branch="0",pool="v2"} 5')
  t.match(text, 'fastify_upstream_split_requests_total{split="/",branch="1",pool="v1"} 30')
  t.match(text, 'fastify_upstream_split_requests_total{split="/",branch="2",pool="v2"} 10')
  t.match(text, 'fastify_upstream_split_weight{split="/",branch="1",pool="v1"} 3')
  t.match(text, 'fastify_upstream_split_fallbacks_total{split="/",branch="1",pool="v1"} 0')
  const status = await (await fetch(`${url}/status`)).json() as { splits: Record<string, unknown> }
  t.ok(status.splits['/'], 'the JSON status has the split')
  const page = await (await fetch(`${url}/status`, { headers: { accept: 'text/html' } })).text()
  t.match(page, 'id="splits"')
})

/** A WebSocket target that records each handshake's path and sends `greeting(path)` on open; `t` closes it. */
async function wsTarget (t: Teardown, greeting: (path: string) => string): Promise<{ url: string, paths: string[] }> {
  const server = http.createServer()
  const wss = new WebSocketServer({ server })
  const paths: string[] = []
  wss.on('connection', (ws, req) => { paths.push(req.url as string); ws.send(greeting(req.url as string)) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const ws of wss.clients) ws.terminate()
    wss.close()
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, paths }
}

/** Opens a WebSocket to `url` with `headers`; resolves with the target's first message. */
async function firstMessage (t: Teardown, url: string, headers: Record<string, string>): Promise<string> {
  const ws = new WebSocket(url.replace(/^http/, 'ws'), { headers })
  t.teardown(() => { ws.terminate() })
  const [message] = await once(ws, 'message') as [Buffer]
  ws.close()
  return message.toString()
}

test('WebSocket upgrades on a split mount go to the branch its rules or weights choose, on the branch\'s path', async (t) => {
  const targets = await Promise.all(['v1', 'v2'].map(async (name) => await wsTarget(t, () => name)))
  const { app, url } = await startGateway(t, {
    upstreams: { v1: { targets: [targets[0].url] }, v2: { targets: [targets[1].url] } },
    routes: [{ prefix: '/ws', websocket: true, upstream: [{ pool: 'v2', match: { header: 'x-v', equals: '2' }, rewritePrefix: '/v2' }, { pool: 'v1' }] }]
  })
  const hello = async (headers: Record<string, string>): Promise<string> => await firstMessage(t, `${url}/ws/room`, headers)
  t.equal(await hello({}), 'v1')
  t.equal(await hello({ 'x-v': '2' }), 'v2')
  t.same(targets[0].paths, ['/room'])
  t.same(targets[1].paths, ['/v2/room'], 'the branch\'s rewritePrefix')
  t.same(app.upstreams.status().splits['/ws'].branches.map((b) => b.requests), [1, 1])
  // the canary's only target out of rotation: its handshakes fall back, as its requests do
  app.upstreams.get('v2')?.setState(targets[1].url, 'disabled')
  t.equal(await hello({ 'x-v': '2' }), 'v1', 'fell back to the other branch')
  t.same(app.upstreams.status().splits['/ws'].branches.map((b) => [b.requests, b.fallbacks]), [[1, 0], [2, 1]])
})

test('reply.forward of a WebSocket handshake to a split: the branch\'s pool and rewritePrefix', async (t) => {
  const target = await wsTarget(t, (path) => path)
  const { url } = await startGateway(t, {
    upstreams: { v1: { targets: [target.url] }, v2: { targets: [target.url] } },
    splits: { chat: { branches: [{ pool: 'v2', match: { header: 'x-v', equals: '2' }, rewritePrefix: '/next' }, { pool: 'v1' }] } }
  }, (app) => {
    app.get('/chat/*', (_request, reply) => reply.forward('chat'))
  })
  t.equal(await firstMessage(t, `${url}/chat/room`, {}), '/chat/room')
  t.equal(await firstMessage(t, `${url}/chat/room`, { 'x-v': '2' }), '/next/chat/room', 'the branch\'s prefix before the path')
})

test('invalid split options fail at register, naming the field', async (t) => {
  const pools = { v1: { targets: ['http://127.0.0.1:1'] }, v2: { targets: ['http://127.0.0.1:2'] } }
  const cases: Array<[string, unknown, RegExp]> = [
    ['weight beside match', { splits: { s: { branches: [{ pool: 'v1', weight: 2, match: { method: 'GET' } }, { pool: 'v2' }] } } }, /splits\.s\.branches\[0\]\.weight: a branch with match/],
    ['no weighted branch', { splits: { s: { branches: [{ pool: 'v1', match: { method: 'GET' } }] } } }, /splits\.s\.branches: needs a branch without match/],
    ['two weighted branches of one pool', { splits: { s: { branches: [{ pool: 'v1' }, { pool: 'v1' }] } } }, /splits\.s\.branches\[1\]\.pool: "v1" has a weighted branch already/],
    ['weights adding up to 0', { splits: { s: { branches: [{ pool: 'v1', weight: 0 }] } } }, /splits\.s: the weights of the branches without match add up to 0/],
    ['a weight too large', { splits: { s: { branches: [{ pool: 'v1', weight: 1001 }] } } }, /splits\.s\.branches\[0\]\.weight: must be an integer from 0 to 1000/],
    ['two tests in a rule', { splits: { s: { branches: [{ pool: 'v1', match: { header: 'x', equals: 'a', present: true } }, { pool: 'v2' }] } } }, /splits\.s\.branches\[0\]\.match: must have exactly one of equals, oneOf, regex, present/],
    ['no test in a rule', { splits: { s: { branches: [{ pool: 'v1', match: { cookie: 'x' } }, { pool: 'v2' }] } } }, /must have exactly one of/],
    ['a bad regex', { splits: { s: { branches: [{ pool: 'v1', match: [{ method: 'GET' }, { query: 'q', regex: '(' }] }, { pool: 'v2' }] } } }, /splits\.s\.branches\[0\]\.match\[1\]\.regex: Invalid regular expression/],
    ['an unknown test', { splits: { s: { branches: [{ pool: 'v1', match: { header: 'x', equal: 'a' } }, { pool: 'v2' }] } } }, /splits\.s\.branches\[0\]\.match\.equal/],
    ['a bad method', { splits: { s: { branches: [{ pool: 'v1', match: { method: 'get' } }, { pool: 'v2' }] } } }, /splits\.s\.branches\[0\]\.match\.method/],
    ['a rule of nothing', { splits: { s: { branches: [{ pool: 'v1', match: { path: '/x' } }, { pool: 'v2' }] } } }, /splits\.s\.branches\[0\]\.match: must name a header, cookie, query or method/],
    ['an empty list of rules', { splits: { s: { branches: [{ pool: 'v1', match: [] }, { pool: 'v2' }] } } }, /splits\.s\.branches\[0\]\.match: must be a match rule or a non-empty array/],
    ['a rule that is no object', { splits: { s: { branches: [{ pool: 'v1', match: 'GET' }, { pool: 'v2' }] } } }, /splits\.s\.branches\[0\]\.match: must be a match rule object or a function/],
    ['a regex of another type', { splits: { s: { branches: [{ pool: 'v1', match: { query: 'q', regex: 5 } }, { pool: 'v2' }] } } }, /splits\.s\.branches\[0\]\.match\.regex: must be a RegExp or a string/],
    ['a bad key', { splits: { s: { branches: [{ pool: 'v1' }], key: 'body' } } }, /splits\.s\.key/],
    ['a bad header to set', { splits: { s: { branches: [{ pool: 'v1', headers: { set: { 'x-a': 'a\nb' } } }] } } }, /splits\.s\.branches\[0\]\.headers\.set\.x-a/],
    ['a split named as a pool', { splits: { v1: { branches: [{ pool: 'v2' }] } } }, /splits\.v1: a pool has that name/],
    ['a bad split name', { splits: { 'a b': { branches: [{ pool: 'v2' }] } } }, /a pool name must be/],
    ['an unknown name on a route', { routes: [{ prefix: '/', upstream: 'nope' }] }, /routes\[0\]\.upstream: unknown pool or split "nope"/],
    ['a route\'s split with no branches', { routes: [{ prefix: '/', upstream: [] }] }, /routes\[0\]\.upstream/],
    ['a route\'s split with a bad branch', { routes: [{ prefix: '/', upstream: [{ pool: 'v1', weight: -1 }] }] }, /routes\[0\]\.upstream\[0\]\.weight: must be an integer from 0 to 1000/],
    ['two routes with their own splits on one prefix', { routes: [{ prefix: '/a', upstream: [{ pool: 'v1' }] }, { prefix: '/a', methods: ['POST'], upstream: [{ pool: 'v2' }] }] }, /routes\[1\]\.upstream: a split named "\/a" exists already/],
    ['a branch rewritePrefix naming no param', { routes: [{ prefix: '/a', upstream: [{ pool: 'v1', rewritePrefix: '/b/:id' }] }] }, /routes\[0\]\.upstream\.branches\[0\]\.rewritePrefix: :id is not a parameter/]
  ]
  for (const [name, options, message] of cases) {
    const error = await registerError({ upstreams: pools, ...(options as object) })
    t.equal(error.code, 'FST_UPSTREAM_INVALID_OPTION', name)
    t.match(error.message, message, name)
  }
  const { app } = await startGateway(t, { upstreams: pools, splits: { s: { branches: [{ pool: 'v1' }] } } })
  t.throws(() => app.upstreams.add('s', { targets: [] }), { code: 'FST_UPSTREAM_DUPLICATE' }, 'a pool may not take a split\'s name')
})
