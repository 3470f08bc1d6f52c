import net from 'node:net'
import { test } from 'tap'
import { closedPort, echo, sleep, startGateway, startUpstream, until, type Upstream } from '../helpers'
import type { RetryEvent, UpstreamPool } from '../../lib/index'
import { poolProxy } from '../../lib/proxy/forwarding'
import { internalPool, type Pool } from '../../lib/upstream/pool'

/** A server that accepts, reads the request, then resets the connection (`delay` ms later). */
async function resetting (delay = 0): Promise<{ url: string, hits: () => number, close: () => Promise<void> }> {
  let hits = 0
  const server = net.createServer((socket) => {
    socket.once('data', () => {
      hits++
      if (delay === 0) socket.resetAndDestroy()
      else setTimeout(() => socket.resetAndDestroy(), delay)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    hits: () => hits,
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

test('a refused connection is retried on another target, for any method, and reported', async (t) => {
  const good = await startUpstream(t, 'good')
  const dead = await closedPort()
  const retries: RetryEvent[] = []
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [dead, good.url], retry: { attempts: 1, backoff: { base: 0 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onRetry: (event) => retries.push(event)
  })
  for (let i = 0; i < 4; i++) {
    const res = await fetch(`${url}/x`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: `post ${i}` })
    t.equal(res.status, 200)
    t.equal((await echo(res)).body, `post ${i}`, 'the streamed body reached the second target whole')
  }
  t.equal(good.hits, 4)
  t.ok(retries.length >= 1, 'at least one request met the dead target first')
  t.match(retries[0], { pool: 'pool', attempt: 1, from: { url: dead }, to: { url: good.url }, reason: 'FST_UPSTREAM_CONNECT_FAILED' })
  t.equal(poolProxy(internalPool(app.upstreams.get('pool') as UpstreamPool) as Pool).retriesInFlight, 0, 'the retry budget is given back')
})

test('a POST that reached a target which then failed is not replayed: 502, counted once upstream', async (t) => {
  const reset = await resetting()
  t.teardown(reset.close)
  const good = await startUpstream(t, 'good')
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: [reset.url, good.url], balancer: 'round-robin', retry: { attempts: 2, backoff: { base: 0 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const res = await fetch(`${url}/order`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"n":1}' })
  t.equal(res.status, 502)
  t.match(await res.json(), { code: 'FST_UPSTREAM_BAD_GATEWAY' })
  t.equal(reset.hits(), 1, 'the dying target saw the POST once')
  t.equal(good.hits, 0, 'and it was not replayed elsewhere')
  // a GET meeting the same target is retried, since GET is idempotent
  const get = await fetch(`${url}/item`)
  t.equal(get.status, 200)
  t.equal(good.hits, 1)
})

test('retry.methods decides which methods are replayed after reaching a target', async (t) => {
  const reset = await resetting()
  t.teardown(reset.close)
  const good = await startUpstream(t, 'good')
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: [reset.url, good.url], retry: { methods: ['POST'], backoff: { base: 0 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  }, (app) => {
    // a parsed body can be sent again; a streamed one cannot once it was read
    app.post('/parsed', (_request, reply) => reply.forward('pool', { url: '/parsed' }))
  })
  const parsed = await fetch(`${url}/parsed`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"n":2}' })
  t.equal(parsed.status, 200)
  t.same(JSON.parse((await echo(parsed)).body), { n: 2 })
  const get = await fetch(`${url}/x`)
  t.equal(get.status, 502, 'GET is no longer in the list')
  await get.arrayBuffer()
})

test('retry on chosen status codes goes to another target; the discarded answer leaves nothing behind', async (t) => {
  const busy = await startUpstream(t, 'busy', (_req, res) => {
    res.statusCode = 503
    res.setHeader('x-busy-only', 'yes')
    res.end('busy')
  })
  const good = await startUpstream(t, 'good')
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: [busy.url, good.url], retry: { statusCodes: [503], backoff: { base: 0 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  for (let i = 0; i < 6; i++) {
    const res = await fetch(`${url}/x`)
    t.equal(res.status, 200)
    t.equal(res.headers.get('x-busy-only'), null, 'no header of the discarded answer')
    t.equal((await echo(res)).upstream, 'good')
  }
  t.ok(busy.hits >= 1)
  t.equal(good.hits, 6)
})

test('without a retry status list, a 503 from the target is passed through', async (t) => {
  const busy = await startUpstream(t, 'busy', (_req, res) => { res.statusCode = 503; res.end('busy') })
  const good = await startUpstream(t, 'good')
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: [busy.url, good.url] } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const statuses = []
  for (let i = 0; i < 4; i++) {
    const res = await fetch(`${url}/x`)
    statuses.push(res.status)
    await res.arrayBuffer()
  }
  t.same(statuses.sort(), [200, 200, 503, 503])
  t.equal(busy.hits, 2, 'and not retried on the same target either (reply-from would, ten times)')
})

test('attempts bound the retries, each on a target not tried yet', async (t) => {
  const deads = [await closedPort(), await closedPort(), await closedPort()]
  const good = await startUpstream(t, 'good')
  const retries: RetryEvent[] = []
  const { url } = await startGateway(t, {
    upstreams: {
      one: { targets: [...deads, good.url], balancer: 'round-robin', retry: { attempts: 1, backoff: { base: 0 } } },
      all: { targets: [...deads, good.url], balancer: 'round-robin', retry: { attempts: 3, backoff: { base: 1, max: 5 } } }
    },
    onRetry: (event) => retries.push(event)
  }, (app) => {
    app.get('/one', (_request, reply) => reply.forward('one'))
    app.get('/all', (_request, reply) => reply.forward('all'))
  })
  // round robin starts at the first dead target: one retry reaches only the second dead one
  const one = await fetch(`${url}/one`)
  t.equal(one.status, 502)
  await one.arrayBuffer()
  t.equal(retries.length, 1)
  retries.length = 0
  const all = await fetch(`${url}/all`)
  t.equal(all.status, 200)
  await all.arrayBuffer()
  t.equal(retries.length, 3)
  t.equal(new Set(retries.map((r) => r.to.url)).size, 3, 'every retry went to a different target')
})

test('the retry budget caps concurrent retries', async (t) => {
  const dead = await closedPort()
  const slowGood: Upstream = await startUpstream(t, 'good', (_req, res) => { setTimeout(() => res.end('ok'), 150) })
  const { url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [dead, slowGood.url],
        balancer: 'round-robin',
        retry: { attempts: 1, backoff: { base: 0 }, budget: { percent: 0, minRetries: 1 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const statuses = (await Promise.all(Array.from({ length: 6 }, () => fetch(`${url}/x`).then(async (res) => {
    await res.arrayBuffer()
    return res.status
  })))).sort()
  // three requests meet the dead target first; only one of them may retry while it runs
  t.same(statuses, [200, 200, 200, 200, 502, 502])
})

test('a request whose client has gone is not retried and holds no retry budget', async (t) => {
  // the first target reads the request, then resets it 150 ms later
  const slowReset = await resetting(150)
  t.teardown(slowReset.close)
  const resetUrl = slowReset.url
  const good = await startUpstream(t, 'good')
  const { app, url } = await startGateway(t, {
    // weights 1000:1: the first requests all go to the resetting target
    upstreams: { pool: { targets: [{ url: resetUrl, weight: 1000 }, good.url], retry: { attempts: 1, backoff: { base: 0 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const pool = app.upstreams.get('pool')
  const first = pool?.targets.find((target) => target.url === resetUrl)
  for (let i = 1; i <= 3; i++) {
    const controller = new AbortController()
    const pending = fetch(`${url}/x`, { signal: controller.signal }).then(() => 'answered', () => 'aborted')
    await until('the request to reach the resetting target', () => first?.requests === i)
    controller.abort()
    t.equal(await pending, 'aborted')
    await until('the reset to end the exchange', () => first?.inflight === 0)
  }
  await sleep(50)
  t.equal(poolProxy(internalPool(pool as UpstreamPool) as Pool).retriesInFlight, 0, 'no retry budget is held by a client that left')
  t.equal(good.hits, 0, 'and no retry went to the other target for nobody')
})
