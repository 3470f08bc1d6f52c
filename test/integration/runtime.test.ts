import { test } from 'tap'
import { load, recorder, startGateway, startUpstream, startUpstreams } from '../helpers'

test('targets can be added, re-weighted, disabled and removed while serving', async (t) => {
  const ups = await startUpstreams(t, 3)
  const { events, hook } = recorder()
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [ups[0].url] } },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onTargetStateChange: hook
  })
  const pool = app.upstreams.get('pool')
  if (pool === undefined) throw new Error('no pool')

  t.same(await load(url, 20, 2), { u0: 20 })
  const added = pool.addTarget({ url: ups[1].url, weight: 3 })
  t.equal(added.state, 'healthy')
  t.same(await load(url, 40, 2), { u0: 10, u1: 30 })
  pool.setWeight(ups[1].url, 1)
  t.equal(pool.target(ups[1].url)?.weight, 1)
  t.same(await load(url, 40, 2), { u0: 20, u1: 20 })
  pool.setState(ups[0].url, 'disabled')
  t.equal(pool.target(ups[0].url)?.state, 'disabled')
  t.same(await load(url, 10, 2), { u1: 10 })
  pool.setState(ups[0].url, 'enabled')
  t.equal(pool.target(ups[0].url)?.state, 'healthy')
  await pool.removeTarget(ups[1].url)
  t.equal(pool.target(ups[1].url), undefined)
  t.match(events.slice(-2), [{ url: ups[1].url, from: 'healthy', to: 'draining' }, { url: ups[1].url, from: 'healthy', to: 'removed', reason: 'removed' }],
    'the removal is told as healthy -> draining, then healthy -> removed')
  t.same(await load(url, 10, 2), { u0: 10 })
  t.same(pool.targets.map((v) => v.url), [ups[0].url])

  t.throws(() => pool.addTarget(ups[0].url), { code: 'FST_UPSTREAM_DUPLICATE' })
  t.throws(() => pool.addTarget('ftp://x'), { code: 'FST_UPSTREAM_INVALID_OPTION' })
  t.throws(() => pool.setWeight(ups[0].url, 0), { code: 'FST_UPSTREAM_INVALID_OPTION' })
  t.throws(() => pool.setWeight(ups[2].url, 2), { code: 'FST_UPSTREAM_UNKNOWN_TARGET' })
  t.throws(() => pool.setState(ups[0].url, 'sleeping' as 'disabled'), { code: 'FST_UPSTREAM_INVALID_OPTION' })
  await t.rejects(pool.removeTarget(ups[2].url), { code: 'FST_UPSTREAM_UNKNOWN_TARGET' })
})

test('removing with drain waits for in-flight requests, which complete', async (t) => {
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  const slow = await startUpstream(t, 'slow', (_req, res) => { gate.then(() => res.end('done'), () => {}) })
  const other = await startUpstream(t, 'other')
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [slow.url] } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const pool = app.upstreams.get('pool')
  if (pool === undefined) throw new Error('no pool')
  const pending = fetch(`${url}/x`)
  for (let i = 0; i < 100 && slow.hits < 1; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  pool.addTarget(other.url)
  let drained = false
  const removal = pool.removeTarget(slow.url, { drain: true }).then(() => { drained = true })
  t.equal(pool.target(slow.url)?.state, 'draining')
  // new requests go elsewhere while the old one is still running
  t.same(await load(url, 5, 1), { other: 5 })
  t.equal(drained, false, 'still draining while a request is in flight')
  release()
  const res = await pending
  t.equal(res.status, 200)
  t.equal(await res.text(), 'done')
  await removal
  t.equal(drained, true)
  t.equal(pool.target(slow.url), undefined)
  t.equal(slow.hits, 1)
})

test('the registry adds and removes pools after ready, reports status and iterates', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { app, url } = await startGateway(t, { upstreams: {} }, (app) => {
    app.get('/orders/*', (_request, reply) => reply.forward('orders'))
  })
  t.equal((await fetch(`${url}/orders/1`)).status, 500)
  const pool = app.upstreams.add('orders', { targets: [up.url], balancer: 'least-request' })
  t.equal(app.upstreams.has('orders'), true)
  t.equal(app.upstreams.get('orders'), pool)
  t.equal((await fetch(`${url}/orders/1`)).status, 200)
  t.same([...app.upstreams].map((p) => p.name), ['orders'])
  t.same([...app.upstreams.keys()], ['orders'])
  const status = JSON.parse(JSON.stringify(app.upstreams.status()))
  t.match(status, {
    pools: {
      orders: {
        name: 'orders',
        balancer: 'least-request',
        available: 1,
        targets: [{ url: up.url, weight: 1, effectiveWeight: 1, backup: false, state: 'healthy', inflight: 0, requests: 1, failures: 0 }]
      }
    }
  })
  t.same(JSON.parse(JSON.stringify(pool.targets[0])), status.pools.orders.targets[0], 'a target view serialises to its status')
  t.throws(() => app.upstreams.add('orders', { targets: [] }), { code: 'FST_UPSTREAM_DUPLICATE' })
  t.throws(() => app.upstreams.add('bad', { targets: ['nope'] }), { code: 'FST_UPSTREAM_INVALID_OPTION', message: /upstreams\.bad\.targets\[0\]/ })
  await app.upstreams.remove('orders')
  t.equal(app.upstreams.has('orders'), false)
  t.equal((await fetch(`${url}/orders/1`)).status, 500)
  await t.rejects(app.upstreams.remove('orders'), { code: 'FST_UPSTREAM_UNKNOWN_POOL' })
  t.throws(() => pool.addTarget(up.url), { code: 'FST_UPSTREAM_UNKNOWN_POOL' }, 'a removed pool refuses changes')
})
