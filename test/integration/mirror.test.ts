// Request mirroring (pool and route option `mirror`): copies go to the mirror pool, their
// answers are dropped, and the client never waits for, fails with or sees the copy.
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { performance } from 'node:perf_hooks'
import { Readable } from 'node:stream'
import { test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { request } from 'undici'
import fastifyUpstream, { type UpstreamPool } from '../../lib/index'
import { poolProxy } from '../../lib/proxy/forwarding'
import { internalPool, type Pool } from '../../lib/upstream/pool'
import { closedPort, drive, echo, listen, logCapture, resources, settledResources, sleep, startGateway, startUpstream, startUpstreams, until, type Teardown } from '../helpers'

/** What a mirror server received. */
interface Received { method: string, url: string, headers: http.IncomingHttpHeaders, body: Buffer }

/** A mirror target that records every request (its body as bytes) and how many it held at once. */
interface Shadow {
  url: string
  received: Received[]
  /** requests being answered now, and the most at once */
  active: number
  maxActive: number
  close: () => Promise<void>
}

type Respond = (req: http.IncomingMessage, res: http.ServerResponse, shadow: Shadow) => void

/** By default a mirror answers 418 with a body of its own, which no client may ever see. */
const teapot: Respond = (_req, res) => {
  res.statusCode = 418
  res.setHeader('x-upstream', 'shadow')
  res.end('from the shadow')
}

async function startShadow (t: Teardown, respond: Respond = teapot): Promise<Shadow> {
  const shadow = { received: [], active: 0, maxActive: 0 } as unknown as Shadow
  const server = http.createServer((req, res) => {
    shadow.active++
    shadow.maxActive = Math.max(shadow.maxActive, shadow.active)
    res.on('close', () => { shadow.active-- })
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      shadow.received.push({ method: req.method as string, url: req.url as string, headers: req.headers, body: Buffer.concat(chunks) })
      respond(req, res, shadow)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  shadow.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  let closing: Promise<void> | undefined
  shadow.close = () => (closing ??= new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))
  t.teardown(shadow.close)
  return shadow
}

/** The mirror counters of pool `name` (the pool receiving the copies). */
function mirrors (app: FastifyInstance, name: string): { inflight: number, sent: number, dropped: number, failed: number } {
  return poolProxy(internalPool(app.upstreams.get(name) as UpstreamPool) as Pool).mirrors
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

test('percent 100: every request is copied with the marker header, same method, path, query and body; the client gets the main answer', async (t) => {
  const main = await startUpstream(t, 'main')
  const shadow = await startShadow(t)
  const { app, url } = await startGateway(t, {
    upstreams: {
      main: { targets: [main.url], mirror: { pool: 'shadow' } },
      shadow: { targets: [shadow.url], headers: { set: { 'x-shadow-pool': 'yes' } } }
    },
    routes: [{ prefix: '/api', upstream: 'main', rewritePrefix: '/v1' }]
  })
  const calls: Array<{ method: string, path: string, body?: string }> = [
    { method: 'GET', path: '/api/a?x=1&y=%20two' },
    { method: 'POST', path: '/api/b?q=1', body: 'hello mirror' },
    { method: 'PUT', path: '/api/c', body: '{"n":2}' },
    { method: 'DELETE', path: '/api/d/e?z' }
  ]
  for (const call of calls) {
    const res = await fetch(`${url}${call.path}`, {
      method: call.method,
      headers: { 'x-custom': 'kept', ...(call.body === undefined ? {} : { 'content-type': 'text/plain' }) },
      body: call.body
    })
    t.equal(res.status, 200, `${call.method}: the main target's status, not the mirror's 418`)
    t.equal(res.headers.get('x-upstream'), 'main')
    const answer = await echo(res)
    t.equal(answer.body, call.body ?? '', 'the main target got the body')
    t.equal(main.last?.headers['x-upstream-mirror'], undefined, 'the main request carries no marker')
  }
  await until('every copy answered', () => mirrors(app, 'shadow').sent === calls.length)
  t.equal(shadow.received.length, calls.length, 'one copy per request')
  const byPath = new Map(shadow.received.map((r) => [r.url, r]))
  const shadowHost = new URL(shadow.url).host
  for (const call of calls) {
    const copy = byPath.get(call.path.replace('/api', '/v1'))
    if (copy === undefined) {
      t.fail(`no copy of ${call.method} ${call.path}`)
      continue
    }
    t.equal(copy.method, call.method)
    t.equal(copy.headers['x-upstream-mirror'], '1', 'marked as a copy')
    t.equal(copy.headers['x-custom'], 'kept', 'with the client\'s headers')
    t.equal(copy.headers['x-shadow-pool'], 'yes', 'through the mirror pool\'s header policy')
    t.equal(copy.headers.host, shadowHost, 'Host is the mirror target\'s (host: target)')
    t.equal(copy.body.toString(), call.body ?? '', 'the same body')
    if (call.body !== undefined) t.equal(copy.headers['content-length'], String(Buffer.byteLength(call.body)))
  }
  t.same(mirrors(app, 'shadow'), { inflight: 0, sent: 4, dropped: 0, failed: 0 })
  t.same(mirrors(app, 'main'), { inflight: 0, sent: 0, dropped: 0, failed: 0 }, 'nothing counted on the mirrored pool')
  t.equal(app.upstreams.get('shadow')?.targets[0].requests, 4, 'the copies count as the mirror target\'s requests')
  t.equal(app.upstreams.get('main')?.targets[0].requests, 4, 'and not as the main pool\'s')
})

test('a request that already carries the marker header is not copied again (no mirror loops)', async (t) => {
  const main = await startUpstream(t, 'main')
  const shadow = await startShadow(t)
  const { app, url } = await startGateway(t, {
    upstreams: { main: { targets: [main.url], mirror: { pool: 'shadow', header: 'X-Shadow' } }, shadow: { targets: [shadow.url] } },
    routes: [{ prefix: '/', upstream: 'main' }]
  })
  t.equal((await fetch(`${url}/marked`, { headers: { 'x-shadow': '1' } })).status, 200)
  t.equal((await fetch(`${url}/plain`)).status, 200)
  await until('the one copy', () => mirrors(app, 'shadow').sent === 1)
  await sleep(50)
  t.same(shadow.received.map((r) => [r.url, r.headers['x-shadow']]), [['/plain', '1']], 'the configured header name marks copies')
})

test('percent samples requests: 25% of 2,000 within a few percent', async (t) => {
  const main = await startUpstream(t, 'main')
  const shadow = await startShadow(t, (_req, res) => res.end())
  const { app, url } = await startGateway(t, {
    upstreams: { main: { targets: [main.url], mirror: { pool: 'shadow', percent: 25 } }, shadow: { targets: [shadow.url] } },
    routes: [{ prefix: '/', upstream: 'main' }]
  })
  const total = 2000
  const counts = await drive(`${url}/s`, total, 16)
  t.same(counts, { main: total }, 'every client answered by the main target')
  await until('the copies answered', () => mirrors(app, 'shadow').inflight === 0)
  const { sent, dropped, failed } = mirrors(app, 'shadow')
  t.equal(dropped + failed, 0)
  t.equal(shadow.received.length, sent)
  // binomial: sd about 19 requests; 3.5 points is about 3.6 sd
  t.ok(Math.abs(sent / total - 0.25) < 0.035, `${sent} of ${total} copied (${(100 * sent / total).toFixed(1)}%)`)
})

test('a slow mirror does not slow the client; copies beyond maxConcurrent are dropped', async (t) => {
  const main = await startUpstream(t, 'main')
  const timers = new Set<NodeJS.Timeout>()
  t.teardown(() => { for (const timer of timers) clearTimeout(timer) })
  const shadow = await startShadow(t, (_req, res) => {
    const timer = setTimeout(() => { timers.delete(timer); res.end('late') }, 2000)
    timers.add(timer)
  })
  const { app, url } = await startGateway(t, {
    upstreams: {
      plain: { targets: [main.url] },
      mirrored: { targets: [main.url], mirror: { pool: 'shadow', maxConcurrent: 5 } },
      shadow: { targets: [shadow.url] }
    },
    routes: [{ prefix: '/plain', upstream: 'plain' }, { prefix: '/mirrored', upstream: 'mirrored' }]
  })
  const plain: number[] = []
  const mirrored: number[] = []
  const rounds = 30
  for (let i = 0; i < rounds; i++) {
    for (const [path, times] of [['/plain', plain], ['/mirrored', mirrored]] as const) {
      const start = performance.now()
      const res = await request(`${url}${path}/x`)
      await res.body.text()
      times.push(performance.now() - start)
      t.equal(res.statusCode, 200)
    }
  }
  const counts = mirrors(app, 'shadow')
  t.ok(median(mirrored) < median(plain) + 25, `median ${median(mirrored).toFixed(1)} ms with a 2 s mirror, ${median(plain).toFixed(1)} ms without`)
  t.ok(Math.max(...mirrored) < 1000, 'no client waited for the mirror')
  t.ok(counts.inflight <= 5, `at most 5 copies in flight (${counts.inflight})`)
  t.ok(counts.dropped > 0, `copies beyond the limit dropped (${counts.dropped})`)
  await until('the held copies answered', () => mirrors(app, 'shadow').inflight === 0, 6000)
  t.ok(shadow.maxActive <= 5, `the mirror never held more than 5 (${shadow.maxActive})`)
  t.equal(counts.sent + counts.dropped, rounds, 'every sampled request sent or dropped')
  t.ok(counts.sent >= 5)
  t.equal(counts.failed, 0)
})

test('a failing mirror (500s and resets): every client gets 200; resets count as failed, 500s as sent', async (t) => {
  const main = await startUpstream(t, 'main')
  let resets = 0
  let errors = 0
  const shadow = await startShadow(t, (req, res) => {
    if ((req.url as string).includes('reset')) {
      resets++
      req.socket.resetAndDestroy()
    } else {
      errors++
      res.statusCode = 500
      res.end('broken')
    }
  })
  const { app, url } = await startGateway(t, {
    upstreams: { main: { targets: [main.url], mirror: { pool: 'shadow' } }, shadow: { targets: [shadow.url] } },
    routes: [{ prefix: '/', upstream: 'main' }]
  })
  const answers = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
    const res = await fetch(`${url}/${i % 2 === 0 ? 'reset' : 'error'}/${i}`)
    return [res.status, (await echo(res)).upstream]
  }))
  t.same(answers, Array.from({ length: 20 }, () => [200, 'main']), 'every client got the main target\'s answer')
  await until('the copies ended', () => { const c = mirrors(app, 'shadow'); return c.inflight === 0 && c.sent + c.failed + c.dropped === 20 })
  t.same({ resets, errors }, { resets: 10, errors: 10 }, 'the mirror saw every copy')
  t.same(mirrors(app, 'shadow'), { inflight: 0, sent: 10, dropped: 0, failed: 10 })
  t.equal(app.upstreams.get('shadow')?.targets[0].inflight, 0, 'the mirror target\'s in-flight count is back to 0')
})

test('the mirror pool\'s only target is down: clients unaffected, copies counted failed or dropped', async (t) => {
  const main = await startUpstream(t, 'main')
  const gone = await closedPort()
  const { app, url } = await startGateway(t, {
    upstreams: { main: { targets: [main.url], mirror: { pool: 'shadow' } }, shadow: { targets: [gone] } },
    routes: [{ prefix: '/', upstream: 'main' }]
  })
  const counts = await drive(`${url}/x`, 20, 4)
  t.same(counts, { main: 20 })
  await until('the copies ended', () => { const c = mirrors(app, 'shadow'); return c.inflight === 0 && c.failed + c.dropped === 20 })
  t.equal(mirrors(app, 'shadow').sent, 0)
  t.ok(mirrors(app, 'shadow').failed > 0, 'refused connections count as failed')
})

test('flooded: with maxConcurrent 3 and 30 parallel clients, no client fails and the mirror never holds more than 3', async (t) => {
  const main = await startUpstream(t, 'main')
  const shadow = await startShadow(t, (_req, res) => { setTimeout(() => res.end('ok'), 50) })
  const { app, url } = await startGateway(t, {
    upstreams: { main: { targets: [main.url], mirror: { pool: 'shadow', maxConcurrent: 3 } }, shadow: { targets: [shadow.url] } },
    routes: [{ prefix: '/', upstream: 'main' }]
  })
  let maxInflight = 0
  const sampler = setInterval(() => { maxInflight = Math.max(maxInflight, mirrors(app, 'shadow').inflight) }, 1)
  t.teardown(() => clearInterval(sampler))
  const total = 600
  const counts = await drive(`${url}/flood`, total, 30)
  clearInterval(sampler)
  t.same(counts, { main: total }, 'every client answered 200 by the main target')
  await until('the copies ended', () => mirrors(app, 'shadow').inflight === 0)
  const { sent, dropped, failed } = mirrors(app, 'shadow')
  t.ok(dropped > 0, `copies dropped (${dropped})`)
  t.equal(sent + dropped + failed, total)
  t.equal(failed, 0)
  t.ok(maxInflight <= 3, `in flight at most 3 (${maxInflight})`)
  t.ok(shadow.maxActive <= 3, `the mirror held at most 3 at once (${shadow.maxActive})`)
  t.equal(shadow.received.length, sent)
})

test('a copy with no (whole) answer within timeout fails and frees its place', async (t) => {
  const main = await startUpstream(t, 'main')
  const streams = new Set<NodeJS.Timeout>()
  t.teardown(() => { for (const timer of streams) clearInterval(timer) })
  // /silent gets no answer; /trickle gets its headers at once, then a byte every 50 ms for ever
  const shadow = await startShadow(t, (req, res) => {
    if ((req.url as string).startsWith('/silent')) return
    res.writeHead(200)
    const timer = setInterval(() => res.write('.'), 50)
    streams.add(timer)
    res.on('close', () => { clearInterval(timer); streams.delete(timer) })
  })
  const { app, url } = await startGateway(t, {
    upstreams: { main: { targets: [main.url], mirror: { pool: 'shadow', timeout: 400 } }, shadow: { targets: [shadow.url] } },
    routes: [{ prefix: '/', upstream: 'main' }]
  })
  const start = performance.now()
  t.equal((await fetch(`${url}/silent`)).status, 200)
  t.equal((await fetch(`${url}/trickle`)).status, 200)
  await until('both copies ended', () => mirrors(app, 'shadow').inflight === 0 && shadow.received.length === 2, 3000)
  const took = performance.now() - start
  t.same(mirrors(app, 'shadow'), { inflight: 0, sent: 0, dropped: 0, failed: 2 }, 'both timed out')
  t.ok(took < 1500, `ended after about the timeout (${took.toFixed(0)} ms)`)
  await until('the mirror saw the copies closed', () => shadow.active === 0, 2000)
})

test('bodies: a streamed body over the limit is not mirrored (counted dropped), one within it is copied byte for byte; a parsed JSON body too', async (t) => {
  // two main targets: the pool's retries keep their own recording of the body (PUT) or stream it once (POST)
  const mains = await startUpstreams(t, 2)
  const shadow = await startShadow(t)
  const { app, url } = await startGateway(t, {
    upstreams: { main: { targets: mains.map((u) => u.url), mirror: { pool: 'shadow', body: 1000 } }, shadow: { targets: [shadow.url] } },
    routes: [{ prefix: '/up', upstream: 'main' }]
  }, (app) => {
    app.post('/json', (_request, reply) => reply.forward('main', { url: '/json-upstream' }))
  })
  const counts = (): ReturnType<typeof mirrors> => mirrors(app, 'shadow')
  const hits = (): number => mains[0].hits + mains[1].hits

  // over the limit, announced by Content-Length: refused at once
  const big = randomBytes(5000)
  let res = await request(`${url}/up/big`, { method: 'POST', body: big, headers: { 'content-type': 'application/octet-stream' } })
  t.equal(res.statusCode, 200)
  t.equal((await res.body.json() as { body: string }).body, big.toString(), 'the main target got the whole body')
  t.equal(counts().dropped, 1, 'counted dropped')

  // over the limit, streamed chunked: found out when the recording overflows
  res = await request(`${url}/up/big-chunked`, { method: 'PUT', body: Readable.from([big.subarray(0, 600), big.subarray(600, 2000), big.subarray(2000)]), headers: { 'content-type': 'application/octet-stream' } })
  t.equal(res.statusCode, 200)
  t.equal((await res.body.json() as { body: string }).body, big.toString(), 'the main target got the whole chunked body')
  t.equal(counts().dropped, 2, 'counted dropped')

  // within the limit, with a length and chunked, POST (streamed once) and PUT (recorded for retries)
  const small = randomBytes(800)
  for (const [method, chunked] of [['POST', false], ['PUT', false], ['POST', true], ['PUT', true]] as const) {
    const body = chunked ? Readable.from([small.subarray(0, 300), small.subarray(300)]) : small
    res = await request(`${url}/up/small-${method}-${chunked}?k=v`, { method, body, headers: { 'content-type': 'application/x-bytes' } })
    t.equal(res.statusCode, 200)
    t.equal((await res.body.json() as { body: string }).body, small.toString(), `${method} ${chunked ? 'chunked' : 'with a length'}: the main target got the whole body`)
  }
  // a JSON body parsed by the route, forwarded with reply.forward: serialised as reply-from does
  const json = { a: 1, list: ['x', 'y'], nested: { ok: true } }
  const forwarded = await fetch(`${url}/json`, { method: 'POST', headers: { 'content-type': 'application/json; charset=utf-8' }, body: JSON.stringify(json, null, 2) })
  t.equal(forwarded.status, 200)
  const mainGot = (await echo(forwarded)).body
  t.equal(mainGot, JSON.stringify(json))

  await until('the small copies', () => counts().sent === 5)
  t.equal(hits(), 7)
  t.same(counts(), { inflight: 0, sent: 5, dropped: 2, failed: 0 })
  t.notOk(shadow.received.some((r) => r.url.startsWith('/big')), 'no copy of a body over the limit')
  for (const [method, chunked] of [['POST', false], ['PUT', false], ['POST', true], ['PUT', true]] as const) {
    const copy = shadow.received.find((r) => r.url === `/small-${method}-${chunked}?k=v`)
    t.ok(copy?.body.equals(small), `${method} ${chunked ? 'chunked' : 'with a length'}: the copy's body is byte-identical`)
    t.equal(copy?.method, method)
    t.equal(copy?.headers['content-length'], '800', 'sent with its length')
    t.equal(copy?.headers['transfer-encoding'], undefined)
    t.equal(copy?.headers['content-type'], 'application/x-bytes')
  }
  const copy = shadow.received.find((r) => r.url === '/json-upstream')
  t.equal(copy?.body.toString(), mainGot, 'the JSON copy is what the main target got')
  t.equal(copy?.headers['content-type'], 'application/json', 'with reply-from\'s content type')
})

test('a request body the main target does not read whole (it answers first) is not mirrored', async (t) => {
  // the main targets answer without reading the body, then the client's upload is dropped
  const mains = await startUpstreams(t, 2)
  for (const main of mains) {
    main.server.removeAllListeners('request')
    main.server.on('request', (_req, res) => { res.setHeader('x-upstream', 'main'); res.end('early') })
  }
  const shadow = await startShadow(t)
  const { app, url } = await startGateway(t, {
    upstreams: { main: { targets: mains.map((u) => u.url), mirror: { pool: 'shadow', body: 1_000_000 } }, shadow: { targets: [shadow.url] } },
    routes: [{ prefix: '/', upstream: 'main' }]
  })
  // the body arrives slowly: the main target has answered long before it ends
  async function * slowly (): AsyncGenerator<Buffer> {
    for (let i = 0; i < 5; i++) {
      yield Buffer.alloc(1000, 97)
      await sleep(40)
    }
  }
  // POST streams the body once; PUT has it recorded for a retry as well
  for (const method of ['POST', 'PUT'] as const) {
    const res = await request(`${url}/early`, { method, body: Readable.from(slowly()), headers: { 'content-type': 'text/plain' } }).catch((error: Error) => error)
    if (!(res instanceof Error)) await res.body.dump().catch(() => {})
  }
  await until('the copies given up', () => mirrors(app, 'shadow').dropped === 2, 3000)
  t.same(mirrors(app, 'shadow'), { inflight: 0, sent: 0, dropped: 2, failed: 0 }, 'a cut-off body is never sent as a copy')
  await sleep(50)
  t.equal(shadow.received.length, 0)
})

test('reply.forward options (url with or without a query, method, body, queryString) shape the copy as they shape the main request', async (t) => {
  const main = await startUpstream(t, 'main')
  const shadow = await startShadow(t)
  const { app, url } = await startGateway(t, {
    upstreams: { main: { targets: [main.url], mirror: { pool: 'shadow' } }, shadow: { targets: [shadow.url] } }
  }, (app) => {
    app.get('/own-query', (_request, reply) => reply.forward('main', { url: '/t1?own=1' }))
    app.get('/client-query', (_request, reply) => reply.forward('main', { url: '/t2' }))
    app.get('/options', (_request, reply) => reply.forward('main', { url: '/t3', method: 'PUT', body: { z: 1 }, queryString: { a: 'b c' } }))
  })
  const seen: Record<string, Received> = {}
  for (const path of ['/own-query?client=2', '/client-query?client=2', '/options?client=2']) {
    const res = await fetch(`${url}${path}`)
    t.equal(res.status, 200)
    const answer = await echo(res)
    await until(`the copy of ${path}`, () => shadow.received.length === Object.keys(seen).length + 1)
    const copy = shadow.received[shadow.received.length - 1]
    seen[path] = copy
    t.same([copy.method, copy.url, copy.body.toString()], [answer.method, answer.url, answer.body], `${path}: the copy is what the main target got`)
  }
  t.equal(seen['/own-query?client=2'].url, '/t1?own=1')
  t.equal(seen['/client-query?client=2'].url, '/t2?client=2')
  t.same([seen['/options?client=2'].method, seen['/options?client=2'].url, seen['/options?client=2'].body.toString()], ['PUT', '/t3?a=b%20c', '{"z":1}'])
  t.equal(seen['/options?client=2'].headers['content-type'], 'application/json')
  await until('counted', () => mirrors(app, 'shadow').sent === 3)
})

test('a mount\'s mirror takes the place of its pool\'s', async (t) => {
  const main = await startUpstream(t, 'main')
  const poolShadow = await startShadow(t)
  const mountShadow = await startShadow(t)
  const { app, url } = await startGateway(t, {
    upstreams: {
      main: { targets: [main.url], mirror: { pool: 'a' } },
      a: { targets: [poolShadow.url] },
      b: { targets: [mountShadow.url] }
    },
    routes: [
      { prefix: '/own', upstream: 'main', rewritePrefix: '/own', mirror: { pool: 'b' } },
      { prefix: '/inherited', upstream: 'main', rewritePrefix: '/inherited' }
    ]
  })
  for (let i = 0; i < 3; i++) {
    t.equal((await fetch(`${url}/own/${i}`)).status, 200)
    t.equal((await fetch(`${url}/inherited/${i}`)).status, 200)
  }
  await until('the copies', () => mirrors(app, 'a').sent === 3 && mirrors(app, 'b').sent === 3)
  t.same(poolShadow.received.map((r) => r.url).sort(), ['/inherited/0', '/inherited/1', '/inherited/2'], 'the pool\'s mirror gets the other mount\'s requests')
  t.same(mountShadow.received.map((r) => r.url).sort(), ['/own/0', '/own/1', '/own/2'], 'the mount\'s mirror gets its own, and only those')
})

test('close() with copies in flight finishes promptly and leaves nothing open', async (t) => {
  const main = await startUpstream(t, 'main')
  // holds every copy without answering
  const shadow = await startShadow(t, () => {})
  // what is left of earlier tests closes first
  const before = await settledResources()
  const { app, url } = await startGateway(t, {
    upstreams: { main: { targets: [main.url], mirror: { pool: 'shadow', timeout: 60_000 } }, shadow: { targets: [shadow.url] } },
    routes: [{ prefix: '/', upstream: 'main' }]
  })
  t.same(await drive(`${url}/held`, 5, 5), { main: 5 }, 'the clients are answered while the mirror holds every copy')
  await until('the mirror holds five copies', () => shadow.active === 5)
  const counts = mirrors(app, 'shadow')
  t.equal(counts.inflight, 5)
  const start = performance.now()
  await app.close()
  const took = performance.now() - start
  t.ok(took < 1000, `closed in ${took.toFixed(0)} ms`)
  t.same(counts, { inflight: 0, sent: 0, dropped: 0, failed: 5 }, 'the held copies ended with the mirror pool\'s connections')
  for (let i = 0; i < 50 && resources().length > before.length; i++) await sleep(20)
  t.same(resources(), before, 'no timer, socket or server left behind')
})

test('the counts are in the metrics, by mirror pool and result', async (t) => {
  const main = await startUpstream(t, 'main')
  const shadow = await startShadow(t)
  const { app, url } = await startGateway(t, {
    upstreams: { main: { targets: [main.url], mirror: { pool: 'shadow' } }, shadow: { targets: [shadow.url] } },
    routes: [{ prefix: '/', upstream: 'main' }],
    statusRoute: '/status'
  })
  await drive(`${url}/x`, 12, 3)
  await until('the copies ended', () => mirrors(app, 'shadow').sent === 12)
  const text = await (await fetch(`${url}/status/metrics`)).text()
  t.match(text, 'fastify_upstream_mirror_requests_total{pool="shadow",result="sent"} 12')
  t.match(text, 'fastify_upstream_mirror_requests_total{pool="shadow",result="failed"} 0')
  t.match(text, 'fastify_upstream_mirror_requests_total{pool="main",result="dropped"} 0')
})

test('a mirror naming no pool is a warning at register; its copies start once the pool is added', async (t) => {
  const main = await startUpstream(t, 'main')
  const shadow = await startShadow(t)
  const { lines, stream } = logCapture()
  const app = Fastify({ logger: { stream, level: 'warn' } })
  await app.register(fastifyUpstream, {
    upstreams: { main: { targets: [main.url], mirror: { pool: 'later' } } },
    routes: [{ prefix: '/r', upstream: 'main', mirror: { pool: 'later-too' } }, { prefix: '/', upstream: 'main' }]
  })
  const url = await listen(t, app)
  t.same(lines.filter((line) => line.level === 40).map((line) => line.msg), [
    'no pool "later" to mirror to: copies are sent once a pool of that name is added',
    'no pool "later-too" to mirror to: copies are sent once a pool of that name is added'
  ])
  t.equal((await fetch(`${url}/x`)).status, 200)
  app.upstreams.add('later', { targets: [shadow.url] })
  t.equal((await fetch(`${url}/y`)).status, 200)
  await until('the copy arrived', () => shadow.received.length === 1)
  t.equal(shadow.received[0].url, '/y')
})
