import { test } from 'tap'
import type { Pool as UndiciPool } from 'undici'
import type { UpstreamPool } from '../../lib/upstream/api'
import { TargetConnections } from '../../lib/upstream/connections'
import { internalPool, type Pool } from '../../lib/upstream/pool'
import { Target } from '../../lib/upstream/target'
import { delayed, load, resources, settledResources, sleep, startGateway, startUpstream, startUpstreams, until, type Upstream } from '../helpers'

/** Counts the connections each upstream server accepts. */
function countSockets (ups: Upstream[]): Map<string, number> {
  const sockets = new Map<string, number>()
  for (const up of ups) {
    sockets.set(up.name, 0)
    up.server.on('connection', () => { sockets.set(up.name, (sockets.get(up.name) as number) + 1) })
  }
  return sockets
}

function internal (api: UpstreamPool | undefined): Pool {
  const pool = api === undefined ? undefined : internalPool(api)
  if (pool === undefined) throw new Error('no pool')
  return pool
}

function targetOf (pool: Pool, url: string): Target {
  const target = pool.targetList.find((t) => t.url === url)
  if (target === undefined) throw new Error(`no target ${url}`)
  return target
}

/** The sweep timer of a pool's connections (private: read here only to prove it stops). */
function sweeper (connections: TargetConnections): unknown {
  return (connections as unknown as { sweeper: unknown }).sweeper
}

test('no connection pool is made until a target gets a request', async (t) => {
  const ups = await startUpstreams(t, 20)
  const sockets = countSockets(ups)
  // and 1,000 targets where nothing listens, which never get a request
  const idle = Array.from({ length: 1000 }, (_, i) => `http://127.0.0.2:${20000 + i}`)
  const { app, url } = await startGateway(t, {
    upstreams: {
      live: { targets: ups.map((u) => u.url), balancer: 'round-robin' },
      idle: { targets: idle }
    },
    routes: [{ prefix: '/', upstream: 'live' }]
  })
  const live = internal(app.upstreams.get('live'))
  const idlePool = internal(app.upstreams.get('idle'))

  t.equal(live.targetList.filter((target) => target.connection !== undefined).length, 0, 'no target of the live pool has a connection pool')
  t.equal(idlePool.targetList.filter((target) => target.connection !== undefined).length, 0, 'no target of the idle pool has one')
  t.equal(live.connections.size + idlePool.connections.size, 0, 'none was made')
  t.equal(sweeper(idlePool.connections), undefined, 'no sweep timer without a connection pool')
  t.same([...sockets.values()].reduce((a, b) => a + b, 0), 0, 'no upstream server saw a connection')

  const first = await fetch(`${url}/x`)
  const name = first.headers.get('x-upstream')
  await first.arrayBuffer()
  const used = live.targetList.filter((target) => target.connection !== undefined)
  t.same(used.map((target) => target.url), [ups.find((u) => u.name === name)?.url], 'only the target that got the request has a connection pool')
  t.equal(live.connections.size, 1)
  t.not(sweeper(live.connections), undefined, 'the sweep runs while a connection pool exists')
  t.same([...sockets.entries()].filter(([, n]) => n > 0), [[name, 1]], 'and only its server saw a connection')

  const counts = await load(`${url}/x`, 39, 1)
  t.equal(Object.keys(counts).length, 20, 'every live target answered')
  t.equal(live.targetList.filter((target) => target.connection !== undefined).length, 20, 'each has its connection pool now')
  t.equal(live.connections.size, 20)
  t.same([...sockets.values()], ups.map(() => 1), 'one keep-alive connection per server, reused')
  t.equal(idlePool.connections.size, 0, 'the idle pool still has none')
})

test('targets on one origin share one connection pool until the last leaves', async (t) => {
  const up = await startUpstream(t, 'u0')
  const sockets = countSockets([up])
  const a = `${up.url}/a`
  const b = `${up.url}/b`
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [a, b], balancer: 'round-robin' } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const pool = internal(app.upstreams.get('pool'))
  const [ta, tb] = [targetOf(pool, a), targetOf(pool, b)]

  const res = await fetch(`${url}/x`)
  await res.arrayBuffer()
  t.not(ta.connection ?? tb.connection, undefined, 'the first request made the pool')
  t.equal(ta.connection, tb.connection, 'both targets have it, though one had no request')
  t.equal(pool.connections.size, 1)
  const shared = ta.connection as UndiciPool
  t.same(await load(`${url}/x`, 4, 1), { u0: 4 })
  t.equal(sockets.get('u0'), 1, 'one connection for both targets')

  await app.upstreams.get('pool')?.removeTarget(a)
  t.equal(shared.closed, false, 'the pool stays open while a target uses it')
  t.equal(tb.connection, shared)
  t.same(await load(`${url}/x`, 2, 1), { u0: 2 })
  t.equal(up.last?.url, '/b/x')
  t.equal(sockets.get('u0'), 1, 'the same connection serves the remaining target')
  await app.upstreams.get('pool')?.removeTarget(b)
  t.equal(shared.closed, true, 'the last target to leave closes it')
  t.equal(pool.connections.size, 0)
  t.equal(sweeper(pool.connections), undefined, 'and the sweep stops')
})

test('an idle connection pool is closed by the sweep, and the next request makes a new one', async (t) => {
  const ups = await startUpstreams(t, 2)
  const sockets = countSockets(ups)
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [ups[0].url, ups[1].url], balancer: 'round-robin' } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const pool = internal(app.upstreams.get('pool'))
  const [t0, t1] = [targetOf(pool, ups[0].url), targetOf(pool, ups[1].url)]
  t.same(await load(`${url}/x`, 2, 1), { u0: 1, u1: 1 })
  const before = t0.connection as UndiciPool
  t.equal(pool.connections.size, 2)

  // while its keep-alive connection is open a pool stays, however long it has been quiet
  pool.connections.sweep()
  pool.connections.sweep()
  t.equal(t0.connection, before, 'kept while a connection is open')
  t.equal(pool.connections.size, 2)

  // the servers end the keep-alive connections (as their keep-alive timeout would)
  const closeIdle = async (): Promise<void> => {
    for (const up of ups) up.server.closeIdleConnections()
    await until('the keep-alive connections to close', () => before.stats.connected === 0 && (t1.connection as UndiciPool).stats.connected === 0)
  }
  await closeIdle()
  // a request since the last sweep keeps a pool for another round
  t.same(await load(`${url}/x`, 2, 1), { u0: 1, u1: 1 })
  await closeIdle()
  pool.connections.sweep()
  t.equal(t0.connection, before, 'a request since the last sweep keeps the pool')
  pool.connections.sweep()
  t.equal(t0.connection, undefined, 'no request and no connection for a whole sweep period: dropped')
  t.equal(t1.connection, undefined)
  t.equal(pool.connections.size, 0)
  t.equal(sweeper(pool.connections), undefined, 'the sweep stops with the last pool')
  await until('the dropped pool to close', () => before.closed)

  t.same(await load(`${url}/x`, 4, 1), { u0: 2, u1: 2 }, 'requests after the sweep are answered')
  t.not(t0.connection, undefined)
  t.not(t0.connection, before, 'through a new connection pool')
  t.equal(pool.connections.size, 2)
  t.same([...sockets.values()], [3, 3], 'each request after a keep-alive close opened a new connection')
})

test('a slow request keeps its pool through sweeps, and drain waits for it', async (t) => {
  const slow = await startUpstream(t, 'slow', delayed(300))
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [slow.url] } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const api = app.upstreams.get('pool') as UpstreamPool
  const pool = internal(api)
  const target = targetOf(pool, slow.url)

  const pending = fetch(`${url}/x`).then(async (res) => ({ status: res.status, body: await res.text() }))
  await until('the request to reach the target', () => slow.hits === 1 && target.inflight === 1 && target.connection !== undefined)
  const connection = target.connection as UndiciPool
  pool.connections.sweep()
  pool.connections.sweep()
  t.equal(target.connection, connection, 'a pool with a request in flight is not dropped')

  let drained = false
  const removal = api.removeTarget(slow.url, { drain: true }).then(() => { drained = true })
  await sleep(100)
  t.equal(drained, false, 'still draining while the request is in flight')
  t.equal(connection.closed, false, 'its connection pool is open')
  t.same(await pending, { status: 200, body: 'slow' }, 'the in-flight request completes')
  await removal
  t.equal(connection.closed, true, 'the connection pool closed after it')
  t.equal(target.connection, undefined)
  t.equal(pool.connections.size, 0)
  t.equal((await fetch(`${url}/x`)).status, 503, 'no target left')
})

test('app.close() leaves no timer, socket or connection pool behind', async (t) => {
  const ups = await startUpstreams(t, 4)
  const before = await settledResources()
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: { targets: ups.map((u) => u.url), keepAliveTimeout: 60_000 },
      idle: { targets: Array.from({ length: 100 }, (_, i) => `http://127.0.0.3:${30000 + i}`) }
    },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  t.same(await load(`${url}/x`, 40, 4), { u0: 10, u1: 10, u2: 10, u3: 10 })
  const pool = internal(app.upstreams.get('pool'))
  const pools = pool.targetList.map((target) => target.connection as UndiciPool)
  t.equal(pool.connections.size, 4)
  t.ok(resources().length > before.length, 'the gateway holds sockets while open')
  await app.close()
  t.equal(pools.filter((p) => !p.destroyed).length, 0, 'every connection pool destroyed')
  t.equal(pool.connections.size, 0)
  t.equal(sweeper(pool.connections), undefined, 'no sweep timer')
  t.equal(pool.targetList.filter((target) => target.connection !== undefined).length, 0, 'no target keeps a pool')
  for (let i = 0; i < 50 && resources().length > before.length; i++) await sleep(20)
  t.same(resources(), before, 'the same resources as before the gateway started')
  await Promise.all(ups.map((u) => u.close()))
})

test('the sweep runs on its own timer, unref\'d, while connection pools exist', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { app } = await startGateway(t, { upstreams: { pool: { targets: [up.url] } } })
  const config = internal(app.upstreams.get('pool')).config
  const connections = new TargetConnections(config, 50)
  const target = new Target({ url: up.url, weight: 1, backup: false })
  connections.acquire(target)
  t.equal(target.connection, undefined)
  const pool = connections.connect(target) as UndiciPool
  t.equal(target.connection, pool, 'made on first use')
  const timer = sweeper(connections) as NodeJS.Timeout
  t.equal(timer.hasRef(), false, 'the sweep timer does not hold the process open')
  target.start()
  const res = await pool.request({ path: '/', method: 'GET' })
  await res.body.dump()
  target.finish()
  await sleep(200)
  t.equal(target.connection, pool, 'kept while its keep-alive connection is open')
  up.server.closeIdleConnections()
  await until('the idle pool to be dropped', () => target.connection === undefined, 2000)
  t.equal(sweeper(connections), undefined, 'the timer stops with the last pool')
  await until('the dropped pool to close', () => pool.closed)
  t.not(connections.connect(target), pool, 'a new pool on the next use')
  t.not(sweeper(connections), undefined, 'and the sweep again')
  await connections.release(target)
  t.equal(sweeper(connections), undefined)
  t.equal(connections.connect(target), undefined, 'a target that left gets no pool')
  await connections.close(true)
})
