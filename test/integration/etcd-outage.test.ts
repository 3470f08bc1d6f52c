// etcd away: at start (the pools in code serve after startTimeout), and while serving (the
// last known state serves, one warning, a fresh read when etcd is back, after compaction too).
import Fastify from 'fastify'
import { test } from 'tap'
import fastifyUpstream from '../../lib/index'
import { etcdSkip, startEtcd } from '../etcd'
import { closedPort, listen, load, logCapture, settledResources, startUpstream, until } from '../helpers'

test('etcd unreachable at start: ready() waits startTimeout, then serves the pools in code and says so; etcd\'s pools follow when it comes', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  await etcd.stop()
  const code = await startUpstream(t, 'code')
  const remote = await startUpstream(t, 'remote')
  const { lines, stream } = logCapture()
  const app = Fastify({ logger: { stream, level: 'info' } })
  await app.register(fastifyUpstream, {
    etcd: { endpoints: etcd.endpoints, prefix: '/p/', startTimeout: 500, timeout: 200 },
    upstreams: { api: { targets: [code.url] } },
    routes: [{ prefix: '/api', upstream: 'api' }, { prefix: '/later', upstream: 'later' }]
  })
  const started = performance.now()
  const url = await listen(t, app)
  const waited = performance.now() - started
  t.ok(waited >= 450 && waited < 3000, `ready() waited about startTimeout (${Math.round(waited)} ms)`)
  t.ok(lines.some((line) => line.level === 40 && line.msg.startsWith('etcd did not answer in time: starting with the pools in code')), 'a warning')
  t.same(await load(`${url}/api/x`, 2, 1), { code: 2 }, 'the pools in code serve')
  await etcd.start()
  await etcd.put('/p/later', JSON.stringify({ targets: [remote.url] }))
  await until('etcd\'s pool arrived', () => app.upstreams.has('later'), 10_000)
  t.same(await load(`${url}/later/x`, 2, 1), { remote: 2 })
  t.ok(lines.some((line) => line.msg.startsWith('etcd is reachable again')), 'the end of the outage logged')
})

test('etcd lost while serving: the last known state serves, one warning per outage, and a fresh read when it is back', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  const a = await startUpstream(t, 'a')
  const b = await startUpstream(t, 'b')
  await etcd.put('/s/a', a.url)
  await etcd.put('/p/orders', JSON.stringify({ targets: [a.url] }))
  const { lines, stream } = logCapture()
  const app = Fastify({ logger: { stream, level: 'info' } })
  await app.register(fastifyUpstream, {
    etcd: { endpoints: etcd.endpoints, prefix: '/p/', timeout: 300 },
    upstreams: { api: { targets: [], discovery: { type: 'etcd', endpoints: etcd.endpoints, prefix: '/s/', timeout: 300 } } },
    routes: [{ prefix: '/api', upstream: 'api' }, { prefix: '/orders', upstream: 'orders' }]
  })
  const url = await listen(t, app)
  await etcd.stop()
  // a few seconds of outage: several reconnection attempts
  const failed: number[] = []
  const until3s = performance.now() + 3000
  while (performance.now() < until3s) {
    for (const path of ['/api/x', '/orders/x']) {
      const res = await fetch(url + path)
      if (res.status !== 200) failed.push(res.status)
      await res.arrayBuffer()
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.same(failed, [], 'every request served from the last known state')
  const outages = lines.filter((line) => line.msg.startsWith('etcd is unreachable'))
  t.equal(outages.length, 2, 'one warning per watch (targets, pools), not one per attempt')
  await etcd.start()
  // changed as soon as etcd is back: the fresh read, then the watch, bring it in
  await etcd.put('/s/b', b.url)
  await etcd.del('/s/a')
  await etcd.put('/p/orders', JSON.stringify({ targets: [b.url] }))
  await until('targets resynced', () => app.upstreams.get('api')?.targets.map((target) => target.url).join() === b.url, 10_000)
  await until('pools resynced', () => app.upstreams.get('orders')?.targets[0]?.url === b.url, 10_000)
  t.equal(lines.filter((line) => line.msg.startsWith('etcd is reachable again')).length, 2, 'the end of each outage logged once')
})

test('a member killed, changes and a compaction on the others: the watch moves and catches up from a fresh read', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t, { members: 3 })
  const ups = await Promise.all(['a', 'b', 'c'].map(async (name) => await startUpstream(t, name)))
  await etcd.put('/s/a', ups[0].url)
  const app = Fastify()
  // the watch is on the first endpoint's member
  await app.register(fastifyUpstream, {
    upstreams: { api: { targets: [], discovery: { type: 'etcd', endpoints: etcd.endpoints, prefix: '/s/', timeout: 300 } } }
  })
  await listen(t, app)
  await etcd.kill(etcd.members[0])
  await etcd.put('/s/b', ups[1].url)
  await etcd.put('/s/c', ups[2].url)
  await etcd.del('/s/a')
  await etcd.compact()
  await until('caught up', () => app.upstreams.get('api')?.targets.map((target) => target.url).sort().join() === [ups[1].url, ups[2].url].sort().join(), 10_000)
  t.pass('the changes made while its member was away reached the pool')
  await etcd.put('/s/a', ups[0].url)
  await until('and it watches on', () => app.upstreams.get('api')?.targets.length === 3, 5000)
})

test('app.close() leaves no watch, timer or socket of the etcd parts behind, with etcd up or down', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  for (const down of [false, true]) {
    if (down) await etcd.stop()
    const before = await settledResources()
    const app = Fastify()
    await app.register(fastifyUpstream, {
      etcd: { endpoints: etcd.endpoints, prefix: '/p/', startTimeout: 300, timeout: 200 },
      upstreams: { api: { targets: [await closedPort()], discovery: { type: 'etcd', endpoints: etcd.endpoints, prefix: '/s/', timeout: 200 } } }
    })
    await app.ready()
    await app.close()
    t.same(await settledResources(), before, `nothing left (etcd ${down ? 'down' : 'up'})`)
  }
})
