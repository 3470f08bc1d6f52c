import { Value } from '@sinclair/typebox/value'
import { Registry } from 'prom-client'
import { test } from 'tap'
import { StatusSchema } from '../../lib/index'
import type { RegistryStatus } from '../../lib/contracts'
import { load, startGateway, startUpstream, startUpstreams } from '../helpers'

/** Parses Prometheus text into `name{labels}` → value. */
function parseMetrics (text: string): Map<string, number> {
  const samples = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const at = line.lastIndexOf(' ')
    samples.set(line.slice(0, at), Number(line.slice(at + 1)))
  }
  return samples
}

test('the status route serves a JSON snapshot that matches its schema', async (t) => {
  const ups = await startUpstreams(t, 2)
  const dead = await startUpstream(t, 'dead')
  await dead.close()
  const { app, url } = await startGateway(t, {
    upstreams: {
      api: { targets: [...ups.map((u) => u.url), { url: dead.url, backup: true }], balancer: 'least-request' },
      flaky: { targets: [dead.url], healthCheck: { passive: { consecutiveFailures: 1 } }, retry: { attempts: 0 } }
    },
    routes: [{ prefix: '/api', upstream: 'api' }, { prefix: '/flaky', upstream: 'flaky' }],
    statusRoute: '/_upstreams'
  })
  await load(`${url}/api/x`, 10, 2)
  await load(`${url}/flaky/x`, 1, 1)
  const res = await fetch(`${url}/_upstreams`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /application\/json/)
  const body = await res.json() as RegistryStatus
  t.ok(Value.Check(StatusSchema, body), [...Value.Errors(StatusSchema, body)].map((e) => `${e.path} ${e.message}`).join('; ') || 'valid')
  t.same(body, JSON.parse(JSON.stringify(app.upstreams.status())), 'the same snapshot as upstreams.status()')
  t.equal(body.pools.api.targets[0].requests + body.pools.api.targets[1].requests, 10)
  t.match(body.pools.flaky.targets[0], { state: 'ejected', failures: 1, ejections: 1 })
})

test('a browser gets the HTML page; hooks protect both routes', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, {
    upstreams: { api: { targets: [up.url] } },
    statusRoute: {
      url: '/_status',
      onRequest: async (request, reply) => {
        if (request.headers.authorization !== 'Bearer ops') return reply.code(401).send({ error: 'no' })
      }
    }
  })
  t.equal((await fetch(`${url}/_status`)).status, 401)
  t.equal((await fetch(`${url}/_status/metrics`)).status, 401)
  const auth = { authorization: 'Bearer ops' }
  const html = await fetch(`${url}/_status`, { headers: { ...auth, accept: 'text/html,application/xhtml+xml' } })
  t.equal(html.status, 200)
  t.match(html.headers.get('content-type'), /text\/html/)
  const page = await html.text()
  t.match(page, /<title>fastify-upstream status<\/title>/)
  t.match(page, /setTimeout\(refresh, 2000\)/, 'the page refreshes itself')
  t.equal((await fetch(`${url}/_status`, { headers: auth })).status, 200)
})

test('metrics: Prometheus text whose counters match the requests counted', async (t) => {
  const ups = await startUpstreams(t, 2)
  const dead = await startUpstream(t, 'dead')
  await dead.close()
  const { url } = await startGateway(t, {
    upstreams: {
      api: { targets: ups.map((u) => u.url) },
      mixed: { targets: [dead.url, ups[0].url], balancer: 'round-robin', retry: { backoff: { base: 0 } } }
    },
    routes: [{ prefix: '/api', upstream: 'api' }, { prefix: '/mixed', upstream: 'mixed' }],
    statusRoute: '/_upstreams'
  })
  await load(`${url}/api/x`, 20, 4)
  await load(`${url}/mixed/x`, 4, 1)
  const res = await fetch(`${url}/_upstreams/metrics`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /text\/plain/)
  const samples = parseMetrics(await res.text())
  const series = (name: string, pool: string, target: string, extra = ''): number | undefined => samples.get(`fastify_upstream_${name}{pool="${pool}",target="${target}"${extra}}`)
  const a = series('requests_total', 'api', ups[0].url) ?? 0
  const b = series('requests_total', 'api', ups[1].url) ?? 0
  t.equal(a + b, 20)
  t.equal(a, ups[0].hits - (series('requests_total', 'mixed', ups[0].url) ?? 0), 'the counter agrees with what the upstream received')
  // each retry's pick moves round robin on, so every request met the dead target first
  t.equal(series('failures_total', 'mixed', dead.url), 4)
  t.equal(series('retries_total', 'mixed', dead.url), 4, 'and every one was retried elsewhere')
  t.equal(series('requests_total', 'mixed', ups[0].url), 4)
  t.equal(series('inflight', 'api', ups[0].url), 0)
  t.equal(series('target_state', 'api', ups[0].url, ',state="healthy"'), 1)
  t.equal(series('latency_seconds_count', 'api', ups[0].url), a)
  t.equal(series('latency_seconds_bucket', 'api', ups[0].url, ',le="+Inf"'), a)
  const le1 = series('latency_seconds_bucket', 'api', ups[0].url, ',le="1"') ?? 0
  t.ok(le1 <= a && le1 > 0, 'buckets are cumulative')
})

test('metrics go into the user registry, with a prefix, and leave it on close; metrics: false turns them off', async (t) => {
  const registry = new Registry()
  const up = await startUpstream(t, 'u0')
  const { app, url } = await startGateway(t, {
    upstreams: { api: { targets: [up.url] } },
    statusRoute: '/s',
    metrics: { registry, prefix: 'gw_' }
  })
  const off = await startGateway(t, { upstreams: { api: { targets: [up.url] } }, statusRoute: '/s', metrics: false })
  t.match(await registry.metrics(), /gw_requests_total/)
  t.match(await (await fetch(`${url}/s/metrics`)).text(), /# TYPE gw_latency_seconds histogram/)
  await app.close()
  t.notMatch(await registry.metrics(), /gw_/, 'close() took the metrics out of the user registry')
  t.equal((await fetch(`${off.url}/s/metrics`)).status, 404)
  t.equal((await fetch(`${off.url}/s`)).status, 200)
})
