import Fastify, { type FastifyRequest } from 'fastify'
import { test } from 'tap'
import fastifyUpstream, { type ForwardOptions, type ProxyErrorEvent, type RetryEvent } from '../../lib/index'
import { closedPort, startGateway, startUpstream, until, type Teardown, type Upstream } from '../helpers'

// Header values the gateway itself produces (a pool's `set` functions, a caller's
// rewrites) that Node or undici would refuse: the gateway's own 500, never a crash, a
// retry or a failure charged to a target.

/** Values Node refuses in a header: CR/LF, NUL, another control character, a char above U+00FF. */
const BAD_VALUES = ['a\r\nx-injected: 1', 'a\u0000b', 'a\u0001b', 'a\u0100b', '\u2028']

/** A printable label for a value (a raw U+2028 would break the TAP output's lines). */
function label (value: unknown): string {
  return JSON.stringify(value).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

/** The `v` query parameter: what a careless function might copy into a header. */
function queryValue (request: { query: unknown } | undefined): string | undefined {
  return (request?.query as Record<string, string | undefined>).v
}

/** A target whose answer carries headers of its own (none may reach the client on a gateway error). */
function startTarget (t: Teardown, name: string): Promise<Upstream> {
  return startUpstream(t, name, (_req, res, _body, upstream) => {
    res.setHeader('content-type', 'text/plain')
    res.setHeader('x-upstream', upstream.name)
    res.setHeader('x-target-secret', 'internal')
    res.end('from ' + upstream.name)
  })
}

interface Answer { status: number, code: string | undefined, message: string, headers: Headers }

async function ask (url: string, init?: RequestInit): Promise<Answer> {
  const res = await fetch(url, init)
  const text = await res.text()
  let body: { code?: string, message?: string } = {}
  try { body = JSON.parse(text) } catch {}
  return { status: res.status, code: body.code, message: body.message ?? '', headers: res.headers }
}

function totals (app: Awaited<ReturnType<typeof startGateway>>['app'], pool: string): { failures: number, ejections: number, inflight: number } {
  const views = app.upstreams.get(pool)?.targets ?? []
  return {
    failures: views.reduce((sum, view) => sum + view.failures, 0),
    ejections: views.reduce((sum, view) => sum + view.ejections, 0),
    inflight: views.reduce((sum, view) => sum + view.inflight, 0)
  }
}

test('a responseHeaders.set function returning an invalid value: 500 FST_UPSTREAM_BAD_HEADER, buffered or streamed, and the server keeps serving', async (t) => {
  const ups = [await startTarget(t, 'u0'), await startTarget(t, 'u1')]
  const pool = {
    targets: ups.map((u) => u.url),
    responseHeaders: { set: { 'x-echo': queryValue } },
    healthCheck: { passive: { consecutiveFailures: 1 } },
    retry: { attempts: 2, backoff: { base: 0 } }
  }
  const { app, url } = await startGateway(t, {
    upstreams: { buffered: pool, streamed: { ...pool, responseBuffer: 0 } },
    routes: [{ prefix: '/buffered', upstream: 'buffered' }, { prefix: '/streamed', upstream: 'streamed' }]
  })
  for (const mode of ['buffered', 'streamed']) {
    for (const value of BAD_VALUES) {
      const hits = ups[0].hits + ups[1].hits
      const answer = await ask(`${url}/${mode}/x?v=${encodeURIComponent(value)}`)
      t.equal(answer.status, 500, `${mode} ${label(value)}`)
      t.equal(answer.code, 'FST_UPSTREAM_BAD_HEADER')
      t.match(answer.message, /x-echo/, 'the message names the header')
      t.notOk(answer.message.includes(value), 'but not its value')
      t.equal(answer.headers.get('x-upstream'), null, "none of the target's headers")
      t.equal(answer.headers.get('x-target-secret'), null)
      t.equal(answer.headers.get('x-injected'), null)
      t.equal(ups[0].hits + ups[1].hits, hits + 1, 'no retry')
    }
    await until(`${mode}: the targets' bodies drained`, () => totals(app, mode).inflight === 0)
    t.same({ failures: totals(app, mode).failures, ejections: totals(app, mode).ejections }, { failures: 0, ejections: 0 }, `${mode}: no target is charged`)
    const good = await ask(`${url}/${mode}/x?v=fine`)
    t.equal(good.status, 200, `${mode}: the server keeps serving`)
    t.equal(good.headers.get('x-echo'), 'fine')
  }
})

test('a function that throws, or a response rewrite yielding an invalid header: a 500, never a crash', async (t) => {
  const up = await startTarget(t, 'u0')
  const rewriteHeaders: NonNullable<ForwardOptions['rewriteHeaders']> = (headers, request) => {
    const v = queryValue(request)
    if (v === 'throw') throw new Error('rewrite failed')
    if (v === 'name') return { ...headers, 'bad name': 'x' }
    if (v === 'array') return { ...headers, 'x-list': ['ok', 'a\nb'] as unknown as string }
    return { ...headers, 'x-echo': v }
  }
  const { app, url } = await startGateway(t, {
    upstreams: {
      plain: { targets: [up.url], retry: { attempts: 0 } },
      plainStreamed: { targets: [up.url], responseBuffer: 0 },
      throwing: { targets: [up.url], responseHeaders: { set: { 'x-echo': () => { throw new Error('set failed') } } } }
    },
    routes: [{ prefix: '/mount', upstream: 'plain', replyOptions: { rewriteHeaders } }]
  }, (app) => {
    app.get('/call', (_request, reply) => reply.forward('plain', { rewriteHeaders }))
    app.get('/call-streamed', (_request, reply) => reply.forward('plainStreamed', { rewriteHeaders }))
    app.get('/throwing', (_request, reply) => reply.forward('throwing'))
  })
  for (const path of ['/mount/x', '/call', '/call-streamed']) {
    for (const value of BAD_VALUES) {
      const answer = await ask(`${url}${path}?v=${encodeURIComponent(value)}`)
      t.equal(answer.status, 500, `${path} ${label(value)}`)
      t.equal(answer.code, 'FST_UPSTREAM_BAD_HEADER')
      t.match(answer.message, /response header "x-echo"/)
      t.equal(answer.headers.get('x-upstream'), null)
    }
    const name = await ask(`${url}${path}?v=name`)
    t.equal(name.status, 500, `${path}: an invalid name`)
    t.equal(name.code, 'FST_UPSTREAM_BAD_HEADER')
    t.notOk(name.message.includes('bad name'), 'a name that is no token is not repeated')
    const list = await ask(`${url}${path}?v=array`)
    t.equal(list.code, 'FST_UPSTREAM_BAD_HEADER', `${path}: an invalid value in a list`)
    const thrown = await ask(`${url}${path}?v=throw`)
    t.equal(thrown.status, 500, `${path}: a rewrite that throws`)
    t.equal(thrown.message, 'rewrite failed')
    const good = await ask(`${url}${path}?v=fine`)
    t.equal(good.status, 200, `${path}: the server keeps serving`)
    t.equal(good.headers.get('x-echo'), 'fine')
  }
  const thrown = await ask(`${url}/throwing`)
  t.equal(thrown.status, 500, 'a responseHeaders.set function that throws')
  t.equal(thrown.message, 'set failed')
  t.same(totals(app, 'plain').failures + totals(app, 'plainStreamed').failures + totals(app, 'throwing').failures, 0, 'no target is charged')
})

test('a headers.set function returning an invalid value: 500 FST_UPSTREAM_BAD_HEADER, nothing sent, no retry, no target charged', async (t) => {
  const ups = [await startTarget(t, 'u0'), await startTarget(t, 'u1'), await startTarget(t, 'u2'), await startTarget(t, 'u3')]
  const retries: RetryEvent[] = []
  const { app, url } = await startGateway(t, {
    upstreams: {
      u: {
        targets: ups.map((u) => u.url),
        headers: { set: { 'x-user': queryValue } },
        healthCheck: { passive: { consecutiveFailures: 1, maxEjectionPercent: 100 } },
        retry: { attempts: 3, backoff: { base: 0 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'u' }],
    onRetry: (event) => retries.push(event)
  })
  for (let i = 0; i < 10; i++) {
    const value = BAD_VALUES[i % BAD_VALUES.length]
    const answer = await ask(`${url}/x?v=${encodeURIComponent(value)}`)
    t.equal(answer.status, 500, label(value))
    t.equal(answer.code, 'FST_UPSTREAM_BAD_HEADER')
    t.match(answer.message, /request header "x-user"/)
  }
  t.equal(ups.reduce((sum, u) => sum + u.hits, 0), 0, 'nothing was sent upstream')
  t.equal(retries.length, 0, 'no retry')
  t.same(totals(app, 'u'), { failures: 0, ejections: 0, inflight: 0 }, 'no target charged, none left in flight')
  t.ok(app.upstreams.get('u')?.targets.every((view) => view.state === 'healthy'), 'every target stays healthy')
  const good = await ask(`${url}/x?v=ada`)
  t.equal(good.status, 200)
  t.equal(ups.find((u) => u.hits === 1)?.last?.headers['x-user'], 'ada')
})

test("undici refusing a caller's rewriteRequestHeaders: the gateway's 500, not a 502 retried and charged to every target", async (t) => {
  const ups = [await startTarget(t, 'u0'), await startTarget(t, 'u1')]
  const retries: RetryEvent[] = []
  const errors: ProxyErrorEvent[] = []
  const rewriteRequestHeaders: NonNullable<ForwardOptions['rewriteRequestHeaders']> = (request, headers) =>
    ({ ...headers, 'x-user': queryValue(request) })
  const { app, url } = await startGateway(t, {
    upstreams: {
      u: { targets: ups.map((u) => u.url), healthCheck: { passive: { consecutiveFailures: 1, maxEjectionPercent: 100 } }, retry: { attempts: 3, backoff: { base: 0 } } }
    },
    routes: [{ prefix: '/mount', upstream: 'u', replyOptions: { rewriteRequestHeaders } }],
    onRetry: (event) => retries.push(event),
    onProxyError: (event) => errors.push(event)
  }, (app) => {
    app.get('/call', (_request, reply) => reply.forward('u', { rewriteRequestHeaders }))
  })
  for (const path of ['/call', '/mount/x']) {
    for (const value of BAD_VALUES) {
      const answer = await ask(`${url}${path}?v=${encodeURIComponent(value)}`)
      t.equal(answer.status, 500, `${path} ${label(value)}`)
      t.equal(answer.code, 'FST_UPSTREAM_BAD_HEADER')
      t.match(answer.message, /request header "x-user"/)
    }
  }
  t.equal(ups[0].hits + ups[1].hits, 0, 'nothing was sent upstream')
  t.equal(retries.length, 0, 'no retry')
  t.equal(errors.length, BAD_VALUES.length * 2, 'each is reported as a proxy error')
  t.match(errors[0], { pool: 'u', error: { code: 'FST_UPSTREAM_BAD_HEADER' } })
  t.same(totals(app, 'u'), { failures: 0, ejections: 0, inflight: 0 }, 'no target charged, none left in flight')
  const good = await ask(`${url}/call?v=ada`)
  t.equal(good.status, 200)
})

test('a header policy refusing a value on a retry (sent from a callback or a timer) answers instead of crashing', async (t) => {
  const dead = [await closedPort('a'), await closedPort('b')]
  // valid on a request's first attempt, invalid on its retry
  const calls = new WeakMap<FastifyRequest, number>()
  const secondBad = (request: FastifyRequest): string => {
    const n = (calls.get(request) ?? 0) + 1
    calls.set(request, n)
    return n === 1 ? 'ok' : 'a\r\nb'
  }
  const { app, url } = await startGateway(t, {
    upstreams: {
      now: { targets: dead, headers: { set: { 'x-attempt': secondBad } }, retry: { attempts: 1, backoff: { base: 0 } } },
      later: { targets: dead, headers: { set: { 'x-attempt': secondBad } }, retry: { attempts: 1, backoff: { base: 5, max: 10 } } }
    },
    routes: [{ prefix: '/now', upstream: 'now' }, { prefix: '/later', upstream: 'later' }]
  })
  for (const path of ['/now/x', '/later/x', '/now/y', '/later/y']) {
    const answer = await ask(url + path)
    t.equal(answer.status, 500, path)
    t.equal(answer.code, 'FST_UPSTREAM_BAD_HEADER')
  }
  t.equal(totals(app, 'now').inflight + totals(app, 'later').inflight, 0, 'every target released')
})

test('header names and fixed values of headers.set / responseHeaders.set are checked at register', async (t) => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ headers: { set: { 'bad name': 'x' } } }, /upstreams\.u\.headers\.set\.bad name: is not a valid header name/],
    [{ headers: { set: { 'x-a': 'a\u0001b' } } }, /upstreams\.u\.headers\.set\.x-a: must be a header value/],
    [{ headers: { set: { 'x-a': 'a\u0100b' } } }, /upstreams\.u\.headers\.set\.x-a: must be a header value/],
    [{ responseHeaders: { set: { 'x-a': 'a\rb' } } }, /upstreams\.u\.responseHeaders\.set\.x-a: must be a header value/],
    [{ responseHeaders: { set: { 'x-a': '\u2028' } } }, /upstreams\.u\.responseHeaders\.set\.x-a: must be a header value/],
    [{ responseHeaders: { set: { 'x:a': 'x' } } }, /upstreams\.u\.responseHeaders\.set\.x:a: is not a valid header name/],
    [{ responseHeaders: { remove: ['server', 'x y'] } }, /upstreams\.u\.responseHeaders\.remove\[1\]: is not a valid header name/]
  ]
  for (const [policy, message] of cases) {
    const app = Fastify()
    app.register(fastifyUpstream, { upstreams: { u: { targets: ['http://127.0.0.1:1'], ...policy } } })
    await t.rejects(async () => { await app.ready() }, { code: 'FST_UPSTREAM_INVALID_OPTION', message }, label(policy))
    await app.close()
  }
  // tab, visible ASCII and obs-text are valid, as Node has them
  const app = Fastify()
  app.register(fastifyUpstream, { upstreams: { u: { targets: ['http://127.0.0.1:1'], responseHeaders: { set: { 'x-a': 'caf\u00e9\tok ~' } } } } })
  await t.resolves(async () => { await app.ready() })
  await app.close()
})
