// Pools from etcd (plugin option `etcd`): added, replaced and removed at run time, invalid
// ones refused with the last good one kept, routes to pools that come later, pools in code as defaults.
import Fastify, { type FastifyInstance } from 'fastify'
import { test } from 'tap'
import fastifyUpstream from '../../lib/index'
import { etcdSkip, startEtcd, type EtcdCluster } from '../etcd'
import { listen, load, logCapture, startUpstream, until, type LogLine, type Teardown } from '../helpers'

const prefix = '/gateway/pools/'

async function gateway (t: Teardown, etcd: EtcdCluster, options: Record<string, unknown> = {}): Promise<{ app: FastifyInstance, url: string, lines: LogLine[] }> {
  const { lines, stream } = logCapture()
  const app = Fastify({ logger: { stream, level: 'info' } })
  await app.register(fastifyUpstream, {
    etcd: { endpoints: etcd.endpoints, prefix },
    routes: [{ prefix: '/orders', upstream: 'orders' }],
    ...options
  })
  return { app, url: await listen(t, app), lines }
}

test('a pool appears, changes and goes with its key; a route to it answers 503 until it is there', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  const v1 = await startUpstream(t, 'v1')
  const v2 = await startUpstream(t, 'v2')
  const { app, url } = await gateway(t, etcd)
  const before = await fetch(`${url}/orders/1`)
  t.equal(before.status, 503)
  t.equal((await before.json() as { code: string }).code, 'FST_UPSTREAM_NO_TARGET', 'no such pool yet: unavailable, not unknown')

  await etcd.put(prefix + 'orders', JSON.stringify({ targets: [v1.url] }))
  await until('orders added', () => app.upstreams.has('orders'))
  t.same(await load(`${url}/orders/1`, 3, 1), { v1: 3 })

  // a slow request on the old pool finishes there while the new one takes the next ones
  const slow = await startUpstream(t, 'slow', (_req, res) => { setTimeout(() => { res.setHeader('x-upstream', 'slow'); res.end() }, 300) })
  await etcd.put(prefix + 'orders', JSON.stringify({ targets: [slow.url] }))
  await until('orders replaced', () => app.upstreams.get('orders')?.targets[0]?.url === slow.url)
  const pending = fetch(`${url}/orders/slow`)
  await until('in flight', () => app.upstreams.get('orders')?.targets[0]?.inflight === 1)
  await etcd.put(prefix + 'orders', JSON.stringify({ targets: [v2.url], balancer: 'least-request' }))
  await until('orders replaced again', () => app.upstreams.get('orders')?.targets[0]?.url === v2.url)
  t.same(await load(`${url}/orders/1`, 3, 1), { v2: 3 }, 'new requests on the new pool')
  t.equal((await pending).headers.get('x-upstream'), 'slow', 'the request in flight finished on the old one')
  t.equal(app.upstreams.status().pools.orders.balancer, 'least-request')

  await etcd.del(prefix + 'orders')
  await until('orders removed', () => !app.upstreams.has('orders'))
  t.equal((await fetch(`${url}/orders/1`)).status, 503)
})

test('an invalid pool is refused with a warning naming the key and the field; the last good one stays', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  const v1 = await startUpstream(t, 'v1')
  await etcd.put(prefix + 'orders', JSON.stringify({ targets: [v1.url] }))
  const { app, url, lines } = await gateway(t, etcd)
  t.ok(app.upstreams.has('orders'), 'the pools in etcd are there before the app serves')
  await etcd.put(prefix + 'orders', JSON.stringify({ targets: [v1.url], balancer: 'fastest' }))
  await etcd.put(prefix + 'orders', '{ not json')
  await etcd.put(prefix + 'bad name', JSON.stringify({ targets: [] }))
  await until('three refusals', () => lines.filter((line) => line.msg.startsWith('upstream pool from etcd refused')).length === 3)
  const refusals = lines.filter((line) => line.msg.startsWith('upstream pool from etcd refused')) as unknown as Array<{ key: string, reason?: string, msg: string }>
  t.ok(refusals.some((r) => r.key === prefix + 'orders' && /upstreams\.orders\.balancer: must be one of/.test(r.reason ?? '')), 'the key, the field and what is wrong')
  t.ok(refusals.some((r) => r.key === prefix + 'orders' && r.msg.includes('no JSON')), 'a value that is no JSON')
  t.ok(refusals.some((r) => r.key === prefix + 'bad name' && /a pool name must be/.test(r.reason ?? '')), 'a key that makes no pool name')
  t.same(await load(`${url}/orders/1`, 3, 1), { v1: 3 }, 'the last good pool serves')
  t.equal(app.upstreams.status().pools.orders.balancer, 'round-robin')
})

test('a pool in code is the default: etcd replaces it, and deleting the key puts the code\'s back', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  const code = await startUpstream(t, 'code')
  const shared = await startUpstream(t, 'shared')
  const { app, url } = await gateway(t, etcd, { upstreams: { orders: { targets: [code.url] } } })
  t.same(await load(`${url}/orders/1`, 2, 1), { code: 2 })
  await etcd.put(prefix + 'orders', JSON.stringify({ targets: [shared.url] }))
  await until('etcd\'s', () => app.upstreams.get('orders')?.targets[0]?.url === shared.url)
  t.same(await load(`${url}/orders/1`, 2, 1), { shared: 2 })
  await etcd.del(prefix + 'orders')
  await until('code\'s again', () => app.upstreams.get('orders')?.targets[0]?.url === code.url)
  t.same(await load(`${url}/orders/1`, 2, 1), { code: 2 })
})

test('reply.forward to a pool etcd has not defined yet: 503, then the pool', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  const up = await startUpstream(t, 'late')
  const app2 = Fastify()
  await app2.register(fastifyUpstream, { etcd: { endpoints: etcd.endpoints, prefix } })
  app2.get('/f', (_request, reply) => reply.forward('later'))
  const url2 = await listen(t, app2)
  const res = await fetch(`${url2}/f`)
  t.equal(res.status, 503)
  t.equal((await res.json() as { code: string }).code, 'FST_UPSTREAM_NO_TARGET')
  await etcd.put(prefix + 'later', JSON.stringify({ targets: [up.url] }))
  await until('later', () => app2.upstreams.has('later'))
  t.same(await load(`${url2}/f`, 2, 1), { late: 2 })
})

test('options: the etcd option is validated, and without it a route to an unknown pool still fails at register', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{ etcd: { prefix: '/p/' } }, /etcd\.endpoints: is required/],
    [{ etcd: { endpoints: [], prefix: '/p/' } }, /etcd\.endpoints: must be a non-empty array/],
    [{ etcd: { endpoints: ['127.0.0.1:2379'], prefix: '/p/' } }, /etcd\.endpoints\[0\]: must be an etcd client URL/],
    [{ etcd: { endpoints: ['http://127.0.0.1:2379'] } }, /etcd\.prefix: is required/],
    [{ etcd: { endpoints: ['http://127.0.0.1:2379'], prefix: '/p/', startTimout: 1 } }, /etcd\.startTimout: unknown option, did you mean `startTimeout`\?/],
    [{ upstreams: { a: { discovery: { type: 'etcd', endpoints: ['http://127.0.0.1:2379'] } } } }, /upstreams\.a\.discovery\.prefix: is required/],
    [{ routes: [{ prefix: '/x', upstream: 'nope' }] }, /routes\[0\]\.upstream: unknown pool or split "nope"/]
  ]
  for (const [options, message] of cases) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(fastifyUpstream, options as never).ready() }, { code: 'FST_UPSTREAM_INVALID_OPTION', message }, JSON.stringify(options))
    await app.close()
  }
})
