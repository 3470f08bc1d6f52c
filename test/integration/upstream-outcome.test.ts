import Fastify, { type FastifyInstance } from 'fastify'
import { test } from 'tap'
import fastifyUpstream, { type FastifyUpstreamOptions, type SelectEvent } from '../../lib/index'
import { closedPort, listen, startUpstream, until, type Teardown } from '../helpers'

type Outcome = NonNullable<import('fastify').FastifyRequest['upstream']>

/** A gateway whose onResponse hook keeps `request.upstream` by URL, as an access log would read it; `t` closes it. */
async function gateway (t: Teardown, options: FastifyUpstreamOptions): Promise<{ app: FastifyInstance, url: string, seen: Map<string, Outcome | null> }> {
  const app = Fastify()
  const seen = new Map<string, Outcome | null>()
  app.addHook('onResponse', async (request) => { seen.set(request.url, request.upstream) })
  await app.register(fastifyUpstream, options)
  app.get('/local', async () => 'not proxied')
  return { app, url: await listen(t, app), seen }
}

/** An attempt without its time, to compare whole */
function facts (attempt: Outcome['attempts'][number]): object {
  return { target: attempt.target, status: attempt.status, error: attempt.error }
}

async function outcome (seen: Map<string, Outcome | null>, path: string): Promise<Outcome | null> {
  await until(`onResponse of ${path}`, () => seen.has(path))
  return seen.get(path) as Outcome | null
}

test('a plain success: the pool, the one target, its status and time', async (t) => {
  const up = await startUpstream(t, 'up')
  const { url, seen } = await gateway(t, { upstreams: { api: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'api' }] })
  const res = await fetch(`${url}/a`)
  t.equal(res.status, 200)
  await res.arrayBuffer()
  const got = await outcome(seen, '/a') as Outcome
  t.match(got, { pool: 'api', target: up.url, status: 200 })
  t.same(got.attempts.map(facts), [{ target: up.url, status: 200, error: undefined }])
  t.ok(typeof got.attempts[0].time === 'number' && got.attempts[0].time >= 0, 'the time to the response headers')
})

test('a retry after a refused connection lists both targets, the error and the status', async (t) => {
  const good = await startUpstream(t, 'good')
  const dead = await closedPort()
  const selected: Array<{ target: string, attempt: number }> = []
  const { url, seen } = await gateway(t, {
    upstreams: { api: { targets: [dead, good.url], balancer: 'round-robin', retry: { attempts: 1, backoff: { base: 0 } } } },
    routes: [{ prefix: '/', upstream: 'api' }],
    onSelect: (event: SelectEvent) => { selected.push({ target: event.target.url, attempt: event.attempt }) }
  })
  const res = await fetch(`${url}/r`)
  t.equal(res.status, 200)
  await res.arrayBuffer()
  const got = await outcome(seen, '/r') as Outcome
  t.match(got, { pool: 'api', target: good.url, status: 200 })
  t.same(got.attempts.map(facts), [
    { target: dead, status: undefined, error: 'FST_UPSTREAM_CONNECT_FAILED' },
    { target: good.url, status: 200, error: undefined }
  ], 'both attempts, in order')
  t.ok(got.attempts.every((a) => typeof a.time === 'number'), 'each with its time')
  t.same(selected, [{ target: dead, attempt: 0 }, { target: good.url, attempt: 1 }], 'every attempt has its select event')
})

test('a retry on a status lists the status the first target answered', async (t) => {
  const busy = await startUpstream(t, 'busy', (_req, res) => { res.statusCode = 503; res.end('busy') })
  const good = await startUpstream(t, 'good')
  const { url, seen } = await gateway(t, {
    upstreams: { api: { targets: [busy.url, good.url], balancer: 'round-robin', retry: { statusCodes: [503], backoff: { base: 0 } } } },
    routes: [{ prefix: '/', upstream: 'api' }]
  })
  const res = await fetch(`${url}/s`)
  t.equal(res.status, 200)
  await res.arrayBuffer()
  const got = await outcome(seen, '/s') as Outcome
  t.same(got.attempts.map((a) => [a.target, a.status ?? a.error]), [[busy.url, 503], [good.url, 200]])
  t.ok(got.attempts.every((a) => typeof a.time === 'number'))
})

test('an error answer (502): the attempt has the error code and no status', async (t) => {
  const dead = await closedPort()
  const { url, seen } = await gateway(t, { upstreams: { api: { targets: [dead], retry: { attempts: 0 } } }, routes: [{ prefix: '/', upstream: 'api' }] })
  const res = await fetch(`${url}/e`)
  t.equal(res.status, 502)
  await res.arrayBuffer()
  const got = await outcome(seen, '/e') as Outcome
  t.match(got, { pool: 'api', target: dead })
  t.equal(got.status, undefined, 'the target gave no status')
  t.same(got.attempts.map(facts), [{ target: dead, status: undefined, error: 'FST_UPSTREAM_CONNECT_FAILED' }])
  t.type(got.attempts[0].time, 'number')
})

test('a target answering 500 is passed on: its status, no error', async (t) => {
  const failing = await startUpstream(t, 'failing', (_req, res) => { res.statusCode = 500; res.end('oops') })
  const { url, seen } = await gateway(t, { upstreams: { api: { targets: [failing.url] } }, routes: [{ prefix: '/', upstream: 'api' }] })
  const res = await fetch(`${url}/f`)
  t.equal(res.status, 500)
  await res.arrayBuffer()
  const got = await outcome(seen, '/f') as Outcome
  t.equal(got.status, 500)
  t.same(got.attempts.map(facts), [{ target: failing.url, status: 500, error: undefined }])
})

test('a request not proxied has none; one that no target could take has its pool and no attempt', async (t) => {
  const { url, seen } = await gateway(t, { upstreams: { empty: { targets: [] } }, routes: [{ prefix: '/p', upstream: 'empty' }] })
  const local = await fetch(`${url}/local`)
  t.equal(await local.text(), 'not proxied')
  t.equal(await outcome(seen, '/local'), null)
  const none = await fetch(`${url}/p/x`)
  t.equal(none.status, 503)
  await none.arrayBuffer()
  t.same(await outcome(seen, '/p/x'), { pool: 'empty', target: undefined, status: undefined, attempts: [] })
})
