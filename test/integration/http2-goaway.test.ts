// A target going away over HTTP/2 (pool option `http2`): GOAWAY with its last stream id,
// graceful and crude restarts under load, streams reset mid-answer, PINGs unanswered.
// Real node:http2 servers on loopback; the gateway speaks HTTP/1.1 to its clients.
import { once } from 'node:events'
import http2 from 'node:http2'
import net, { type AddressInfo } from 'node:net'
import { test } from 'tap'
import { Agent, request } from 'undici'
import { sleep, startGateway, until, type Teardown } from '../helpers'

interface H2Target {
  name: string
  url: string
  port: number
  server: http2.Http2Server
  sessions: Set<http2.ServerHttp2Session>
  /** request bodies applied (answered 200), by the `x-id` header */
  applied: string[]
  /** streams held by a holding handler */
  held: Array<{ stream: http2.ServerHttp2Stream, id: string }>
  /** closes every session with GOAWAY (NO_ERROR: streams in flight finish) and the server; resolves when all are gone */
  stop: () => Promise<void>
  /** listens again on the same port */
  restart: () => Promise<void>
}

type StreamHandler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, target: H2Target) => void

/** Applies the request (records its x-id) once its body is in, and answers who applied it. */
function apply (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, target: H2Target): void {
  let length = 0
  stream.on('data', (chunk: Buffer) => { length += chunk.length })
  stream.on('end', () => {
    if (stream.closed) return
    target.applied.push(String(headers['x-id']))
    stream.respond({ ':status': 200, 'x-upstream': target.name })
    stream.end(JSON.stringify({ upstream: target.name, length }))
  })
  stream.on('error', () => {})
}

async function startH2Target (t: Teardown, name: string, handler: StreamHandler = apply, port = 0): Promise<H2Target> {
  const target = { name, sessions: new Set(), applied: [], held: [] } as unknown as H2Target
  const listen = async (at: number): Promise<void> => {
    const server = http2.createServer()
    server.on('session', (session: http2.ServerHttp2Session) => {
      target.sessions.add(session)
      session.on('close', () => target.sessions.delete(session))
      session.on('error', () => {})
    })
    server.on('stream', (stream, headers) => handler(stream, headers, target))
    await new Promise<void>((resolve) => server.listen(at, '127.0.0.1', resolve))
    target.server = server
    target.port = (server.address() as AddressInfo).port
    target.url = `http://127.0.0.1:${target.port}`
  }
  await listen(port)
  target.stop = async () => {
    const closed = new Promise<void>((resolve) => target.server.close(() => resolve()))
    // Node's server.close() sends no GOAWAY on the open sessions: each is closed as a
    // restarting server does (GOAWAY, NO_ERROR, with the last stream it took)
    for (const session of target.sessions) session.close()
    await closed
  }
  target.restart = () => listen(target.port)
  t.teardown(async () => {
    for (const session of target.sessions) session.destroy()
    await new Promise<void>((resolve) => target.server.close(() => resolve()))
  })
  return target
}

/** the answers of the POSTs that failed (for the diagnosis) */
const failures: string[] = []

/** POSTs (no Idempotency-Key: never retried after a target read them) with a body, each with its own x-id. */
async function post (url: string, id: string, agent: Agent): Promise<number> {
  try {
    const res = await request(`${url}/x`, { method: 'POST', headers: { 'x-id': id, 'content-type': 'application/octet-stream' }, body: Buffer.alloc(1024, 1), dispatcher: agent })
    const text = await res.body.text()
    if (res.statusCode !== 200) failures.push(text)
    return res.statusCode
  } catch {
    return 0
  }
}

test('GOAWAY with a last stream id: the streams up to it finish there, those above it go to another target, whatever the method', async (t) => {
  // the first 6 POSTs are held; then GOAWAY names the 3rd stream as the last it processes
  let goneAway = false
  const a = await startH2Target(t, 'a', (stream, headers, target) => {
    stream.on('error', () => {})
    stream.resume()
    target.held.push({ stream, id: String(headers['x-id']) })
    if (target.held.length < 6 || goneAway) return
    goneAway = true
    const last = target.held[2].stream.id as number
    stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR, last)
    // the target finishes what it promised to: the streams up to the last id
    setTimeout(() => {
      for (const { stream: held, id } of target.held) {
        if ((held.id as number) > last || held.closed) continue
        target.applied.push(id)
        held.respond({ ':status': 200, 'x-upstream': 'a' })
        held.end('{"upstream":"a"}')
      }
    }, 50)
  })
  const b = await startH2Target(t, 'b')
  const { app, url } = await startGateway(t, {
    upstreams: {
      h2: {
        targets: [a.url, b.url],
        http2: 'h2c',
        maxConnections: 1,
        // a's streams all go to a (least-request sends the held ones there while b answers at once)
        balancer: 'round-robin',
        retry: { attempts: 2 },
        healthCheck: { passive: { consecutiveFailures: 1 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'h2' }]
  })
  const agent = new Agent({ connections: 20 })
  t.teardown(() => agent.destroy())
  // 12 POSTs at once: round robin sends 6 to each
  const statuses = await Promise.all(Array.from({ length: 12 }, (_, i) => post(url, `p${i}`, agent)))
  t.same(statuses, Array(12).fill(200), 'every POST answered')
  t.equal(a.applied.length, 3, 'a applied the three streams up to its last stream id')
  t.equal(a.applied.length + b.applied.length, 12, 'every POST applied once')
  t.equal(new Set([...a.applied, ...b.applied]).size, 12, 'none twice')
  const view = app.upstreams.get('h2')?.target(a.url)
  t.equal(view?.failures, 0, 'the refused streams count as no failure of the target that went away')
})

/** A restartable h2c target as restarts.test.ts has them over HTTP/1.1: readiness on /health, each request applied once it is in, 3 ms of work. */
function restartHandler (draining: () => boolean): StreamHandler {
  return (stream, headers, target) => {
    stream.on('error', () => {})
    if (headers[':path'] === '/health') {
      stream.respond({ ':status': draining() ? 503 : 200 }, { endStream: true })
      return
    }
    stream.resume()
    stream.on('end', () => {
      target.applied.push(String(headers['x-id']))
      setTimeout(() => {
        if (stream.closed) return
        stream.respond({ ':status': 200, 'x-upstream': target.name })
        stream.end('{}')
      }, 3)
    })
  }
}

for (const mode of ['graceful', 'crude', 'crash'] as const) {
  test(`h2c targets restarted in turn, ${mode}, under a load of POSTs: ${mode === 'crash' ? 'figures' : 'no POST fails, none is applied twice'}`, async (t) => {
    const draining = new Set<H2Target>()
    const targets: H2Target[] = []
    for (const name of ['t0', 't1', 't2']) {
      const target: H2Target = await startH2Target(t, name, restartHandler(() => draining.has(target)))
      targets.push(target)
    }
    const { url } = await startGateway(t, {
      upstreams: {
        h2: {
          targets: targets.map((target) => target.url),
          http2: 'h2c',
          balancer: 'least-request',
          retry: { attempts: 2, backoff: { base: 5, max: 20 } },
          healthCheck: {
            active: { path: '/health', interval: 100, timeout: 200, healthyThreshold: 1, unhealthyThreshold: 1 },
            passive: { consecutiveFailures: 1, ejectionTime: 1000 }
          }
        }
      },
      routes: [{ prefix: '/', upstream: 'h2' }]
    })
    const agent = new Agent({ connections: 16 })
    t.teardown(() => agent.destroy())
    const loadState = { running: true }
    let sent = 0
    const statuses: number[] = []
    const deadline = Date.now() + 15_000
    const client = async (c: number): Promise<void> => {
      while (loadState.running && Date.now() < deadline && sent < 50_000) statuses.push(await post(url, `c${c}-${sent++}`, agent))
    }
    const load = Promise.all(Array.from({ length: 8 }, (_, c) => client(c)))
    await sleep(300)
    for (const target of targets) {
      if (mode === 'graceful') {
        // readiness 503 for 400 ms (out of rotation), then GOAWAY: streams in flight finish
        draining.add(target)
        await sleep(400)
        await target.stop()
      } else if (mode === 'crude') {
        // GOAWAY at once on every connection, the listener gone
        await target.stop()
      } else {
        target.server.close()
        for (const session of target.sessions) session.destroy()
      }
      await sleep(200)
      await target.restart()
      draining.delete(target)
      await sleep(400)
    }
    loadState.running = false
    await load
    const failed = statuses.filter((status) => status !== 200).length
    const applied = targets.flatMap((target) => target.applied)
    const twice = applied.length - new Set(applied).size
    t.comment(`h2c ${mode}: ${failed} of ${statuses.length} POSTs failed; ${applied.length} applied (${targets.map((target) => target.applied.length).join(' / ')}), ${twice} twice`)
    t.ok(statuses.length > 100, 'a real load went through')
    if (mode === 'crash') return
    t.equal(failed, 0, 'no POST failed', { failures: failures.splice(0, 5) })
    t.equal(twice, 0, 'none applied twice')
    t.equal(applied.length, statuses.length, 'each applied once')
  })
}

test('a stream reset after part of its answer, or its connection lost, is no complete answer', async (t) => {
  const target = await startH2Target(t, 'resets', (stream, headers) => {
    stream.on('error', () => {})
    stream.respond({ ':status': 200 })
    stream.write('part of the answer, ')
    // RST_STREAM INTERNAL_ERROR, or the whole connection gone, with no END_STREAM
    setTimeout(() => { if (headers['x-how'] === 'reset') stream.destroy(new Error('broken')); else stream.session?.destroy() }, 20)
  })
  const { app, url } = await startGateway(t, {
    upstreams: { h2: { targets: [target.url], http2: 'h2c', retry: { attempts: 0 } } },
    routes: [{ prefix: '/', upstream: 'h2' }]
  })
  for (const how of ['reset', 'connection']) {
    const res = await request(`${url}/x`, { headers: { 'x-how': how } })
    t.equal(res.statusCode, 200, `${how}: the headers went out`)
    await t.rejects(res.body.text(), `${how}: the client's answer breaks off, as the target's did`)
  }
  const view = app.upstreams.get('h2')?.target(target.url)
  t.equal(view?.failures, 2, 'each counted against the target')
  t.equal(view?.inflight, 0, 'none left in flight')
})

test('an unanswered PING closes the connection: its requests fail at once, not after the response timeout', async (t) => {
  // takes the connection and the HTTP/2 preface, and never answers anything (no SETTINGS, no PING ACK)
  const sockets = new Set<net.Socket>()
  const silent = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.resume()
  })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { for (const socket of sockets) socket.destroy(); silent.close() })
  const { url } = await startGateway(t, {
    upstreams: { h2: { targets: [`http://127.0.0.1:${(silent.address() as AddressInfo).port}`], http2: 'h2c', http2Settings: { pingInterval: 1000 }, timeout: { response: 20000 } } },
    routes: [{ prefix: '/', upstream: 'h2' }]
  })
  const started = Date.now()
  const res = await request(`${url}/x`)
  const elapsed = Date.now() - started
  t.equal(res.statusCode, 502, 'answered 502')
  t.match(await res.body.json(), { code: 'FST_UPSTREAM_BAD_GATEWAY' })
  t.ok(elapsed >= 1900 && elapsed < 6000, `after two PING intervals, not the 20 s response timeout (${elapsed} ms)`)
  await until('the connection closed at the target', () => sockets.size === 0, 2000)
  t.equal(sockets.size, 0)
})

test('a client that leaves mid-answer: the stream is cancelled at the target, the gateway serves on', async (t) => {
  let cancelled = 0
  const target = await startH2Target(t, 'slow', (stream, headers) => {
    stream.on('error', () => {})
    stream.on('close', () => { if (stream.rstCode === http2.constants.NGHTTP2_CANCEL) cancelled++ })
    if (headers[':path'] === '/quick') {
      stream.respond({ ':status': 200 })
      stream.end('quick')
      return
    }
    stream.respond({ ':status': 200 })
    const timer = setInterval(() => { if (!stream.closed) stream.write('tick ') }, 10)
    stream.on('close', () => clearInterval(timer))
  })
  const { app, url } = await startGateway(t, {
    upstreams: { h2: { targets: [target.url], http2: 'h2c' } },
    routes: [{ prefix: '/', upstream: 'h2' }]
  })
  for (let i = 0; i < 3; i++) {
    const controller = new AbortController()
    const res = await request(`${url}/slow`, { signal: controller.signal })
    t.equal(res.statusCode, 200)
    await once(res.body, 'data')
    controller.abort()
    await t.rejects(res.body.text())
  }
  await until('the streams cancelled at the target', () => cancelled === 3, 3000)
  t.equal(cancelled, 3, 'each stream cancelled (RST_STREAM CANCEL)')
  await until('nothing in flight', () => app.upstreams.get('h2')?.target(target.url)?.inflight === 0, 3000)
  const res = await request(`${url}/quick`)
  t.equal(await res.body.text(), 'quick', 'the gateway serves on')
})

test('the HTTP/2 client keeps to the target\'s stream limit, times out as the pool says, and fails over when a target is down', async (t) => {
  let active = 0
  let most = 0
  const limited = http2.createServer({ settings: { maxConcurrentStreams: 2 } })
  limited.on('stream', (stream, headers) => {
    stream.on('error', () => {})
    active++
    most = Math.max(most, active)
    stream.on('close', () => { active-- })
    const path = headers[':path']
    if (path === '/silent') return
    if (path === '/stall') {
      stream.respond({ ':status': 200 })
      stream.write('a little, then nothing')
      return
    }
    setTimeout(() => {
      if (stream.closed) return
      stream.respond({ ':status': 200, 'content-type': 'text/plain' })
      stream.end('ok')
    }, 20)
  })
  const sessions = new Set<http2.ServerHttp2Session>()
  limited.on('session', (session) => { sessions.add(session) })
  await new Promise<void>((resolve) => limited.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { for (const session of sessions) session.destroy(); limited.close() })
  const limitedUrl = `http://127.0.0.1:${(limited.address() as AddressInfo).port}`
  const down = await new Promise<string>((resolve) => {
    const probe = net.createServer()
    probe.listen(0, '127.0.0.1', () => {
      const port = (probe.address() as AddressInfo).port
      probe.close(() => resolve(`http://127.0.0.1:${port}`))
    })
  })
  const { app, url } = await startGateway(t, {
    upstreams: {
      limited: { targets: [limitedUrl], http2: 'h2c', maxConnections: 1, maxPending: 50, timeout: { response: 300, idle: 300 }, retry: { attempts: 0 } },
      failover: { targets: [down, limitedUrl], http2: 'h2c', balancer: 'round-robin', retry: { attempts: 2 } }
    },
    routes: [{ prefix: '/limited', upstream: 'limited', rewritePrefix: '' }, { prefix: '/failover', upstream: 'failover', rewritePrefix: '' }]
  }, (app) => { app.get('/own-timeout', (_request, reply) => reply.forward('limited', { url: '/silent', timeout: 100 })) })
  const agent = new Agent({ connections: 20 })
  t.teardown(() => agent.destroy())
  const statuses = await Promise.all(Array.from({ length: 10 }, async () => {
    const res = await request(`${url}/limited/x`, { dispatcher: agent })
    await res.body.dump()
    return res.statusCode
  }))
  t.same(statuses, Array(10).fill(200), 'ten requests answered')
  t.equal(most, 2, 'never more than the 2 streams the target allows at once, on one connection')
  t.equal(sessions.size, 1, 'one connection')

  const silent = await request(`${url}/limited/silent`)
  const started = Date.now()
  t.equal(silent.statusCode, 504, 'no headers within the response timeout: 504')
  t.match(await silent.body.json(), { code: 'FST_UPSTREAM_TIMEOUT' })
  const ownTimeout = await request(`${url}/own-timeout`)
  t.equal(ownTimeout.statusCode, 504, 'a call\'s own timeout (reply.forward `timeout`) before the pool\'s')
  const took = Date.now() - started
  t.ok(took < 290, `after 100 ms, not the pool's 300 (${took} ms)`)
  const stalled = await request(`${url}/limited/stall`)
  t.equal(stalled.statusCode, 200)
  await t.rejects(stalled.body.text(), 'a body that stalls past the idle timeout breaks off')

  for (const method of ['POST', 'GET']) {
    const res = await request(`${url}/failover/x`, { method, body: method === 'POST' ? 'data' : undefined })
    t.equal(res.statusCode, 200, `${method}: a refused connection goes to the other target`)
    await res.body.dump()
  }
  t.equal(app.upstreams.get('failover')?.target(down)?.failures, 2, 'the target down counted its failures')
})

test('an h2c target on ::1; a graceful close with requests waiting for a stream answers them all', async (t) => {
  const held: http2.ServerHttp2Stream[] = []
  const server = http2.createServer({ settings: { maxConcurrentStreams: 1 } })
  server.on('stream', (stream) => {
    stream.on('error', () => {})
    held.push(stream)
    setTimeout(() => {
      if (stream.closed) return
      stream.respond({ ':status': 200 })
      stream.end('v6')
    }, 50)
  })
  const sessions = new Set<http2.ServerHttp2Session>()
  server.on('session', (session) => { sessions.add(session); session.on('close', () => sessions.delete(session)) })
  await new Promise<void>((resolve) => server.listen(0, '::1', resolve))
  t.teardown(() => { for (const session of sessions) session.destroy(); server.close() })
  const { app, url } = await startGateway(t, {
    upstreams: { v6: { targets: [`http://[::1]:${(server.address() as AddressInfo).port}`], http2: 'h2c', maxConnections: 1, maxPending: 10 } },
    routes: [{ prefix: '/', upstream: 'v6' }]
  })
  const agent = new Agent({ connections: 5 })
  t.teardown(() => agent.destroy())
  const answers = Array.from({ length: 3 }, async () => {
    const res = await request(`${url}/x`, { dispatcher: agent })
    return `${res.statusCode} ${await res.body.text()}`
  })
  await until('the first stream at the target', () => held.length === 1, 2000)
  // two wait for a stream (the target takes one at a time) while the app closes
  const closed = app.close()
  t.same(await Promise.all(answers), ['200 v6', '200 v6', '200 v6'], 'each answered over IPv6 loopback, before the close completed')
  // the client's keep-alive connections would hold the server's close for their timeout
  await agent.close()
  await closed
  await until('the connection closed', () => sessions.size === 0, 2000)
  t.equal(sessions.size, 0, 'no connection left open')
})

test('a connection draining after a GOAWAY is not closed by its PINGs while its streams finish', async (t) => {
  // GOAWAY at once, then the answer 2.5 s later: past two PING intervals of 1 s
  const target = await startH2Target(t, 'draining', (stream) => {
    stream.on('error', () => {})
    stream.resume()
    stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR, stream.id as number)
    setTimeout(() => {
      if (stream.closed) return
      stream.respond({ ':status': 200 })
      stream.end('finished')
    }, 2500)
  })
  const { app, url } = await startGateway(t, {
    upstreams: { h2: { targets: [target.url], http2: 'h2c', http2Settings: { pingInterval: 1000 }, retry: { attempts: 0 } } },
    routes: [{ prefix: '/', upstream: 'h2' }]
  })
  const res = await request(`${url}/x`, { method: 'POST', body: 'once' })
  t.equal(res.statusCode, 200, 'the stream the target took finished')
  t.equal(await res.body.text(), 'finished')
  t.equal(app.upstreams.get('h2')?.target(target.url)?.failures, 0)
})

test('a header Node would refuse fails that request alone, as the gateway\'s fault; the connection serves on', async (t) => {
  const target = await startH2Target(t, 'headers', (stream, headers) => {
    stream.on('error', () => {})
    stream.resume()
    setTimeout(() => {
      if (stream.closed) return
      stream.respond({ ':status': 200 })
      stream.end(String(headers[':path']))
    }, headers[':path'] === '/slow' ? 100 : 0)
  })
  const { app, url } = await startGateway(t, {
    upstreams: { h2: { targets: [target.url, `${target.url}/other`], http2: 'h2c', maxConnections: 1 } },
    routes: [{ prefix: '/', upstream: 'h2' }]
  }, (app) => {
    app.get('/bad-name', (_request, reply) => reply.forward('h2', { url: '/x', rewriteRequestHeaders: (_req, headers) => ({ ...headers, 'bad name': 'x' }) }))
    app.get('/bad-value', (_request, reply) => reply.forward('h2', { url: '/x', rewriteRequestHeaders: (_req, headers) => ({ ...headers, 'x-bad': 'a\u0000b' }) }))
    app.get('/twice', (_request, reply) => reply.forward('h2', { url: '/x', rewriteRequestHeaders: (_req, headers) => ({ ...headers, 'content-type': ['a/b', 'c/d'] as unknown as string }) }))
  })
  // a request in flight on the connection meanwhile
  const slow = request(`${url}/slow`)
  for (const path of ['/bad-name', '/bad-value', '/twice']) {
    const res = await request(`${url}${path}`)
    t.equal(res.statusCode, 500, `${path}: 500`)
    t.match(await res.body.json(), { code: 'FST_UPSTREAM_BAD_HEADER' }, `${path}: the gateway's own error`)
  }
  const answered = await slow
  t.equal(answered.statusCode, 200, 'the request in flight on the same connection finished')
  t.equal(await answered.body.text(), '/slow')
  t.equal(target.sessions.size, 1, 'on the one connection it had')
  for (const view of app.upstreams.get('h2')?.targets ?? []) t.equal(view.failures, 0, 'no target blamed')
})

test('a reader that holds the answer back is no stalled target: the idle timeout waits while it reads nothing', async (t) => {
  const size = 8 * 1024 * 1024
  const target = await startH2Target(t, 'big', (stream) => {
    stream.on('error', () => {})
    stream.respond({ ':status': 200 })
    stream.end(Buffer.alloc(size, 1))
  })
  const { app, url } = await startGateway(t, {
    upstreams: { h2: { targets: [target.url], http2: 'h2c', timeout: { idle: 300 } } },
    routes: [{ prefix: '/', upstream: 'h2' }]
  })
  const res = await request(`${url}/big`)
  t.equal(res.statusCode, 200)
  // nothing read for 1 s: the gateway's buffers fill and it stops reading the target
  await sleep(1000)
  let length = 0
  for await (const chunk of res.body) length += (chunk as Buffer).length
  t.equal(length, size, 'the whole answer, read late')
  t.equal(app.upstreams.get('h2')?.target(target.url)?.failures, 0)
})
