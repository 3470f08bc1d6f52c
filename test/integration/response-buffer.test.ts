import { randomBytes } from 'node:crypto'
import type http from 'node:http'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { test } from 'tap'
import { request } from 'undici'
import type { FastifyUpstreamOptions, PoolOptions, RetryEvent, ProxyErrorEvent } from '../../lib/index'
import { startGateway, startUpstream, until, within, type Teardown, type Upstream } from '../helpers'

// Response buffering (`responseBuffer`): a response of known size up to the limit is read
// whole from the target before the client gets any of it; anything else streams. Real
// upstream servers on loopback that send part of a body and then hold, break off or stall.

interface Held {
  upstream: Upstream
  /** true once the upstream has sent its headers and the first part of the body */
  partSent: () => boolean
  /** sends the rest of every held body */
  release: () => void
}

/** An upstream that sends `headers` and 'abc', then holds 'def' until released; `t` closes it. */
async function startHeld (t: Teardown, headers: http.OutgoingHttpHeaders): Promise<Held> {
  let sent = false
  const waiting: Array<() => void> = []
  const upstream = await startUpstream(t, 'held', (_req, res) => {
    res.writeHead(200, { 'x-upstream': 'held', ...headers })
    res.write('abc')
    sent = true
    waiting.push(() => res.end('def'))
  })
  return { upstream, partSent: () => sent, release: () => { for (const send of waiting.splice(0)) send() } }
}

/** A gateway over `targets` with a mount on '/'; `t` closes it. */
function gateway (t: Teardown, targets: string[], pool: Partial<PoolOptions> = {}, extra: Partial<FastifyUpstreamOptions> = {}): ReturnType<typeof startGateway> {
  return startGateway(t, { upstreams: { pool: { targets, ...pool } }, routes: [{ prefix: '/', upstream: 'pool' }], ...extra })
}

interface Watched {
  /** true once the client has the response headers */
  headers: () => boolean
  done: Promise<{ status: number, headers: Record<string, string | string[] | undefined>, body: string }>
}

/** Sends a GET and notes when its response headers arrive. */
function watch (url: string, signal?: AbortSignal): Watched {
  let headers = false
  const done = request(url, { signal }).then(async (res) => {
    headers = true
    return { status: res.statusCode, headers: res.headers, body: await res.body.text() }
  })
  return { headers: () => headers, done }
}

test('a small response is read whole before the client gets any of it', async (t) => {
  const held = await startHeld(t, { 'content-type': 'text/plain', 'content-length': 6 })
  const { app, url } = await gateway(t, [held.upstream.url])
  const target = app.upstreams.get('pool')?.targets[0]

  const answer = watch(`${url}/x`)
  await until('the first part of the body', held.partSent)
  t.notOk(await within(answer.headers, 300), 'no headers while the target holds the rest of the body')
  t.equal(target?.inflight, 1, 'the exchange is still the target\'s')
  held.release()
  const res = await answer.done
  t.equal(res.status, 200)
  t.equal(res.body, 'abcdef')
  t.equal(res.headers['content-length'], '6')
  t.equal(res.headers['content-type'], 'text/plain')
  t.equal(res.headers['x-upstream'], 'held')
  t.equal(target?.inflight, 0)
})

test('with responseBuffer: 0 the same response streams: headers come while the target holds the rest', async (t) => {
  const held = await startHeld(t, { 'content-type': 'text/plain', 'content-length': 6 })
  const { url } = await gateway(t, [held.upstream.url], { responseBuffer: 0 })

  const answer = watch(`${url}/x`)
  await until('the response headers before the end of the body', answer.headers)
  held.release()
  t.equal((await answer.done).body, 'abcdef')
})

const streamed: Array<[string, http.OutgoingHttpHeaders, Partial<PoolOptions>]> = [
  ['a length above responseBuffer', { 'content-type': 'text/plain', 'content-length': 6 }, { responseBuffer: 5 }],
  ['no length (chunked)', { 'content-type': 'text/event-stream' }, {}],
  ['no content type', { 'content-length': 6 }, {}]
]

for (const [name, headers, pool] of streamed) {
  test(`a response with ${name} streams as it comes`, async (t) => {
    const held = await startHeld(t, headers)
    const { url } = await gateway(t, [held.upstream.url], pool)

    const answer = watch(`${url}/x`)
    await until('the response headers before the end of the body', answer.headers)
    held.release()
    const res = await answer.done
    t.equal(res.body, 'abcdef')
    t.equal(res.headers['content-type'], headers['content-type'], 'no content type added')
  })
}

test('a body that arrives in many chunks reaches the client whole and unchanged', async (t) => {
  const body = randomBytes(60_000)
  const upstream = await startUpstream(t, 'chunks', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length })
    let at = 0
    const next = (): void => {
      const end = Math.min(at + 7_000, body.length)
      res.write(body.subarray(at, end))
      at = end
      if (at < body.length) setTimeout(next, 2)
      else res.end()
    }
    next()
  })
  const { url } = await gateway(t, [upstream.url])

  const res = await request(`${url}/x`)
  const received = Buffer.from(await res.body.arrayBuffer())
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-length'], String(body.length))
  t.ok(received.equals(body), 'the same bytes')
})

test('HEAD and 204 answers keep their headers and carry no body', async (t) => {
  const upstream = await startUpstream(t, 'empty', (req, res) => {
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 100 })
      res.end()
    } else {
      res.writeHead(204, { 'content-type': 'text/plain' })
      res.end()
    }
  })
  const { url } = await gateway(t, [upstream.url])

  const head = await request(`${url}/x`, { method: 'HEAD' })
  t.equal(head.statusCode, 200)
  t.equal(head.headers['content-length'], '100', "the target's length of the representation")
  t.equal(await head.body.text(), '')
  const empty = await request(`${url}/x`, { method: 'DELETE' })
  t.equal(empty.statusCode, 204)
  t.equal(await empty.body.text(), '')
})

/** An upstream that announces 10 bytes, sends 3 and then breaks the connection; `t` closes it. */
function startBreaking (t: Teardown, name: string): Promise<Upstream> {
  return startUpstream(t, name, (_req, res, _body, upstream) => {
    res.writeHead(200, {
      'content-type': 'text/plain',
      'content-length': 10,
      'x-upstream': upstream.name,
      'set-cookie': 'session=of-the-broken-answer',
      'access-control-allow-origin': 'https://upstream.example'
    })
    res.write('abc')
    setTimeout(() => res.destroy(), 20)
  })
}

test('a body that breaks off is a 502 with the plugin\'s code, not a truncated answer', async (t) => {
  const broken = await startBreaking(t, 'broken')
  const errors: ProxyErrorEvent[] = []
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [broken.url], retry: { attempts: 0 }, responseHeaders: { set: { 'cache-control': 'public, max-age=3600' } } } },
    routes: [{ prefix: '/', upstream: 'pool', onRequest: async (_request: FastifyRequest, reply: FastifyReply) => { reply.header('access-control-allow-origin', '*') } }],
    onProxyError: (event) => errors.push(event)
  })
  const target = app.upstreams.get('pool')?.targets[0]

  const res = await request(`${url}/x`)
  const body = await res.body.json() as { code: string }
  t.equal(res.statusCode, 502)
  t.equal(body.code, 'FST_UPSTREAM_BAD_GATEWAY')
  t.equal(res.headers['x-upstream'], undefined, "none of the broken response's headers")
  t.equal(res.headers['set-cookie'], undefined)
  t.equal(res.headers['cache-control'], undefined, "nor the pool's response headers: an error is not cached")
  t.equal(res.headers['access-control-allow-origin'], '*', "the app's own headers stay")
  t.type(res.headers.date, 'string', 'a Date as on any answer')
  t.match(res.headers['content-type'], /^application\/json/)
  t.equal(target?.failures, 1, 'one failure of the target')
  t.equal(target?.inflight, 0)
  t.same(errors.map((event) => [event.target.url, event.error.code]), [[broken.url, 'FST_UPSTREAM_BAD_GATEWAY']])
})

test('with retries, a GET whose body broke off is answered by another target', async (t) => {
  const broken = await startBreaking(t, 'broken')
  const good = await startUpstream(t, 'good')
  const retries: RetryEvent[] = []
  const { url } = await gateway(t, [broken.url, good.url], { retry: { attempts: 1, backoff: { base: 0 } } }, { onRetry: (event) => retries.push(event) })

  for (let i = 0; i < 4; i++) {
    const res = await request(`${url}/x`)
    const body = await res.body.json() as { upstream: string }
    t.equal(res.statusCode, 200)
    t.equal(body.upstream, 'good')
    t.equal(res.headers['x-upstream'], 'good')
  }
  t.ok(broken.hits >= 2, 'the broken target had its turns')
  t.same(retries.map((event) => [event.from.url, event.to.url]), Array(broken.hits).fill([broken.url, good.url]), 'each of them retried on the good one')
})

test('a body that stalls past timeout.idle is a 504', async (t) => {
  const stalled = await startUpstream(t, 'stalled', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 10 })
    res.write('abc')
  })
  const { url } = await gateway(t, [stalled.url], { retry: { attempts: 0 }, timeout: { idle: 200 } })

  const res = await request(`${url}/x`)
  const body = await res.body.json() as { code: string }
  t.equal(res.statusCode, 504)
  t.equal(body.code, 'FST_UPSTREAM_TIMEOUT')
})

test('a client that leaves while the body is read ends the exchange at once, at no cost to the target', async (t) => {
  const held = await startHeld(t, { 'content-type': 'text/plain', 'content-length': 6 })
  const errors: ProxyErrorEvent[] = []
  const { app, url } = await gateway(t, [held.upstream.url], {
    healthCheck: { passive: { consecutiveFailures: 1 } },
    timeout: { idle: 30_000 }
  }, { onProxyError: (event) => errors.push(event) })
  const target = app.upstreams.get('pool')?.targets[0]

  const controller = new AbortController()
  const answer = watch(`${url}/x`, controller.signal)
  await until('the first part of the body', held.partSent)
  controller.abort()
  await t.rejects(answer.done)
  // the target still holds the rest of its body: the gateway stops reading it, long before
  // the idle timeout would
  await until('the exchange to end', () => target?.inflight === 0, 2000)
  held.release()
  t.equal(target?.failures, 0)
  t.equal(target?.state, 'healthy')
  t.same(errors, [], 'no proxy error for a client that has gone')

  const next = watch(`${url}/x`)
  await until('the next request to reach the target', () => held.upstream.hits === 2)
  held.release()
  t.equal((await next.done).body, 'abcdef')
})

test('whatever else answers while the body is read sends none of its headers, and the body is then dropped', async (t) => {
  const slow = await startUpstream(t, 'slow', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 6, 'set-cookie': 'session=of-the-late-answer' })
    res.write('abc')
    setTimeout(() => res.end('def'), 600)
  })
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [slow.url], timeout: { idle: 30_000 } } },
    routes: [{ prefix: '/', upstream: 'pool', handlerTimeout: 150 }]
  })
  const target = app.upstreams.get('pool')?.targets[0]

  const res = await request(`${url}/x`)
  const body = await res.body.json() as { code: string }
  t.equal(res.statusCode, 503)
  t.equal(body.code, 'FST_ERR_HANDLER_TIMEOUT', "Fastify's own answer")
  t.equal(res.headers['set-cookie'], undefined, "with none of the target's headers")
  await until('the exchange to end', () => target?.inflight === 0, 2000)
  t.equal(target?.failures, 0, 'no failure of the target')
})

test('a caller\'s own onResponse gets the response stream', async (t) => {
  const upstream = await startUpstream(t, 'plain')
  const { url } = await startGateway(t, { upstreams: { pool: { targets: [upstream.url] } } }, (app) => {
    app.get('/own', (_request, reply) => reply.forward('pool', {
      onResponse: (_req, own, res) => { own.header('x-piped', String(typeof res.stream.pipe === 'function')).send(res.stream) }
    }))
  })

  const res = await request(`${url}/own`)
  t.equal(res.headers['x-piped'], 'true')
  t.equal((await res.body.json() as { upstream: string }).upstream, 'plain')
})
