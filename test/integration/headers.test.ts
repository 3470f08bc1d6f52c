import net from 'node:net'
import Fastify from 'fastify'
import { test } from 'tap'
import fastifyUpstream from '../../lib/index'
import { listen, rawRequest, startGateway, startUpstream, type Upstream } from '../helpers'

/** Sends a request and returns the response headers (the upstream's view is in `up.last`). */
async function headersSeen (url: string, path: string, headers: Record<string, string> = {}): Promise<Headers> {
  const res = await fetch(url + path, { headers })
  await res.arrayBuffer()
  return res.headers
}

test('Host: the target by default, the client\'s with "pass", or a fixed name', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, {
    upstreams: {
      target: { targets: [up.url] },
      pass: { targets: [up.url], host: 'pass' },
      fixed: { targets: [up.url], host: 'api.internal.example' }
    }
  }, (app) => {
    for (const name of ['target', 'pass', 'fixed']) app.get(`/${name}`, (_request, reply) => reply.forward(name))
  })
  await headersSeen(url, '/target')
  t.equal(up.last?.headers.host, `127.0.0.1:${up.port}`)
  await headersSeen(url, '/pass')
  t.equal(up.last?.headers.host, new URL(url).host)
  await headersSeen(url, '/fixed')
  t.equal(up.last?.headers.host, 'api.internal.example')
})

test('X-Forwarded-*: client-sent values are replaced unless trustProxy trusts the sender', async (t) => {
  const up = await startUpstream(t, 'u0')
  const untrusted = await startGateway(t, { upstreams: { u: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'u' }] })
  await headersSeen(untrusted.url, '/x', { 'x-forwarded-for': '6.6.6.6', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https', forwarded: 'for=6.6.6.6' })
  t.equal(up.last?.headers['x-forwarded-for'], '127.0.0.1', 'the spoofed address is gone')
  t.equal(up.last?.headers['x-forwarded-host'], new URL(untrusted.url).host)
  t.equal(up.last?.headers['x-forwarded-proto'], 'http')
  t.equal(up.last?.headers.forwarded, undefined, 'Forwarded is not passed on unless configured')

  const trusted = Fastify({ trustProxy: true })
  await trusted.register(fastifyUpstream, { upstreams: { u: { targets: [up.url], forwardedHeaders: 'both' } }, routes: [{ prefix: '/', upstream: 'u' }] })
  const address = await listen(t, trusted)
  await headersSeen(address, '/x', { 'x-forwarded-for': '203.0.113.7, 10.1.2.3', 'x-forwarded-host': 'shop.example', 'x-forwarded-proto': 'https' })
  t.equal(up.last?.headers['x-forwarded-for'], '203.0.113.7, 10.1.2.3, 127.0.0.1', 'a trusted chain is kept and the sender appended')
  t.equal(up.last?.headers['x-forwarded-host'], 'shop.example')
  t.equal(up.last?.headers['x-forwarded-proto'], 'https')
  t.equal(up.last?.headers.forwarded, 'for=203.0.113.7, for=10.1.2.3, for=127.0.0.1;proto=https;host="shop.example"')

  const onlyLocal = Fastify({ trustProxy: '127.0.0.1' })
  await onlyLocal.register(fastifyUpstream, { upstreams: { u: { targets: [up.url], forwardedHeaders: 'forwarded' } }, routes: [{ prefix: '/', upstream: 'u' }] })
  const local = await listen(t, onlyLocal)
  await headersSeen(local, '/x', { 'x-forwarded-for': '6.6.6.6, 198.51.100.9' })
  t.equal(up.last?.headers.forwarded, 'for=198.51.100.9, for=127.0.0.1;proto=http;host="' + new URL(local).host + '"',
    'only the hops trustProxy trusts are kept: the address beyond them is the client')
  t.equal(up.last?.headers['x-forwarded-for'], undefined, "'forwarded' alone drops X-Forwarded-*")
})

test('header policy: set (values or functions of the request) and remove, both ways', async (t) => {
  const up = await startUpstream(t, 'u0', (_req, res) => {
    res.setHeader('x-powered-by', 'secret-stack 1.2')
    res.setHeader('server', 'internal')
    res.setHeader('x-upstream', 'u0')
    res.end('ok')
  })
  const { url } = await startGateway(t, {
    upstreams: {
      u: {
        targets: [up.url],
        headers: {
          set: { 'x-api-key': 'k-123', 'x-user': (request) => request.headers['x-session'] === 'abc' ? 'ada' : undefined },
          remove: ['cookie', 'x-session']
        },
        responseHeaders: { set: { 'strict-transport-security': 'max-age=63072000' }, remove: ['x-powered-by', 'server'] }
      }
    },
    routes: [{ prefix: '/', upstream: 'u' }]
  })
  const back = await headersSeen(url, '/x', { cookie: 'sid=1', 'x-session': 'abc' })
  t.equal(up.last?.headers['x-api-key'], 'k-123')
  t.equal(up.last?.headers['x-user'], 'ada')
  t.equal(up.last?.headers.cookie, undefined)
  t.equal(up.last?.headers['x-session'], undefined)
  t.equal(back.get('x-powered-by'), null)
  t.equal(back.get('server'), null)
  t.equal(back.get('strict-transport-security'), 'max-age=63072000')
  await headersSeen(url, '/x', { 'x-session': 'other' })
  t.equal(up.last?.headers['x-user'], undefined, 'a function returning undefined sets nothing')
})

test('hop-by-hop headers and those named in Connection are stripped both ways', async (t) => {
  const server = net.createServer((socket) => {
    socket.once('data', () => {
      socket.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-internal-route\r\nX-Internal-Route: db-7\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-Upstream: raw\r\n\r\nok')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  const rawUrl = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`
  const upstream: Upstream = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, {
    upstreams: { raw: { targets: [rawUrl] }, echo: { targets: [upstream.url] } }
  }, (app) => {
    app.get('/raw', (_request, reply) => reply.forward('raw'))
    app.get('/echo', (_request, reply) => reply.forward('echo'))
  })
  const res = await fetch(`${url}/raw`)
  t.equal(await res.text(), 'ok')
  t.equal(res.headers.get('x-internal-route'), null, 'a header named in the upstream Connection header is not passed back')
  t.equal(res.headers.get('proxy-authenticate'), null)
  t.equal(res.headers.get('x-upstream'), 'raw')
  // the request side, sent raw so that the client cannot tidy it
  const { port } = new URL(url)
  await new Promise<void>((resolve, reject) => {
    const socket = net.connect(Number(port), '127.0.0.1', () => {
      socket.write('GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close, x-secret\r\nX-Secret: 42\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers\r\nUpgrade: websocket\r\n\r\n')
    })
    socket.on('data', () => {})
    socket.on('end', () => resolve())
    socket.on('error', reject)
  })
  const seen = upstream.last?.headers ?? {}
  t.equal(seen['x-secret'], undefined)
  t.equal(seen['proxy-authorization'], undefined)
  t.equal(seen.upgrade, undefined)
  t.equal(seen.te, undefined)
})

test('a proxied body over the route bodyLimit gets 413 and never reaches the upstream in full; the target is not blamed', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { app, url } = await startGateway(t, {
    upstreams: { u: { targets: [up.url], healthCheck: { passive: { consecutiveFailures: 1 } } } },
    routes: [{ prefix: '/upload', upstream: 'u', bodyLimit: 1000 }]
  })
  const small = await fetch(`${url}/upload`, { method: 'POST', body: 'x'.repeat(1000) })
  t.equal(small.status, 200)
  await small.arrayBuffer()
  const large = await fetch(`${url}/upload`, { method: 'POST', body: 'x'.repeat(5000) })
  t.equal(large.status, 413)
  t.match(await large.json(), { code: 'FST_UPSTREAM_BODY_TOO_LARGE' })
  // chunked: no Content-Length to refuse up front, so it is counted as it streams
  const chunks = new ReadableStream({
    start (controller) {
      for (let i = 0; i < 10; i++) controller.enqueue(new TextEncoder().encode('y'.repeat(500)))
      controller.close()
    }
  })
  const chunked = await fetch(`${url}/upload`, { method: 'POST', body: chunks, duplex: 'half' } as RequestInit)
  t.equal(chunked.status, 413)
  t.match(await chunked.json(), { code: 'FST_UPSTREAM_BODY_TOO_LARGE' })
  t.equal(up.hits, 1, 'only the small body was delivered')
  t.equal(app.upstreams.get('u')?.targets[0].state, 'healthy', 'a body too large is the client\'s fault, not the target\'s')
  const after = await fetch(`${url}/upload`, { method: 'POST', body: 'ok' })
  t.equal(after.status, 200, 'the server keeps serving')
  await after.arrayBuffer()
})

test('reply.forward refuses a path that climbs out, whoever built it', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, { upstreams: { u: { targets: [up.url] } } }, (app) => {
    app.get('/files/*', (request, reply) => reply.forward('u', { url: `/v1/files/${(request.params as { '*': string })['*']}` }))
  })
  const ok = await fetch(`${url}/files/a/b.txt`)
  t.equal(ok.status, 200)
  await ok.arrayBuffer()
  // the router decodes the wildcard: %2e%2e arrives as '..'
  t.equal(Number((await rawRequest(url, '/files/%2e%2e/%2e%2e/etc/passwd')).split(' ')[1]), 400)
  t.equal(Number((await rawRequest(url, '/files/..%2f..%2fetc/passwd')).split(' ')[1]), 400)
  t.equal(up.hits, 1)
})
