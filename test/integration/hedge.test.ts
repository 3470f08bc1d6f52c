// Hedged requests (retry.hedge, lib/proxy/hedge.ts): real servers on loopback.
import { createHash } from 'node:crypto'
import { request as httpRequest, type ServerResponse } from 'node:http'
import net from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import { test } from 'tap'
import fastifyUpstream, { type FastifyUpstreamOptions, type UpstreamPool } from '../../lib/index'
import { poolProxy, type PoolProxy } from '../../lib/proxy/forwarding'
import { internalPool, type Pool } from '../../lib/upstream/pool'
import { listen, sleep, startUpstream, until, type Teardown, type Upstream } from '../helpers'

type Outcome = NonNullable<import('fastify').FastifyRequest['upstream']>

/** An upstream that answers after `delay` ms, and counts the requests closed before it answered. */
interface Timed extends Upstream {
  /** requests whose connection closed before the answer */
  cancelled: number
  /** requests answered */
  answered: number
  /** the Host header of each request */
  hosts: string[]
}

async function timed (t: Teardown, name: string, delay: number, answer?: (res: ServerResponse, body: string) => void): Promise<Timed> {
  const up = await startUpstream(t, name, (req, res, body, self) => {
    const me = self as Timed
    me.hosts.push(String(req.headers.host))
    const timer = setTimeout(() => {
      me.answered++
      res.setHeader('x-upstream', name)
      if (answer !== undefined) answer(res, body)
      else res.end(JSON.stringify({ upstream: name, method: req.method, url: req.url, body }))
    }, delay)
    res.on('close', () => {
      if (!res.writableEnded) {
        clearTimeout(timer)
        me.cancelled++
      }
    })
  }) as Timed
  up.cancelled = 0
  up.answered = 0
  up.hosts = []
  return up
}

/** A server that reads a request, then resets its connection `delay` ms later. */
async function resetting (t: Teardown, delay: number): Promise<{ url: string, hits: () => number }> {
  let hits = 0
  const server = net.createServer((socket) => {
    socket.once('data', () => {
      hits++
      setTimeout(() => socket.resetAndDestroy(), delay)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, hits: () => hits }
}

/** A gateway whose onResponse hook keeps `request.upstream` by URL; `t` closes it. */
async function gateway (t: Teardown, options: FastifyUpstreamOptions, setup?: (app: FastifyInstance) => void): Promise<{ app: FastifyInstance, url: string, seen: Map<string, Outcome | null> }> {
  const app = Fastify()
  const seen = new Map<string, Outcome | null>()
  app.addHook('onResponse', async (request) => { seen.set(request.url, request.upstream) })
  await app.register(fastifyUpstream, options)
  setup?.(app)
  return { app, url: await listen(t, app), seen }
}

function proxyOf (app: FastifyInstance, name: string): PoolProxy {
  return poolProxy(internalPool(app.upstreams.get(name) as UpstreamPool) as Pool)
}

function targetOf (app: FastifyInstance, name: string, url: string): NonNullable<ReturnType<UpstreamPool['target']>> {
  return (app.upstreams.get(name) as UpstreamPool).target(url) as NonNullable<ReturnType<UpstreamPool['target']>>
}

/** An attempt without its time, to compare whole */
function facts (attempt: Outcome['attempts'][number]): object {
  return { target: attempt.target, status: attempt.status, error: attempt.error }
}

async function timedGet (url: string, init?: RequestInit): Promise<{ status: number, upstream: string | null, body: string, ms: number }> {
  const start = performance.now()
  const res = await fetch(url, init)
  const body = await res.text()
  return { status: res.status, upstream: res.headers.get('x-upstream'), body, ms: performance.now() - start }
}

test('a first attempt with no headers after the delay is hedged: the other target answers, the slow attempt is cancelled and not counted', async (t) => {
  const slow = await timed(t, 'slow', 1000)
  const fast = await timed(t, 'fast', 0)
  const { app, url, seen } = await gateway(t, {
    upstreams: {
      pool: {
        targets: [slow.url, fast.url],
        balancer: 'round-robin',
        retry: { hedge: { delay: 50 } },
        // one counted failure would eject the slow target
        healthCheck: { passive: { consecutiveFailures: 1 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  for (let i = 0; i < 6; i++) {
    const got = await timedGet(`${url}/r${i}`)
    t.equal(got.status, 200)
    t.equal(got.upstream, 'fast', `request ${i} answered by the fast target`)
    t.ok(got.ms < 700, `request ${i} answered in ${got.ms.toFixed(0)} ms, long before the slow target would`)
  }
  const proxy = proxyOf(app, 'pool')
  t.ok(slow.hits >= 2, `the slow target got first attempts (${slow.hits})`)
  t.equal(proxy.hedges.sent, slow.hits, 'each of them was hedged')
  t.equal(proxy.hedges.won, slow.hits, 'and each hedge answered first')
  t.equal(fast.hits, 6)
  await until('the slow attempts to be cancelled', () => slow.cancelled === slow.hits)
  t.equal(slow.answered, 0, 'the slow target never had to answer')
  await until('both targets out of flight', () => targetOf(app, 'pool', slow.url).inflight === 0 && targetOf(app, 'pool', fast.url).inflight === 0)
  t.equal(targetOf(app, 'pool', slow.url).failures, 0, 'a cancelled attempt is no failure of its target')
  t.equal(targetOf(app, 'pool', slow.url).state, 'healthy', 'and does not eject it')
  t.equal(targetOf(app, 'pool', fast.url).failures, 0)
  t.equal(proxy.retriesInFlight, 0, 'the retry budget is given back')
  // request.upstream: the winner is the current attempt, the cancelled one before it
  const hedged = [...seen.values()].filter((o) => (o as Outcome).attempts.length === 2) as Outcome[]
  t.equal(hedged.length, slow.hits, 'every hedged request shows two attempts')
  for (const outcome of hedged) {
    t.match(outcome, { pool: 'pool', target: fast.url, status: 200 })
    t.same(outcome.attempts.map(facts), [
      { target: slow.url, status: undefined, error: 'FST_UPSTREAM_HEDGE_CANCELLED' },
      { target: fast.url, status: 200, error: undefined }
    ])
    t.ok(outcome.attempts.every((a) => typeof a.time === 'number' && a.time >= 0), 'each with its time')
    t.ok((outcome.attempts[0].time as number) >= 45, 'the cancelled one ran at least the hedge delay')
  }
  t.same(fast.hosts, fast.hosts.map(() => `127.0.0.1:${fast.port}`), "the hedge carried the second target's Host, not the first's")
})

test('a first attempt that answers before the delay sends no hedge', async (t) => {
  const a = await timed(t, 'a', 30)
  const b = await timed(t, 'b', 30)
  const { app, url, seen } = await gateway(t, {
    upstreams: { pool: { targets: [a.url, b.url], balancer: 'round-robin', retry: { hedge: { delay: 200 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  for (let i = 0; i < 6; i++) t.equal((await timedGet(`${url}/q${i}`)).status, 200)
  t.equal(proxyOf(app, 'pool').hedges.sent, 0, 'no hedge sent')
  t.equal(a.hits + b.hits, 6, 'one attempt per request')
  t.equal(a.cancelled + b.cancelled, 0)
  t.ok([...seen.values()].every((o) => o?.attempts.length === 1), 'one attempt in request.upstream')
})

test('a POST is hedged only with an Idempotency-Key and a body that can be sent twice; a streamed body never', async (t) => {
  const slow = await timed(t, 'slow', 400)
  const fast = await timed(t, 'fast', 0)
  const { app, url } = await gateway(t, {
    // weighted: every first attempt goes to the slow target
    upstreams: { pool: { targets: [{ url: slow.url, weight: 1000 }, { url: fast.url, weight: 1 }], balancer: 'round-robin', retry: { hedge: { delay: 50 } } } },
    routes: [{ prefix: '/stream', upstream: 'pool' }]
  }, (app) => {
    // a parsed body (JSON), which reply-from serialises: it can be sent twice
    app.post('/parsed', (_request, reply) => reply.forward('pool'))
    app.get('/get', (_request, reply) => reply.forward('pool'))
  })
  const proxy = proxyOf(app, 'pool')
  const json = { 'content-type': 'application/json' }

  const plain = await timedGet(`${url}/parsed`, { method: 'POST', headers: json, body: '{"n":1}' })
  t.equal(plain.upstream, 'slow', 'a POST without a key waits for its one attempt')
  t.equal(proxy.hedges.sent, 0)

  const keyed = await timedGet(`${url}/parsed`, { method: 'POST', headers: { ...json, 'idempotency-key': 'k1' }, body: '{"n":2}' })
  t.equal(keyed.upstream, 'fast', 'a POST with an Idempotency-Key is hedged')
  t.same(JSON.parse(JSON.parse(keyed.body).body), { n: 2 }, 'with its body')
  t.equal(proxy.hedges.sent, 1)

  const streamed = await timedGet(`${url}/stream/x`, { method: 'POST', headers: { 'content-type': 'text/plain', 'idempotency-key': 'k2' }, body: 'streamed body' })
  t.equal(streamed.upstream, 'slow', 'a streamed body is never hedged, key or not')
  t.equal(JSON.parse(streamed.body).body, 'streamed body')
  t.equal(proxy.hedges.sent, 1)

  const get = await timedGet(`${url}/get`)
  t.equal(get.upstream, 'fast', 'a GET is')
  t.equal(proxy.hedges.sent, 2)
  t.equal(slow.hits, 4, 'every first attempt went to the slow target')
})

test('both attempts failing: each failure counted once, then a retry on a third target, or the error', async (t) => {
  const a = await resetting(t, 150)
  const b = await resetting(t, 150)
  const c = await timed(t, 'c', 0)
  const d = await resetting(t, 150)
  const e = await resetting(t, 150)
  const passive = { consecutiveFailures: 5 }
  const { app, url, seen } = await gateway(t, {
    upstreams: {
      // weighted: the first attempt goes to a, the hedge to b, a retry to c
      retried: { targets: [{ url: a.url, weight: 1000 }, { url: b.url, weight: 100 }, { url: c.url, weight: 1 }], balancer: 'round-robin', retry: { hedge: { delay: 50 }, backoff: { base: 0 } }, healthCheck: { passive } },
      failing: { targets: [d.url, e.url], balancer: 'round-robin', retry: { attempts: 0, hedge: { delay: 50 } }, healthCheck: { passive } }
    }
  }, (app) => {
    app.get('/retried', (_request, reply) => reply.forward('retried'))
    app.get('/failing', (_request, reply) => reply.forward('failing'))
  })

  const retried = await timedGet(`${url}/retried`)
  t.equal(retried.status, 200)
  t.equal(retried.upstream, 'c', 'the retry went to the third target')
  t.equal(a.hits(), 1)
  t.equal(b.hits(), 1, 'the hedge went to the second')
  t.equal(proxyOf(app, 'retried').hedges.sent, 1)
  t.equal(proxyOf(app, 'retried').hedges.won, 0)
  t.equal(targetOf(app, 'retried', a.url).failures, 1, 'each failure counted once')
  t.equal(targetOf(app, 'retried', b.url).failures, 1)
  t.equal(targetOf(app, 'retried', c.url).failures, 0)
  const outcome = seen.get('/retried') as Outcome
  t.match(outcome, { target: c.url, status: 200 })
  t.same(outcome.attempts.map(facts), [
    { target: a.url, status: undefined, error: 'FST_UPSTREAM_BAD_GATEWAY' },
    { target: b.url, status: undefined, error: 'FST_UPSTREAM_BAD_GATEWAY' },
    { target: c.url, status: 200, error: undefined }
  ], 'both failed attempts, then the retry')

  const failing = await fetch(`${url}/failing`)
  t.equal(failing.status, 502, 'no retry allowed: the error')
  t.match(await failing.json(), { code: 'FST_UPSTREAM_BAD_GATEWAY' })
  t.equal(d.hits() + e.hits(), 2, 'both targets saw the request once')
  t.equal(proxyOf(app, 'failing').hedges.sent, 1)
  t.equal(targetOf(app, 'failing', d.url).failures, 1, 'each failure counted once')
  t.equal(targetOf(app, 'failing', e.url).failures, 1)
  t.equal((seen.get('/failing') as Outcome).attempts.length, 2)
  t.equal(proxyOf(app, 'retried').retriesInFlight + proxyOf(app, 'failing').retriesInFlight, 0, 'the retry budget is given back')
})

test('one attempt failing while the other is pending: the other answers, the failure is recorded', async (t) => {
  const a = await resetting(t, 100)
  const b = await timed(t, 'b', 150)
  const { app, url, seen } = await gateway(t, {
    upstreams: { pool: { targets: [{ url: a.url, weight: 1000 }, { url: b.url, weight: 1 }], balancer: 'round-robin', retry: { attempts: 0, hedge: { delay: 50 } }, healthCheck: { passive: { consecutiveFailures: 5 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const got = await timedGet(`${url}/one`)
  t.equal(got.status, 200, 'the failure of the first was not the answer (no retries are allowed)')
  t.equal(got.upstream, 'b')
  t.equal(targetOf(app, 'pool', a.url).failures, 1, 'the failure counts against its target')
  t.equal(proxyOf(app, 'pool').hedges.won, 1)
  t.same((seen.get('/one') as Outcome).attempts.map(facts), [
    { target: a.url, status: undefined, error: 'FST_UPSTREAM_BAD_GATEWAY' },
    { target: b.url, status: 200, error: undefined }
  ])
})

test('the retry budget caps hedges in flight', async (t) => {
  const slow = await timed(t, 'slow', 400)
  const fast = await timed(t, 'fast', 100)
  const { app, url } = await gateway(t, {
    upstreams: {
      pool: {
        targets: [{ url: slow.url, weight: 1000 }, { url: fast.url, weight: 1 }],
        balancer: 'round-robin',
        retry: { hedge: { delay: 50 }, budget: { percent: 0, minRetries: 1 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const answers = await Promise.all([timedGet(`${url}/1`), timedGet(`${url}/2`)])
  t.same(answers.map((a) => a.upstream).sort(), ['fast', 'slow'], 'one hedged, the other waited for its target')
  t.equal(proxyOf(app, 'pool').hedges.sent, 1, 'the first hedge held the whole budget')
  t.equal(slow.hits, 2)
  t.equal(proxyOf(app, 'pool').retriesInFlight, 0)
})

/** Resolves once `read()` has not changed for `quiet` ms (at most 10 s). */
async function settled (read: () => number, quiet = 300): Promise<number> {
  const deadline = Date.now() + 10_000
  let last = read()
  let since = Date.now()
  while (Date.now() < deadline) {
    await sleep(20)
    const now = read()
    if (now !== last) {
      last = now
      since = Date.now()
    } else if (Date.now() - since >= quiet) {
      break
    }
  }
  return last
}

test('a hedged answer streams its body whole, held back while the client does not read', async (t) => {
  const total = 64 * 1024 * 1024
  const chunk = Buffer.alloc(64 * 1024)
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 7) & 0xff
  // each chunk differs in its first 4 bytes (its number): a lost or repeated chunk changes the digest
  const expected = createHash('sha256')
  for (let n = 0; n < total / chunk.length; n++) {
    chunk.writeUInt32BE(n, 0)
    expected.update(chunk)
  }
  const written = { fast: 0 }
  const flood = (name: 'fast' | 'slow') => (res: ServerResponse): void => {
    res.setHeader('content-type', 'application/octet-stream')
    let n = 0
    const pump = (): void => {
      while (n < total / chunk.length) {
        const piece = Buffer.from(chunk)
        piece.writeUInt32BE(n++, 0)
        if (name === 'fast') written.fast += piece.length
        if (!res.write(piece)) {
          res.once('drain', pump)
          return
        }
      }
      res.end()
    }
    pump()
  }
  const slow = await timed(t, 'slow', 1000, flood('slow'))
  const fast = await timed(t, 'fast', 0, flood('fast'))
  const { app, url } = await gateway(t, {
    upstreams: { pool: { targets: [{ url: slow.url, weight: 1000 }, { url: fast.url, weight: 1 }], balancer: 'round-robin', retry: { hedge: { delay: 50 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const res = await fetch(`${url}/big`)
  t.equal(res.status, 200)
  t.equal(res.headers.get('x-upstream'), 'fast', 'the hedge answered')
  const reader = (res.body as ReadableStream<Uint8Array>).getReader()
  const hash = createHash('sha256')
  let received = 0
  const first = await reader.read()
  hash.update(first.value as Uint8Array)
  received += (first.value as Uint8Array).length
  // the client stops reading: the gateway pauses the winning attempt, which holds the target back
  const stalled = await settled(() => written.fast)
  t.ok(stalled < total / 2, `the target was held back (${(stalled / 1048576).toFixed(1)} MiB of ${total / 1048576} written)`)
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    hash.update(value)
    received += value.length
  }
  t.equal(received, total)
  t.equal(hash.digest('hex'), expected.digest('hex'), 'the same bytes, in order')
  t.equal(proxyOf(app, 'pool').hedges.won, 1)
  await until('the slow attempt to be cancelled', () => slow.cancelled === 1)
  t.equal(slow.answered, 0)
})

test('a client that aborts during a hedge cancels both attempts', async (t) => {
  const a = await timed(t, 'a', 1000)
  const b = await timed(t, 'b', 1000)
  const { app, url } = await gateway(t, {
    upstreams: { pool: { targets: [a.url, b.url], retry: { hedge: { delay: 50 } }, healthCheck: { passive: { consecutiveFailures: 1 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const controller = new AbortController()
  const pending = fetch(`${url}/x`, { signal: controller.signal }).then(() => 'answered', () => 'aborted')
  await until('both attempts to reach their targets', () => a.hits === 1 && b.hits === 1)
  const aborted = performance.now()
  controller.abort()
  t.equal(await pending, 'aborted')
  await until('both targets to see their request closed', () => a.cancelled === 1 && b.cancelled === 1, 600)
  t.ok(performance.now() - aborted < 600, 'at once, not when the targets would have answered')
  t.equal(a.answered + b.answered, 0)
  await until('both out of flight', () => targetOf(app, 'pool', a.url).inflight === 0 && targetOf(app, 'pool', b.url).inflight === 0)
  t.equal(targetOf(app, 'pool', a.url).failures + targetOf(app, 'pool', b.url).failures, 0, 'no failure counted')
  t.equal(proxyOf(app, 'pool').retriesInFlight, 0, 'the retry budget is given back')
})

/** A GET on a connection of its own, closed after the answer (no keep-alive for a closing server to wait out). */
async function getOnce (url: string): Promise<{ status: number, upstream: string | undefined }> {
  return await new Promise((resolve) => {
    const req = httpRequest(url, { headers: { connection: 'close' }, agent: false }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode as number, upstream: res.headers['x-upstream'] as string | undefined }))
      res.on('error', () => resolve({ status: 0, upstream: undefined }))
    })
    req.on('error', () => resolve({ status: 0, upstream: undefined }))
    req.end()
  })
}

async function openConnections (up: Upstream): Promise<number> {
  return await new Promise((resolve) => up.server.getConnections((_error, count) => resolve(count)))
}

/** Resolves with the upstreams' open connection counts once all are 0, or after 1 s with what they are. */
async function settledConnections (ups: Upstream[]): Promise<number[]> {
  let counts: number[] = []
  for (let i = 0; i < 100; i++) {
    counts = await Promise.all(ups.map(openConnections))
    if (counts.every((n) => n === 0)) break
    await sleep(10)
  }
  return counts
}

test('app.close() with a hedge timer pending leaves nothing open', async (t) => {
  const slow = await timed(t, 'slow', 400)
  const fast = await timed(t, 'fast', 0)
  const options: FastifyUpstreamOptions = {
    upstreams: { pool: { targets: [{ url: slow.url, weight: 1000 }, { url: fast.url, weight: 1 }], balancer: 'round-robin', retry: { hedge: { delay: 150 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  }

  // a graceful close waits for the request, whose hedge still goes out (its pool is open
  // until the request ends); then everything is closed
  const graceful = await gateway(t, options)
  const gracefulProxy = proxyOf(graceful.app, 'pool')
  const pending = getOnce(`${graceful.url}/x`)
  await until('the first attempt to reach its target', () => slow.hits === 1)
  await graceful.app.close()
  t.same(await pending, { status: 200, upstream: 'fast' }, 'the hedge answered the request the close waited for')
  t.equal(gracefulProxy.hedges.sent, 1)
  t.equal(gracefulProxy.retriesInFlight, 0)
  await until('the slow attempt to be cancelled', () => slow.cancelled === 1)
  t.same(await settledConnections([slow, fast]), [0, 0], 'no connection left open to the targets')

  // a close that drops the client's connection: the timer finds the client gone and sends
  // nothing; the first attempt ends with its pool
  const forced = Fastify({ forceCloseConnections: true })
  await forced.register(fastifyUpstream, options)
  const forcedUrl = await listen(t, forced)
  const forcedProxy = proxyOf(forced, 'pool')
  const dropped = getOnce(`${forcedUrl}/y`)
  await until('the first attempt to reach its target', () => slow.hits === 2)
  await forced.close()
  t.equal((await dropped).status, 0, 'the client lost its connection')
  await sleep(250)
  t.equal(forcedProxy.hedges.sent, 0, 'no hedge for a client that is gone')
  t.equal(fast.hits, 1, 'nothing more reached the other target')
  t.equal(forcedProxy.retriesInFlight, 0)
  await until('the first attempt to be closed', () => slow.cancelled === 2)
  t.same(await settledConnections([slow, fast]), [0, 0], 'no connection left open to the targets')
})
