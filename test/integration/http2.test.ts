// HTTP/2 to the targets (pool option `http2`): real node:http2 servers on loopback, h2c
// and TLS with ALPN, through the gateway (HTTP/1.1 on the client side).
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import http from 'node:http'
import http2 from 'node:http2'
import https from 'node:https'
import net, { type AddressInfo } from 'node:net'
import { Duplex, PassThrough, Readable } from 'node:stream'
import { test } from 'tap'
import { Agent, request } from 'undici'
import WebSocket, { WebSocketServer } from 'ws'
import type { UpstreamPool } from '../../lib/upstream/api'
import { internalPool, type Pool } from '../../lib/upstream/pool'
import { rawExchange, registerError, resources, settledResources, startGateway, until, type Teardown } from '../helpers'
import { ca, skip, upstreamCert } from '../private-ca'

type Kind = 'h2c' | 'h2' | 'https' | 'http'
type Req = http.IncomingMessage | http2.Http2ServerRequest
type Res = http.ServerResponse | http2.Http2ServerResponse

/** A target server: h2c (node:http2 cleartext: no HTTP/1.1 at all), h2 (TLS, h2 or http/1.1 by ALPN), https or http (HTTP/1.1 only). */
interface Target {
  name: string
  url: string
  server: http2.Http2Server | http2.Http2SecureServer | http.Server | https.Server
  /** HTTP/2 sessions accepted, and those still open */
  sessions: number
  open: Set<http2.ServerHttp2Session>
  /** TCP connections accepted */
  connections: number
  /** every request's HTTP version, path and headers, in order */
  seen: Array<{ version: string, url: string, method: string, headers: http.IncomingHttpHeaders }>
  /** requests being handled now, and the most at once */
  active: number
  maxActive: number
  /** requests held by a holding target, answered by release() */
  held: Res[]
  release: () => void
  /** answers what is held and every later request at once (a test's teardown: nothing then waits for a hold) */
  stopHolding: () => void
  holding: boolean
  close: () => Promise<void>
}

type Handler = (req: Req, res: Res, target: Target) => void

/** Answers JSON: who answered, over which HTTP version, what it got (the body's length and hash). */
function echoJson (req: Req, res: Res, target: Target): void {
  const hash = createHash('sha256')
  let length = 0
  req.on('data', (chunk: Buffer) => { length += chunk.length; hash.update(chunk) })
  req.on('end', () => {
    res.setHeader('content-type', 'application/json')
    res.setHeader('x-upstream', target.name)
    res.end(JSON.stringify({ upstream: target.name, version: req.httpVersion, method: req.method, url: req.url, length, sha256: hash.digest('hex') }))
  })
}

/** Holds every request until the test calls release() (or the target closes). */
function hold (req: Req, res: Res, target: Target): void {
  req.resume()
  target.held.push(res)
  if (!target.holding) target.release()
}

/** Streams the request body back as the response body. */
function echoBody (req: Req, res: Res, target: Target): void {
  res.setHeader('x-upstream', target.name)
  res.setHeader('x-version', req.httpVersion)
  ;(req as Readable).pipe(res as unknown as NodeJS.WritableStream)
}

async function startTarget (t: Teardown, name: string, kind: Kind, handler: Handler = echoJson): Promise<Target> {
  const target = { name, sessions: 0, open: new Set(), connections: 0, seen: [], active: 0, maxActive: 0, held: [], holding: true } as unknown as Target
  const onRequest = (req: Req, res: Res): void => {
    target.seen.push({ version: req.httpVersion, url: req.url as string, method: req.method as string, headers: req.headers as http.IncomingHttpHeaders })
    target.active++
    target.maxActive = Math.max(target.maxActive, target.active)
    let done = false
    const finish = (): void => { if (!done) { done = true; target.active-- } }
    res.on('finish', finish)
    res.on('close', finish)
    handler(req, res, target)
  }
  const server = kind === 'h2c'
    ? http2.createServer(onRequest)
    : kind === 'h2'
      ? http2.createSecureServer({ ...upstreamCert, allowHTTP1: true }, onRequest)
      : kind === 'https' ? https.createServer(upstreamCert, onRequest) : http.createServer(onRequest)
  server.on('session', (session: http2.ServerHttp2Session) => {
    target.sessions++
    target.open.add(session)
    session.on('close', () => target.open.delete(session))
    session.on('error', () => {})
  })
  server.on(kind === 'h2' || kind === 'https' ? 'secureConnection' : 'connection', () => { target.connections++ })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  target.server = server
  target.url = `${kind === 'h2' || kind === 'https' ? 'https' : 'http'}://127.0.0.1:${(server.address() as AddressInfo).port}`
  target.release = () => {
    for (const res of target.held.splice(0)) {
      res.setHeader('x-upstream', name)
      res.end(name)
    }
  }
  target.stopHolding = () => {
    target.holding = false
    target.release()
  }
  let closing: Promise<void> | undefined
  target.close = () => (closing ??= new Promise<void>((resolve) => {
    target.stopHolding()
    for (const session of target.open) session.destroy()
    if ('closeAllConnections' in server) server.closeAllConnections()
    server.close(() => resolve())
  }))
  t.teardown(target.close)
  return target
}

function internal (api: UpstreamPool | undefined): Pool {
  const pool = api === undefined ? undefined : internalPool(api)
  if (pool === undefined) throw new Error('no pool')
  return pool
}

/** Sends `count` GETs at once and resolves with their statuses (bodies read; 0 for a request that failed). */
function burst (url: string, count: number, agent?: Agent, method: 'GET' | 'POST' | 'DELETE' = 'GET'): Array<Promise<number>> {
  return Array.from({ length: count }, async () => {
    try {
      const res = await request(url, { method, dispatcher: agent })
      await res.body.dump()
      return res.statusCode
    } catch {
      return 0
    }
  })
}

test('h2c: two targets answer GET and POST over HTTP/2, large bodies streamed both ways; request.upstream as over HTTP/1.1', async (t) => {
  const a = await startTarget(t, 'a', 'h2c')
  const b = await startTarget(t, 'b', 'h2c', (req, res, target) => {
    if (req.method === 'PUT') echoBody(req, res, target)
    else echoJson(req, res, target)
  })
  const outcomes: unknown[] = []
  const { url } = await startGateway(t, {
    upstreams: { h2: { targets: [a.url, b.url], http2: 'h2c', balancer: 'round-robin' } },
    routes: [{ prefix: '/api', upstream: 'h2' }]
  }, (app) => {
    app.addHook('onResponse', async (req) => { outcomes.push(req.upstream) })
  })

  const answers = []
  for (let i = 0; i < 4; i++) {
    const res = await fetch(`${url}/api/get?i=${i}`)
    t.equal(res.status, 200)
    answers.push(await res.json() as { upstream: string, version: string, url: string })
  }
  t.same(answers.map((x) => x.version), ['2.0', '2.0', '2.0', '2.0'], 'every target saw HTTP/2')
  t.same(answers.map((x) => x.upstream).sort(), ['a', 'a', 'b', 'b'], 'both targets answered')
  t.equal(answers[0].url, '/get?i=0', 'path and query as over HTTP/1.1')
  t.equal(a.seen[0].headers[':authority'], new URL(a.url).host, 'Host went as :authority')
  t.equal(a.seen[0].headers['x-forwarded-for'], '127.0.0.1', 'the header policy applied')
  t.match(outcomes[0], { pool: 'h2', status: 200, attempts: [{ status: 200, error: undefined }] }, 'request.upstream')

  // a POST with a 6 MB body streamed by the client (chunked), to a target on HTTP/2
  const chunk = randomBytes(64 * 1024)
  const sent = createHash('sha256')
  let size = 0
  function * body (): Generator<Buffer> {
    for (let i = 0; i < 96; i++) {
      const part = Buffer.from(chunk)
      part.writeUInt32BE(i, 0)
      sent.update(part)
      size += part.length
      yield part
    }
  }
  const post = await request(`${url}/api/upload`, { method: 'POST', body: Readable.from(body()), headers: { 'content-type': 'application/octet-stream' } })
  t.equal(post.statusCode, 200)
  const echoed = await post.body.json() as { version: string, method: string, length: number, sha256: string }
  t.match(echoed, { version: '2.0', method: 'POST', length: size, sha256: sent.digest('hex') }, 'the target got the whole body, byte for byte')

  // streamed both ways at once: the target echoes the body as it arrives (no Content-Length)
  const back = createHash('sha256')
  const out = createHash('sha256')
  function * pieces (): Generator<Buffer> {
    for (let i = 0; i < 128; i++) {
      const part = Buffer.from(chunk)
      part.writeUInt32BE(i + 1000, 0)
      out.update(part)
      yield part
    }
  }
  // b answers PUT with the echo; round-robin may pick a first, so ask until b answers
  let put
  for (let i = 0; i < 2; i++) {
    put = await request(`${url}/api/echo`, { method: 'PUT', body: Readable.from(pieces()) })
    if (put.headers['x-upstream'] === 'b') break
    await put.body.dump()
  }
  if (put === undefined) throw new Error('no answer')
  t.equal(put.headers['x-upstream'], 'b')
  t.equal(put.headers['x-version'], '2.0')
  let received = 0
  for await (const part of put.body) { received += (part as Buffer).length; back.update(part as Buffer) }
  t.equal(received, 128 * chunk.length, '8 MB came back')
  t.equal(back.digest('hex'), out.digest('hex'), 'as sent')
  t.equal(a.sessions + b.sessions, 2, 'one HTTP/2 connection per target carried it all')
})

test('multiplexing: 50 requests at once to one target go over one connection (maxConnections 1), each counted in flight', async (t) => {
  const target = await startTarget(t, 'solo', 'h2c', hold)
  const { app, url } = await startGateway(t, {
    upstreams: { h2: { targets: [target.url], http2: 'h2c', maxConnections: 1 } },
    routes: [{ prefix: '/api', upstream: 'h2' }],
    statusRoute: '/status'
  })
  // before the gateway's close, which waits for the requests in flight
  t.teardown(target.stopHolding)
  const agent = new Agent({ connections: 50 })
  t.teardown(() => agent.destroy())
  const statuses = Promise.all(burst(`${url}/api/x`, 50, agent))
  await until('50 requests at the target at once', () => target.held.length === 50)
  t.equal(target.maxActive, 50, 'the target handled 50 streams at once')
  t.equal(target.sessions, 1, 'over one HTTP/2 connection')
  t.equal(target.connections, 1, 'one TCP connection')
  t.equal(app.upstreams.status().pools.h2.targets[0].inflight, 50, 'status: 50 in flight (one per stream)')
  const metrics = await (await fetch(`${url}/status/metrics`)).text()
  t.match(metrics, new RegExp(`fastify_upstream_inflight\\{pool="h2",target="${target.url}"\\} 50`), 'metrics: the same')
  target.release()
  t.same(await statuses, Array(50).fill(200), 'every request answered')
  t.equal(app.upstreams.status().pools.h2.targets[0].inflight, 0)
  t.equal(app.upstreams.status().pools.h2.targets[0].requests, 50)

  // methods undici does not take as idempotent (DELETE, a POST with no body) share the connection too
  const deletes = [...burst(`${url}/api/x`, 10, agent, 'DELETE'), ...burst(`${url}/api/x`, 10, agent, 'POST')]
  await until('20 DELETE and POST requests at the target at once', () => target.held.length === 20)
  t.equal(target.active, 20, 'DELETE and POST streams at once')
  target.release()
  t.same(await Promise.all(deletes), Array(20).fill(200))
  t.equal(target.sessions, 1, 'still the one connection')
})

test('least-request balances streams: 20 held requests split evenly over two targets, one connection each', async (t) => {
  const a = await startTarget(t, 'a', 'h2c', hold)
  const b = await startTarget(t, 'b', 'h2c', hold)
  const { app, url } = await startGateway(t, {
    upstreams: { h2: { targets: [a.url, b.url], http2: 'h2c', balancer: 'least-request', maxConnections: 1 } },
    routes: [{ prefix: '/api', upstream: 'h2' }]
  })
  t.teardown(() => { a.stopHolding(); b.stopHolding() })
  const agent = new Agent({ connections: 20 })
  t.teardown(() => agent.destroy())
  const statuses = Promise.all(burst(`${url}/api/x`, 20, agent))
  await until('20 requests held', () => a.held.length + b.held.length === 20)
  t.ok(Math.abs(a.held.length - b.held.length) <= 2, `evenly: ${a.held.length} and ${b.held.length}`)
  const status = app.upstreams.status().pools.h2.targets
  t.same(status.map((target) => target.inflight), [a.held.length, b.held.length], 'in flight = the streams each target holds')
  t.same([a.sessions, b.sessions], [1, 1], 'one connection each')
  a.release()
  b.release()
  t.same(await statuses, Array(20).fill(200))
})

test('a target at its stream limit is full: maxConnections × maxConcurrentStreams + maxPending', async (t) => {
  const a = await startTarget(t, 'a', 'h2c', hold)
  const b = await startTarget(t, 'b', 'h2c', hold)
  const { app, url } = await startGateway(t, {
    upstreams: {
      h2: {
        targets: [a.url, b.url],
        http2: 'h2c',
        http2Settings: { maxConcurrentStreams: 2 },
        balancer: 'round-robin',
        maxConnections: 1,
        maxPending: 0,
        retry: { attempts: 0 }
      }
    },
    routes: [{ prefix: '/api', upstream: 'h2' }]
  })
  t.teardown(() => { a.stopHolding(); b.stopHolding() })
  const agent = new Agent({ connections: 10 })
  t.teardown(() => agent.destroy())
  const first = burst(`${url}/api/x`, 3, agent)
  await until('3 requests held', () => a.held.length + b.held.length === 3)
  const fourth = burst(`${url}/api/x`, 1, agent)
  await until('4 requests held', () => a.held.length + b.held.length === 4)
  t.same([a.held.length, b.held.length], [2, 2], 'two streams on each: the full one passed over, whatever round-robin said')
  const fifth = await fetch(`${url}/api/x`)
  t.equal(fifth.status, 503, 'both at 1 connection × 2 streams: full')
  t.match(await fifth.json(), { code: 'FST_UPSTREAM_OVERLOADED' })
  t.same(app.upstreams.status().pools.h2.targets.map((target) => target.inflight), [2, 2])
  t.same([a.maxActive, b.maxActive, a.sessions, b.sessions], [2, 2, 1, 1], 'never more than two streams on one connection per target')
  a.release()
  b.release()
  t.same(await Promise.all([...first, ...fourth]), [200, 200, 200, 200])
})

test('TLS: http2: true speaks h2 to a target that offers it by ALPN, HTTP/1.1 to one that does not', { skip }, async (t) => {
  const h2 = await startTarget(t, 'h2', 'h2')
  const h1 = await startTarget(t, 'h1', 'https', (req, res, target) => {
    if (req.url === '/hold') hold(req, res, target)
    else echoJson(req, res, target)
  })
  const plain = await startTarget(t, 'plain', 'http')
  const { url } = await startGateway(t, {
    upstreams: {
      alpn: { targets: [h2.url], http2: true, tls: { ca } },
      fallback: { targets: [h1.url], http2: true, tls: { ca }, maxConnections: 1, maxPending: 0, retry: { attempts: 0 } },
      cleartext: { targets: [plain.url], http2: true }
    }
  }, (app) => {
    app.get('/alpn', (_request, reply) => reply.forward('alpn'))
    app.get('/fallback', (_request, reply) => reply.forward('fallback'))
    app.get('/hold', (_request, reply) => reply.forward('fallback'))
    app.get('/cleartext', (_request, reply) => reply.forward('cleartext'))
  })
  t.teardown(h1.stopHolding)
  for (let i = 0; i < 3; i++) t.match(await (await fetch(`${url}/alpn`)).json(), { upstream: 'h2', version: '2.0' }, 'h2 chosen by ALPN')
  t.equal(h2.sessions, 1, 'over one connection')
  t.match(await (await fetch(`${url}/fallback`)).json(), { upstream: 'h1', version: '1.1' }, 'a target that offers only http/1.1: HTTP/1.1')
  t.match(await (await fetch(`${url}/cleartext`)).json(), { upstream: 'plain', version: '1.1' }, 'an http target in a `true` pool: HTTP/1.1')

  // the connection to h1 said HTTP/1.1: one request per connection, so with maxConnections 1 the target is full at 1
  const held = fetch(`${url}/hold`)
  await until('a request held', () => h1.held.length === 1)
  const second = await fetch(`${url}/fallback`)
  t.equal(second.status, 503, 'an HTTP/1.1 connection carries one request: full')
  t.equal(h1.maxActive, 1, 'nothing pipelined on the HTTP/1.1 connection')
  h1.release()
  t.equal((await held).status, 200)
  t.equal(h1.connections, 1, 'one connection, kept alive')
})

test('active checks speak HTTP/2 to an h2c target (which answers no HTTP/1.1), on connections of their own', async (t) => {
  const handler: Handler = (req, res, target) => {
    if (req.url === '/healthz') {
      res.statusCode = target.name === 'sick' ? 503 : 200
      res.end()
    } else {
      echoJson(req, res, target)
    }
  }
  const ok = await startTarget(t, 'ok', 'h2c', handler)
  const sick = await startTarget(t, 'sick', 'h2c', handler)
  const { app, url } = await startGateway(t, {
    upstreams: { h2: { targets: [ok.url, sick.url], http2: 'h2c', healthCheck: { active: { path: '/healthz', interval: 50, unhealthyThreshold: 1 } } } },
    routes: [{ prefix: '/api', upstream: 'h2' }]
  })
  const pool = app.upstreams.get('h2') as UpstreamPool
  t.equal(pool.target(ok.url)?.state, 'healthy', 'the probe reached the h2c target')
  t.equal(pool.target(sick.url)?.state, 'unhealthy', 'and the other answered 503 over HTTP/2')
  await until('a few rounds of probes', () => ok.seen.length >= 3)
  t.same([...new Set(ok.seen.map((r) => `${r.version} ${r.method} ${r.url}`))], ['2.0 GET /healthz'], 'every probe over HTTP/2')
  t.equal(ok.sessions, 1, 'on one connection, kept between probes')
  for (let i = 0; i < 3; i++) t.match(await (await fetch(`${url}/api/x`)).json(), { upstream: 'ok', version: '2.0' }, 'traffic to the healthy one')
  t.equal(ok.sessions, 2, 'traffic on a connection of its own')
  // the probe's HTTP/2 connection stays open between probes (no idle timeout): it closes when its target leaves
  await pool.removeTarget(ok.url)
  await until('both connections to the removed target closed', () => ok.open.size === 0)
  t.equal(sick.open.size, 1, 'the probe connection of the target still in the pool stays')
})

test('options: http2 and http2Settings validated, defaults, h2c only for http targets', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{ http2: 'h2' }, /: upstreams\.p\.http2: must be false, true or 'h2c'$/],
    [{ http2: 1 }, /: upstreams\.p\.http2: must be false, true or 'h2c'$/],
    [{ http2: 'h2c', http2Settings: { maxConcurrentStreams: 0 } }, /: upstreams\.p\.http2Settings\.maxConcurrentStreams: must be an integer from 1 to 1000000$/],
    [{ http2: 'h2c', http2Settings: { maxConcurrentStreams: 1.5 } }, /: upstreams\.p\.http2Settings\.maxConcurrentStreams: must be an integer/],
    [{ http2: 'h2c', http2Settings: { pingInterval: 500 } }, /: upstreams\.p\.http2Settings\.pingInterval: must be 0 \(no PING\) or an integer from 1000/],
    [{ http2: 'h2c', http2Settings: { pingInterval: -1 } }, /: upstreams\.p\.http2Settings\.pingInterval: must be 0/],
    [{ http2: 'h2c', http2Settings: { maxStreams: 10 } }, /: upstreams\.p\.http2Settings\.maxStreams: unknown option/],
    [{ http2: 'h2c', http2Settings: 5 }, /: upstreams\.p\.http2Settings: must be an object/],
    [{ http2: 'h2c', targets: ['http://127.0.0.1:1', 'https://127.0.0.1:2'] }, /: upstreams\.p\.targets\[1\]: https:\/\/127\.0\.0\.1:2 is an https target, and http2 'h2c' is HTTP\/2 over cleartext TCP: use http2: true/],
    [{ http2: 'h2c', targets: [{ url: 'https://127.0.0.1:2' }] }, /: upstreams\.p\.targets\[0\]\.url: https:/],
    [{ http2: 'h2c', targets: [], discovery: { type: 'dns', hostname: 'x.test', port: 443, protocol: 'https' } }, /: upstreams\.p\.discovery\.protocol: 'https' targets cannot be reached with http2 'h2c'/]
  ]
  for (const [pool, message] of cases) {
    const error = await registerError({ upstreams: { p: { targets: ['http://127.0.0.1:1'], ...(pool as object) } } })
    t.equal(error.code, 'FST_UPSTREAM_INVALID_OPTION')
    t.match(error.message, message, JSON.stringify(pool))
  }
  const { app } = await startGateway(t, {
    upstreams: {
      off: { targets: ['http://127.0.0.1:1'] },
      h2c: { targets: ['http://127.0.0.1:1'], http2: 'h2c' },
      tuned: { targets: ['https://127.0.0.1:1', 'http://127.0.0.1:2'], http2: true, http2Settings: { maxConcurrentStreams: 8, pingInterval: 0 } }
    }
  })
  t.match(internal(app.upstreams.get('off')).config, { http2: false, http2Settings: { maxConcurrentStreams: 100, pingInterval: 30000 } }, 'defaults')
  t.match(internal(app.upstreams.get('h2c')).config, { http2: 'h2c', http2Settings: { maxConcurrentStreams: 100, pingInterval: 30000 } })
  t.match(internal(app.upstreams.get('tuned')).config, { http2: true, http2Settings: { maxConcurrentStreams: 8, pingInterval: 0 } })
  t.same(internal(app.upstreams.get('tuned')).targetList.map((target) => target.perConnection), [8, 1], 'HTTP/2 assumed for the https target, HTTP/1.1 for the http one')
  t.same(internal(app.upstreams.get('h2c')).targetList.map((target) => target.perConnection), [100])
  t.throws(() => app.upstreams.get('h2c')?.addTarget('https://127.0.0.1:3'), { code: 'FST_UPSTREAM_INVALID_OPTION', message: /upstreams\.h2c\.targets: https:\/\/127\.0\.0\.1:3 is an https target/ }, 'addTarget checks it too')
  t.equal(app.upstreams.get('h2c')?.targets.length, 1, 'and adds nothing')
})

test('headers: nothing connection-specific reaches an HTTP/2 target, whoever adds it; TE: trailers from a client works', async (t) => {
  const target = await startTarget(t, 'h2', 'h2c')
  const { url } = await startGateway(t, {
    upstreams: { h2: { targets: [target.url], http2: 'h2c', headers: { set: { 'proxy-connection': 'keep-alive', 'x-set': '1' } } } },
    routes: [
      { prefix: '/api', upstream: 'h2' },
      {
        prefix: '/rewritten',
        upstream: 'h2',
        replyOptions: { rewriteRequestHeaders: (_request, headers) => ({ ...headers, te: 'gzip', 'http2-settings': 'AAMAAABkAAQCAAAAAAIAAAAA', 'keep-alive': 'timeout=5', 'x-rewritten': '1' }) }
      }
    ]
  })
  const sent = await rawExchange(url, '/api/x', {
    TE: 'trailers',
    Connection: 'keep-alive, x-hop',
    'X-Hop': '1',
    'Keep-Alive': 'timeout=5',
    'Proxy-Connection': 'keep-alive',
    'HTTP2-Settings': 'AAMAAABkAAQCAAAAAAIAAAAA',
    Upgrade: 'foo'
  })
  t.equal(sent.status, 200, 'a client sending TE: trailers and every hop-by-hop header is answered')
  const forbidden = ['connection', 'keep-alive', 'proxy-connection', 'http2-settings', 'upgrade', 'transfer-encoding', 'x-hop']
  t.same(forbidden.filter((name) => target.seen[0].headers[name] !== undefined), [], 'none reached the target')
  t.equal(target.seen[0].headers.te, 'trailers', 'TE: trailers, which HTTP/2 allows, goes on: the client takes trailers')
  t.equal(target.seen[0].headers['x-set'], '1')

  const chunked = await request(`${url}/api/post`, { method: 'POST', body: Readable.from([Buffer.from('a'), Buffer.from('b')]) })
  t.match(await chunked.body.json(), { version: '2.0', length: 2 }, 'a chunked request body goes as HTTP/2 DATA')
  t.equal(target.seen[1].headers['transfer-encoding'], undefined)

  // a caller's rewrite runs after the policy: what Node's HTTP/2 client would throw on is dropped still
  for (let i = 0; i < 2; i++) {
    const res = await fetch(`${url}/rewritten/x`)
    t.equal(res.status, 200, 'answered, and the connection takes the next request')
  }
  const last = target.seen[target.seen.length - 1].headers
  t.same([...forbidden, 'te'].filter((name) => last[name] !== undefined), [], 'nothing connection-specific from the rewrite, nor TE from a client that did not send it')
  t.equal(last['x-rewritten'], '1', 'the rest of the rewrite applied')
  t.equal((await fetch(`${url}/api/after`)).status, 200)
})

test('WebSocket upgrades on an HTTP/2 pool go over HTTP/1.1, on a connection of their own', async (t) => {
  // h2c with prior knowledge and HTTP/1.1 on the same port: a target that sniffs the HTTP/2 preface
  const h2 = http2.createServer((req, res) => { res.end(`h2c ${req.httpVersion}`) })
  const h1 = http.createServer((_req, res) => { res.end('h1') })
  const wss = new WebSocketServer({ server: h1 })
  const versions: string[] = []
  wss.on('connection', (ws, req) => { versions.push(req.httpVersion); ws.send('hello'); ws.on('message', (data) => ws.send(data)) })
  const sockets = new Set<net.Socket>()
  const front = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.once('data', (first: Buffer) => {
      if (first.toString('latin1', 0, 3) !== 'PRI') {
        socket.unshift(first)
        h1.emit('connection', socket)
        return
      }
      // node:http2 reads a net.Socket's handle directly, past what was unshifted: a stream it is
      const readable = new PassThrough()
      readable.write(first)
      socket.pipe(readable)
      const duplex = Duplex.from({ readable, writable: socket })
      socket.on('close', () => duplex.destroy())
      h2.emit('connection', duplex)
    })
  })
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const ws of wss.clients) ws.terminate()
    for (const socket of sockets) socket.destroy()
    await new Promise<void>((resolve) => front.close(() => resolve()))
  })
  const target = `http://127.0.0.1:${(front.address() as AddressInfo).port}`
  const { url } = await startGateway(t, {
    upstreams: { sniff: { targets: [target], http2: 'h2c' } },
    routes: [{ prefix: '/ws', upstream: 'sniff', websocket: true }]
  })
  t.equal(await (await fetch(`${url}/ws/x`)).text(), 'h2c 2.0', 'plain requests over h2c')
  const ws = new WebSocket(`${url.replace('http', 'ws')}/ws/chat`)
  t.teardown(() => { ws.terminate() })
  const [hello] = await once(ws, 'message') as [Buffer]
  t.equal(hello.toString(), 'hello', 'the upgrade went through')
  ws.send('ping')
  const [echo] = await once(ws, 'message') as [Buffer]
  t.equal(echo.toString(), 'ping')
  t.same(versions, ['1.1'], 'over HTTP/1.1')
})

test('WebSocket upgrades on a `http2: true` pool offer only http/1.1 by ALPN', { skip }, async (t) => {
  const server = http2.createSecureServer({ ...upstreamCert, allowHTTP1: true }, (req, res) => { res.end(`tls ${req.httpVersion}`) })
  const wss = new WebSocketServer({ noServer: true })
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    wss.handleUpgrade(req, socket, head, (ws) => { ws.send(`hello over ${req.httpVersion}`) })
  })
  const sessions = new Set<http2.ServerHttp2Session>()
  server.on('session', (session) => { sessions.add(session); session.on('close', () => sessions.delete(session)) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const ws of wss.clients) ws.terminate()
    for (const session of sessions) session.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  const { url } = await startGateway(t, {
    upstreams: { tls: { targets: [`https://127.0.0.1:${(server.address() as AddressInfo).port}`], http2: true, tls: { ca } } },
    routes: [{ prefix: '/ws', upstream: 'tls', websocket: true }]
  })
  t.equal(await (await fetch(`${url}/ws/x`)).text(), 'tls 2.0', 'plain requests over h2')
  const ws = new WebSocket(`${url.replace('http', 'ws')}/ws/chat`)
  t.teardown(() => { ws.terminate() })
  const [hello] = await once(ws, 'message') as [Buffer]
  t.equal(hello.toString(), 'hello over 1.1', 'the upgrade went over HTTP/1.1')
})

test('an idle HTTP/2 connection pool is closed by the sweep, its connection with it', async (t) => {
  const target = await startTarget(t, 'a', 'h2c')
  const { app, url } = await startGateway(t, {
    upstreams: { h2: { targets: [target.url], http2: 'h2c' } },
    routes: [{ prefix: '/api', upstream: 'h2' }]
  })
  const pool = internal(app.upstreams.get('h2'))
  t.equal((await fetch(`${url}/api/x`)).status, 200)
  t.equal(target.open.size, 1)
  pool.connections.sweep()
  t.not(pool.targetList[0].connection, undefined, 'a request since the last sweep keeps it')
  pool.connections.sweep()
  t.equal(pool.targetList[0].connection, undefined, 'no request for a whole period: closed, though its connection was open')
  await until('the HTTP/2 connection closed', () => target.open.size === 0)
  t.equal((await fetch(`${url}/api/x`)).status, 200, 'the next request opens a new one')
  t.equal(target.sessions, 2)
})

test('a target closing its connection (GOAWAY) with requests in flight and queued: those in flight finish, the others go out again; app.close() leaves nothing open', async (t) => {
  let goaway = true
  const target = await startTarget(t, 'a', 'h2c', (req, res, self) => {
    if (goaway && self.held.length === 1) {
      // the second stream: the target closes its side of the connection gracefully
      goaway = false
      hold(req, res, self)
      ;(req as http2.Http2ServerRequest).stream.session?.close()
      setTimeout(() => self.release(), 50)
      return
    }
    if (self.held.length === 0 && goaway) {
      hold(req, res, self)
      return
    }
    echoJson(req, res, self)
  })
  const probed = await startTarget(t, 'probed', 'h2c')
  const before = await settledResources()
  const { app, url } = await startGateway(t, {
    upstreams: {
      h2: { targets: [target.url], http2: 'h2c', http2Settings: { maxConcurrentStreams: 2 }, maxConnections: 1, maxPending: 20, retry: { attempts: 0 } },
      checked: { targets: [probed.url], http2: 'h2c', healthCheck: { active: { interval: 50 } } }
    },
    routes: [{ prefix: '/api', upstream: 'h2' }, { prefix: '/checked', upstream: 'checked' }]
  })
  const agent = new Agent({ connections: 10 })
  t.teardown(() => agent.destroy())
  const statuses = await Promise.all(burst(`${url}/api/x`, 10, agent))
  t.equal(statuses.length, 10, 'every request ended')
  t.same(statuses, Array(10).fill(200), 'every one answered, with no retry: the streams in flight at the GOAWAY finished, the others went out on a new connection')
  t.ok(target.sessions >= 2, 'on a new connection')
  t.equal((await fetch(`${url}/checked/x`)).status, 200)
  await until('probes', () => probed.seen.length >= 3)
  t.ok(resources().length > before.length, 'the gateway holds sockets while open')
  await app.close()
  await agent.destroy()
  await until('every HTTP/2 connection closed at the targets', () => target.open.size === 0 && probed.open.size === 0, 2000).catch(() => {})
  t.same([target.open.size, probed.open.size], [0, 0], 'no HTTP/2 connection left open at the targets')
  await until('the resources from before the gateway started', () => resources().length <= before.length, 2000).catch(() => {})
  t.same(resources(), before, 'the same resources as before the gateway started')
})

test('a stream an HTTP/2 target refuses (REFUSED_STREAM) goes to another target whatever its method, and is no failure of the one that refused', async (t) => {
  const refusing = await startTarget(t, 'refusing', 'h2c', (req) => { (req as http2.Http2ServerRequest).stream.close(http2.constants.NGHTTP2_REFUSED_STREAM) })
  const good = await startTarget(t, 'good', 'h2c')
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [refusing.url, good.url], http2: 'h2c', healthCheck: { passive: { consecutiveFailures: 1 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  for (const method of ['POST', 'PATCH', 'GET', 'POST']) {
    const res = await fetch(`${url}/x`, { method })
    t.equal(res.status, 200, `${method}: answered`)
    t.equal((await res.json() as { upstream: string }).upstream, 'good', `${method}: by the other target`)
  }
  t.ok(refusing.seen.length >= 2, `the refusing target was tried (${refusing.seen.length} times)`)
  const view = app.upstreams.get('pool')?.target(refusing.url)
  t.equal(view?.failures, 0, 'no failure counted against it')
  t.equal(view?.state, 'healthy', 'not ejected')
})
