import Fastify from 'fastify'
import { Registry } from 'prom-client'
import { test } from 'tap'
import fastifyUpstream from '../../lib/index'
import { startGateway, startUpstream } from '../helpers'

test('metrics: { registry } without statusRoute: the metrics go into the registry the app serves itself, and leave it on close', async (t) => {
  const up = await startUpstream(t, 'u0')
  const registry = new Registry()
  const { app, url } = await startGateway(t, {
    upstreams: { api: { targets: [up.url] } },
    routes: [{ prefix: '/api', upstream: 'api' }],
    metrics: { registry }
  }, (app) => {
    // the application's own metrics route, as with prom-client or fastify-metrics
    app.get('/metrics', async (_request, reply) => {
      reply.type(registry.contentType)
      return await registry.metrics()
    })
  })

  const proxied = await fetch(`${url}/api/x`)
  t.equal(proxied.status, 200)
  await proxied.arrayBuffer()
  const text = await (await fetch(`${url}/metrics`)).text()
  t.match(text, `fastify_upstream_requests_total{pool="api",target="${up.url}"} 1`)
  t.match(text, `fastify_upstream_target_state{pool="api",target="${up.url}",state="healthy"} 1`)
  t.match(text, '# TYPE fastify_upstream_latency_seconds histogram')

  await app.close()
  t.notMatch(await registry.metrics(), /fastify_upstream_/, 'close() took them out of the registry')
  t.same(registry.getMetricsAsArray(), [])
})

test('with neither statusRoute nor a registry, no metrics are created', async (t) => {
  const up = await startUpstream(t, 'u0')
  const registered = t.capture(Registry.prototype, 'registerMetric')
  const app = Fastify()
  await app.register(fastifyUpstream, { upstreams: { api: { targets: [up.url] } }, metrics: true })
  await app.ready()
  t.equal(registered().length, 0, 'no metric registered anywhere')
  await app.close()

  // with a status route they are, which shows the capture would have seen them
  const served = Fastify()
  await served.register(fastifyUpstream, { upstreams: { api: { targets: [up.url] } }, statusRoute: '/_up' })
  await served.ready()
  t.ok(registered().length > 0, 'registered for the status route')
  await served.close()
})
