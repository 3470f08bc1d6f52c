import diagnostics from 'node:diagnostics_channel'
import net from 'node:net'
import { test } from 'tap'
import Fastify from 'fastify'
import fastifyUpstream from '../../lib/index'
import { echo, startGateway, startUpstream, startUpstreams } from '../helpers'

test('reply.forward proxies to the pool, with options.url overriding the path and the query kept', async (t) => {
  const ups = await startUpstreams(t, 2)
  const { url } = await startGateway(t, { upstreams: { users: { targets: ups.map((u) => u.url) } } }, (app) => {
    app.get('/me', (_request, reply) => reply.forward('users', { url: '/v1/users/me' }))
    app.get('/same/*', (_request, reply) => reply.forward('users'))
    app.post('/echo', (_request, reply) => reply.forward('users'))
  })

  const me = await echo(fetch(`${url}/me?lang=en`))
  t.equal(me.url, '/v1/users/me?lang=en')
  const same = await echo(fetch(`${url}/same/a/b?x=1`))
  t.equal(same.url, '/same/a/b?x=1')
  const post = await fetch(`${url}/echo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ a: 1 }) })
  const echoed = await echo(post)
  t.equal(echoed.method, 'POST')
  t.same(JSON.parse(echoed.body), { a: 1 })
  t.equal(ups[0].hits + ups[1].hits, 3)
  t.ok(ups[0].hits >= 1 && ups[1].hits >= 1, 'both targets served')
  t.equal(ups[0].last?.headers.host, `127.0.0.1:${ups[0].port}`, 'the Host header names the target')
})

test('reply-from per-call options pass through', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, { upstreams: { users: { targets: [up.url] } } }, (app) => {
    app.get('/x', (_request, reply) => reply.forward('users', {
      rewriteRequestHeaders: (_req, headers) => ({ ...headers, 'x-added': 'yes' }),
      rewriteHeaders: (headers) => ({ ...headers, 'x-rewritten': '1' })
    }))
    app.get('/custom', (_request, reply) => reply.forward('users', {
      onResponse: (_req, reply, res) => { reply.header('x-custom', String(res.statusCode)).send(res.stream) }
    }))
  })
  const res = await fetch(`${url}/x`)
  t.equal(res.headers.get('x-rewritten'), '1')
  await res.arrayBuffer()
  t.equal(up.last?.headers['x-added'], 'yes')
  const custom = await fetch(`${url}/custom`)
  t.equal(custom.headers.get('x-custom'), '200')
  t.equal((await echo(custom)).upstream, 'u0')
})

test('an unknown pool is a 500 with a stable code, and the server keeps serving', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, { upstreams: { users: { targets: [up.url] } } }, (app) => {
    app.get('/nope', (_request, reply) => reply.forward('orders'))
    app.get('/ok', (_request, reply) => reply.forward('users'))
  })
  const res = await fetch(`${url}/nope`)
  t.equal(res.status, 500)
  t.match(await res.json(), { code: 'FST_UPSTREAM_UNKNOWN_POOL', statusCode: 500 })
  t.equal((await fetch(`${url}/ok`)).status, 200)
})

test('no available target is a fast 503 with a stable code', async (t) => {
  const { url } = await startGateway(t, { upstreams: { empty: { targets: [] } } }, (app) => {
    app.get('/x', (_request, reply) => reply.forward('empty'))
  })
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 503)
  t.match(await res.json(), { code: 'FST_UPSTREAM_NO_TARGET', statusCode: 503 })
})

test('a refused connection is a 502 FST_UPSTREAM_CONNECT_FAILED and is counted', async (t) => {
  const closed = await startUpstream(t, 'gone')
  await closed.close()
  const errors: unknown[] = []
  const { app, url } = await startGateway(t, {
    upstreams: { users: { targets: [closed.url] } },
    onProxyError: (event) => errors.push(event)
  }, (app) => {
    app.get('/x', (_request, reply) => reply.forward('users'))
  })
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 502)
  t.match(await res.json(), { code: 'FST_UPSTREAM_CONNECT_FAILED', statusCode: 502 })
  t.equal(errors.length, 1)
  t.match(errors[0], { pool: 'users', target: { url: closed.url }, error: { code: 'FST_UPSTREAM_CONNECT_FAILED' } })
  const target = app.upstreams.get('users')?.targets[0]
  t.equal(target?.failures, 1)
  t.equal(target?.inflight, 0)
})

test('a target that answers too late is a 504 FST_UPSTREAM_TIMEOUT', async (t) => {
  // undici checks timeouts on a timer wheel of about half a second: leave room for it
  const slow = await startUpstream(t, 'slow', (_req, res) => { setTimeout(() => res.end('late'), 3000) })
  const { url } = await startGateway(t, { upstreams: { users: { targets: [slow.url], timeout: { response: 200 } } } }, (app) => {
    app.get('/x', (_request, reply) => reply.forward('users'))
  })
  const started = Date.now()
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 504)
  t.match(await res.json(), { code: 'FST_UPSTREAM_TIMEOUT', statusCode: 504 })
  t.ok(Date.now() - started < 2500, 'answered before the target did')
})

test('a target that resets the connection is a 502 FST_UPSTREAM_BAD_GATEWAY', async (t) => {
  const server = net.createServer((socket) => { socket.once('data', () => socket.resetAndDestroy()) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  const port = (server.address() as net.AddressInfo).port
  const { url } = await startGateway(t, { upstreams: { users: { targets: [`http://127.0.0.1:${port}`] } } }, (app) => {
    app.get('/x', (_request, reply) => reply.forward('users'))
  })
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 502)
  t.match(await res.json(), { code: 'FST_UPSTREAM_BAD_GATEWAY' })
})

test('a user onError receives the mapped error', async (t) => {
  const closed = await startUpstream(t, 'gone')
  await closed.close()
  const { url } = await startGateway(t, { upstreams: { users: { targets: [closed.url] } } }, (app) => {
    app.get('/x', (_request, reply) => reply.forward('users', {
      onError: (reply, { error }) => { reply.code(599).send({ seen: (error as Error & { code: string }).code }) }
    }))
  })
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 599)
  t.same(await res.json(), { seen: 'FST_UPSTREAM_CONNECT_FAILED' })
})

test('onSelect and the diagnostics channels see each selection and error', async (t) => {
  const up = await startUpstream(t, 'u0')
  const closed = await startUpstream(t, 'gone')
  await closed.close()
  const selected: string[] = []
  const published: string[] = []
  const errors: string[] = []
  const onSelect = (message: unknown): void => { published.push((message as { target: { url: string } }).target.url) }
  const onError = (message: unknown): void => { errors.push((message as { error: { code: string } }).error.code) }
  diagnostics.subscribe('fastify-upstream:select', onSelect)
  diagnostics.subscribe('fastify-upstream:proxy-error', onError)
  const { url } = await startGateway(t, {
    upstreams: { users: { targets: [up.url] }, dead: { targets: [closed.url] } },
    onSelect: (event) => selected.push(`${event.pool} ${event.target.url}`)
  }, (app) => {
    app.get('/x', (_request, reply) => reply.forward('users'))
    app.get('/dead', (_request, reply) => reply.forward('dead'))
  })
  t.teardown(() => {
    diagnostics.unsubscribe('fastify-upstream:select', onSelect)
    diagnostics.unsubscribe('fastify-upstream:proxy-error', onError)
  })
  await (await fetch(`${url}/x`)).arrayBuffer()
  await (await fetch(`${url}/dead`)).arrayBuffer()
  t.same(selected, [`users ${up.url}`, `dead ${closed.url}`])
  t.same(published, [up.url, closed.url])
  t.same(errors, ['FST_UPSTREAM_CONNECT_FAILED'])
})

test('in-flight counts rise while requests are open and return to zero', async (t) => {
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  const up = await startUpstream(t, 'u0', (_req, res) => { gate.then(() => res.end('ok'), () => {}) })
  const { app, url } = await startGateway(t, { upstreams: { users: { targets: [up.url] } } }, (app) => {
    app.get('/x', (_request, reply) => reply.forward('users'))
  })
  const pending = [fetch(`${url}/x`), fetch(`${url}/x`), fetch(`${url}/x`)]
  const pool = app.upstreams.get('users')
  for (let i = 0; i < 100 && up.hits < 3; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(pool?.targets[0].inflight, 3)
  release()
  for (const res of await Promise.all(pending)) t.equal(await res.text(), 'ok')
  for (let i = 0; i < 50 && pool?.targets[0].inflight !== 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(pool?.targets[0].inflight, 0)
  t.equal(pool?.targets[0].requests, 3)
  t.ok((pool?.targets[0].latency ?? 0) > 0, 'latency was measured')
})

test('a client that leaves mid-body is no failure of the target', async (t) => {
  // the upstream sends headers and a first chunk, then holds the rest for good: only the
  // client leaving can end the exchange
  const up = await startUpstream(t, 'u0', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('first chunk')
  })
  const { app, url } = await startGateway(t, { upstreams: { users: { targets: [up.url], healthCheck: { passive: { consecutiveFailures: 1 } } } } }, (app) => {
    app.get('/x', (_request, reply) => reply.forward('users'))
  })
  const controller = new AbortController()
  const res = await fetch(`${url}/x`, { signal: controller.signal })
  const reader = (res.body as ReadableStream<Uint8Array>).getReader()
  await reader.read()
  controller.abort()
  const target = app.upstreams.get('users')?.targets[0]
  for (let i = 0; i < 100 && target?.inflight !== 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(target?.inflight, 0, 'the request left the in-flight count')
  t.equal(target?.failures, 0, 'dropping the answer is not counted against the target')
  t.equal(target?.state, 'healthy', 'and did not eject it (consecutiveFailures: 1)')
})

test('a request that never went out leaves the in-flight count at once', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { app, url } = await startGateway(t, { upstreams: { users: { targets: [up.url] } } }, (app) => {
    app.get('/x', (_request, reply) => reply.forward('users', {
      rewriteRequestHeaders: () => { throw new Error('no headers for you') }
    }))
  })
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 500, 'the rewrite threw: a 500 from the route')
  await res.arrayBuffer()
  const target = app.upstreams.get('users')?.targets[0]
  t.equal(target?.inflight, 0, 'nothing is left in flight')
  t.equal(up.hits, 0, 'and nothing reached the upstream')
})

test('a client that aborts does not leave the target in flight', async (t) => {
  const up = await startUpstream(t, 'u0', (_req, res) => { setTimeout(() => res.end('late'), 150) })
  const { app, url } = await startGateway(t, { upstreams: { users: { targets: [up.url] } } }, (app) => {
    app.get('/x', (_request, reply) => reply.forward('users'))
  })
  const controller = new AbortController()
  const request = fetch(`${url}/x`, { signal: controller.signal }).catch((error: Error) => error)
  for (let i = 0; i < 100 && up.hits < 1; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  controller.abort()
  t.type(await request, Error)
  const target = app.upstreams.get('users')?.targets[0]
  for (let i = 0; i < 100 && target?.inflight !== 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(target?.inflight, 0)
})

test('an unknown reply.forward option is an error, not ignored; so is one in a mount\'s replyOptions', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, { upstreams: { u: { targets: [up.url] } } }, (app) => {
    app.get('/typo', (_request, reply) => reply.forward('u', { urll: '/v1/x' } as never))
    app.get('/retries', (_request, reply) => reply.forward('u', { retriesCount: 3 } as never))
    app.get('/fine', (_request, reply) => reply.forward('u', { url: '/v1/x', method: 'GET', timeout: 1000 }))
  })
  const typo = await fetch(`${url}/typo`)
  t.equal(typo.status, 500)
  t.match(await typo.json(), { code: 'FST_UPSTREAM_INVALID_OPTION', message: /reply\.forward options\.urll: unknown option, did you mean `url`\?/ })
  const retries = await fetch(`${url}/retries`)
  t.match(await retries.json(), { code: 'FST_UPSTREAM_INVALID_OPTION', message: /retriesCount: unknown option: retries and the choice of target are the plugin's own/ })
  t.equal(up.hits, 0, 'nothing was proxied with the wrong options')
  t.equal((await echo(fetch(`${url}/fine`))).url, '/v1/x')
  const mount = Fastify()
  await t.rejects(async () => {
    await mount.register(fastifyUpstream, { upstreams: { u: { targets: [up.url] } }, routes: [{ prefix: '/m', upstream: 'u', replyOptions: { rewriteHeader: (h: unknown) => h } as never }] })
  }, { code: 'FST_UPSTREAM_INVALID_OPTION', message: /routes\[0\]\.replyOptions\.rewriteHeader: unknown option, did you mean `rewriteHeaders`\?/ })
  await mount.close()
})

test('a mount passes newer Fastify route options through (prefixTrailingSlash, validatorCompiler)', async (t) => {
  const up = await startUpstream(t, 'u0')
  let compiled = 0
  const { url } = await startGateway(t, {
    upstreams: { u: { targets: [up.url] } },
    routes: [{
      prefix: '/m',
      upstream: 'u',
      schema: { querystring: { type: 'object', properties: { n: { type: 'string' } } } },
      validatorCompiler: () => { compiled++; return () => true },
      prefixTrailingSlash: 'no-slash'
    }]
  })
  t.equal((await echo(fetch(`${url}/m/a?n=1`))).url, '/a?n=1')
  t.ok(compiled > 0, 'the route\'s own validatorCompiler was used')
})
