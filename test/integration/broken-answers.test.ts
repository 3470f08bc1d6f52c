// Answers that break, legal odd answers and interim responses, from real misbehaving targets (raw sockets).
import http from 'node:http'
import net from 'node:net'
import { test } from 'tap'
import type { ProxyErrorEvent } from '../../lib/index'
import { echo, startGateway, startUpstream, type Teardown } from '../helpers'

/** A target that answers every request by writing `script` to the socket (then, say, resetting it). */
async function rawTarget (t: Teardown, script: (socket: net.Socket) => void): Promise<{ url: string, hits: () => number }> {
  let hits = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    socket.once('data', () => {
      hits++
      script(socket)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    for (const socket of sockets) socket.destroy()
    server.close(() => resolve())
  }))
  return { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, hits: () => hits }
}

const CHUNKED_HEAD = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX-Internal-Secret: s3cret\r\n\r\n'
const LARGE_HEAD = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\nX-Internal-Secret: s3cret\r\n\r\n'

/** How each target breaks its answer before the first body byte. */
const BEFORE_FIRST_BYTE: Array<{ name: string, head: string, after: (socket: net.Socket) => void, status: number, code: string }> = [
  { name: 'a chunked answer reset after its headers', head: CHUNKED_HEAD, after: (s) => s.resetAndDestroy(), status: 502, code: 'FST_UPSTREAM_BAD_GATEWAY' },
  { name: 'a chunked answer with a malformed first chunk', head: CHUNKED_HEAD, after: (s) => s.write('zz\r\nnot a chunk\r\n'), status: 502, code: 'FST_UPSTREAM_BAD_GATEWAY' },
  { name: 'a chunked answer that stalls past timeout.idle', head: CHUNKED_HEAD, after: () => {}, status: 504, code: 'FST_UPSTREAM_TIMEOUT' },
  { name: 'an answer larger than responseBuffer reset after its headers', head: LARGE_HEAD, after: (s) => s.resetAndDestroy(), status: 502, code: 'FST_UPSTREAM_BAD_GATEWAY' }
]

for (const broken of BEFORE_FIRST_BYTE) {
  test(`${broken.name}: before the first byte the client gets the plugin's ${broken.status}, none of the target's headers, and the hook`, async (t) => {
    const target = await rawTarget(t, (socket) => { socket.write(broken.head); broken.after(socket) })
    const errors: ProxyErrorEvent[] = []
    const { app, url } = await startGateway(t, {
      upstreams: { pool: { targets: [target.url], retry: { attempts: 0 }, timeout: { idle: 300 }, responseBuffer: 10 } },
      routes: [{ prefix: '/', upstream: 'pool' }],
      onProxyError: (event) => errors.push(event)
    })
    const res = await fetch(`${url}/x`)
    const body = await res.json() as { code: string }
    t.equal(res.status, broken.status)
    t.equal(body.code, broken.code)
    t.equal(res.headers.get('x-internal-secret'), null, "none of the target's headers reached the client")
    t.equal(errors.length, 1, 'onProxyError was called once')
    t.equal(errors[0]?.error.code, broken.code)
    t.equal(app.upstreams.get('pool')?.targets[0].failures, 1, 'the failure counted once')
  })

  test(`${broken.name}: a GET is retried on another target, as nothing reached the client`, async (t) => {
    const target = await rawTarget(t, (socket) => { socket.write(broken.head); broken.after(socket) })
    const good = await startUpstream(t, 'good')
    const { url } = await startGateway(t, {
      upstreams: { pool: { targets: [target.url, good.url], balancer: 'round-robin', retry: { attempts: 1, backoff: { base: 0 } }, timeout: { idle: 300 }, responseBuffer: 10 } },
      routes: [{ prefix: '/', upstream: 'pool' }]
    })
    for (let i = 0; i < 4; i++) {
      const res = await fetch(`${url}/x`)
      t.equal(res.status, 200, `request ${i} answered`)
      t.equal((await echo(res)).upstream, 'good')
    }
    t.ok(target.hits() >= 1, 'the broken target got its turns')
  })
}

test('an answer that breaks after its first bytes aborts the client connection, counted and reported once', async (t) => {
  const target = await rawTarget(t, (socket) => {
    socket.write(CHUNKED_HEAD + '5\r\nhello\r\n')
    setTimeout(() => socket.resetAndDestroy(), 50)
  })
  const errors: ProxyErrorEvent[] = []
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [target.url], retry: { attempts: 1 } } },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onProxyError: (event) => errors.push(event)
  })
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 200, 'the answer had started')
  await t.rejects(res.text(), 'the truncated body never ends cleanly')
  t.equal(errors.length, 1, 'reported once')
  t.equal(errors[0]?.error.code, 'FST_UPSTREAM_BAD_GATEWAY')
  t.equal(app.upstreams.get('pool')?.targets[0].failures, 1, 'counted once')
  t.equal(target.hits(), 1, 'not retried: the client had part of the answer')
})

for (const status of [304, 204]) {
  test(`a legal ${status} with Content-Length passes through as the target sent it, and counts no failure`, async (t) => {
    const up = await startUpstream(t, 'odd', (_req, res) => {
      res.writeHead(status, { 'content-length': '11', etag: '"v1"' })
      res.end()
    })
    const { app, url } = await startGateway(t, {
      upstreams: { pool: { targets: [up.url], healthCheck: { passive: { consecutiveFailures: 1 } } } },
      routes: [{ prefix: '/', upstream: 'pool' }]
    })
    for (let i = 0; i < 4; i++) {
      const res = await fetch(`${url}/x`, { headers: { 'if-none-match': '"v1"' } })
      t.equal(res.status, status, `request ${i}: ${status}`)
      t.equal(res.headers.get('etag'), '"v1"')
      t.equal(await res.text(), '')
    }
    const target = app.upstreams.get('pool')?.targets[0]
    t.equal(target?.failures, 0, 'no failure counted')
    t.equal(target?.state, 'healthy', 'not ejected')
    t.equal(target?.inflight, 0)
    // the connection the answer came on is closed by undici; the next request opens another
    const res = await fetch(`${url}/x`)
    t.equal(res.status, status)
  })
}

test('interim answers (102, 103) before the answer fail nothing; the client gets the final answer', async (t) => {
  const up = await startUpstream(t, 'hints', (_req, res) => {
    res.writeProcessing()
    res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' })
    setTimeout(() => { res.setHeader('content-type', 'text/plain'); res.end('final') }, 20)
  })
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [up.url], healthCheck: { passive: { consecutiveFailures: 1 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  for (let i = 0; i < 3; i++) {
    const res = await fetch(`${url}/x`)
    t.equal(res.status, 200)
    t.equal(await res.text(), 'final')
  }
  t.equal(app.upstreams.get('pool')?.targets[0].failures, 0)
})

test('an unasked 100 Continue before the answer fails nothing, whole or in pieces; the client gets the final answer', async (t) => {
  const FINAL = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfinal'
  const whole = await rawTarget(t, (socket) => { socket.end('HTTP/1.1 100 Continue\r\n\r\n' + FINAL) })
  const pieces = await rawTarget(t, (socket) => {
    socket.write('HTTP/1.1 10')
    setTimeout(() => socket.write('0 Continue\r\nX-Note: interim\r\n'), 20)
    setTimeout(() => socket.write('\r\nHTTP/1.1 2'), 40)
    setTimeout(() => socket.end(FINAL.slice('HTTP/1.1 2'.length)), 60)
  })
  for (const target of [whole, pieces]) {
    const { app, url } = await startGateway(t, {
      upstreams: { pool: { targets: [target.url], retry: { attempts: 0 }, healthCheck: { passive: { consecutiveFailures: 1 } } } },
      routes: [{ prefix: '/', upstream: 'pool' }]
    })
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${url}/x`)
      t.equal(res.status, 200)
      t.equal(await res.text(), 'final')
    }
    t.equal(app.upstreams.get('pool')?.targets[0].failures, 0, 'no failure counted')
  }
})

test('an event stream: the client gets the headers at once, and each event as the target sends it', async (t) => {
  const up = await startUpstream(t, 'events', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    res.flushHeaders()
    setTimeout(() => res.write('data: one\n\n'), 600)
    setTimeout(() => res.end('data: two\n\n'), 900)
  })
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const started = Date.now()
  const seen: Array<{ what: string, at: number }> = []
  await new Promise<void>((resolve, reject) => {
    http.get(`${url}/events`, (res) => {
      seen.push({ what: `headers ${String(res.headers['content-type'])}`, at: Date.now() - started })
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => seen.push({ what: chunk, at: Date.now() - started }))
      res.on('end', resolve)
      res.on('error', reject)
    }).on('error', reject)
  })
  t.equal(seen[0].what, 'headers text/event-stream')
  t.ok(seen[0].at < 400, `the headers came at once (${seen[0].at} ms), not with the first event (600 ms)`)
  t.same(seen.slice(1).map((s) => s.what), ['data: one\n\n', 'data: two\n\n'], 'each event on its own')
  t.ok(seen[1].at >= 550 && seen[1].at < 850, `the first event came when sent (${seen[1].at} ms)`)
})

test('Idempotency-Key: a keyed POST the target read and then failed is sent again, whole, to another target', async (t) => {
  const reset = await rawTarget(t, (socket) => { setTimeout(() => socket.resetAndDestroy(), 10) })
  const good = await startUpstream(t, 'good')
  const retries: string[] = []
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: [reset.url, good.url], balancer: 'round-robin', retry: { attempts: 1, backoff: { base: 0 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onRetry: (event) => retries.push(event.reason)
  })
  const body = 'x'.repeat(200_000)
  for (let i = 0; i < 4; i++) {
    const res = await fetch(`${url}/orders`, { method: 'POST', headers: { 'content-type': 'text/plain', 'idempotency-key': `k${i}` }, body })
    t.equal(res.status, 200, `keyed POST ${i} answered`)
    const echoed = await echo(res)
    t.equal(echoed.body.length, body.length, 'the body reached the second target whole')
  }
  t.ok(reset.hits() >= 1 && retries.length === reset.hits(), 'each one that met the failing target was retried')
  const unkeyed = await fetch(`${url}/orders`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'once' })
  const again = await fetch(`${url}/orders`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'once' })
  t.same([unkeyed.status, again.status].sort(), [200, 502], 'without the key, the POST that met the failing target is not replayed')
})

test('retry.idempotencyKey names the header, or turns the rule off', async (t) => {
  const reset = await rawTarget(t, (socket) => { setTimeout(() => socket.resetAndDestroy(), 10) })
  const good = await startUpstream(t, 'good')
  const gateway = async (idempotencyKey: string | false): Promise<string> => (await startGateway(t, {
    upstreams: { pool: { targets: [reset.url, good.url], balancer: 'round-robin', retry: { attempts: 1, backoff: { base: 0 }, idempotencyKey } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })).url
  const statuses = async (url: string, headers: Record<string, string>): Promise<number[]> => {
    const list: number[] = []
    for (let i = 0; i < 2; i++) list.push((await fetch(`${url}/o`, { method: 'POST', headers: { 'content-type': 'text/plain', ...headers }, body: 'b' })).status)
    return list.sort()
  }
  const custom = await gateway('X-Request-Once')
  t.same(await statuses(custom, { 'x-request-once': 'k1' }), [200, 200], 'the header named is honoured')
  t.same(await statuses(custom, { 'idempotency-key': 'k1' }), [200, 502], 'the default name is not, then')
  const off = await gateway(false)
  t.same(await statuses(off, { 'idempotency-key': 'k1' }), [200, 502], 'false turns it off')
})
