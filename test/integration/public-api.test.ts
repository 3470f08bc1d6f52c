import Fastify from 'fastify'
import { test } from 'tap'
import fastifyUpstream from '../../lib/index'

// What `app.upstreams` and a pool offer is what the README documents, from JavaScript too:
// the plugin's own classes and their state are out of reach.

const POOL_MEMBERS = ['addTarget', 'name', 'removeTarget', 'select', 'setState', 'setWeight', 'status', 'target', 'targets']
const REGISTRY_MEMBERS = ['add', 'get', 'has', 'keys', 'remove', 'size', 'split', 'status']
const SPLIT_MEMBERS = ['name', 'setWeights', 'status', 'weights']

test('a pool and the registry have exactly the README members, frozen', async (t) => {
  const app = Fastify()
  await app.register(fastifyUpstream, { upstreams: { users: { targets: ['http://127.0.0.1:1'] } } })
  await app.ready()
  t.teardown(() => app.close())
  const pool = app.upstreams.get('users') as unknown as Record<string | symbol, unknown>
  t.same(Reflect.ownKeys(pool).sort(), POOL_MEMBERS)
  t.same(Reflect.ownKeys(app.upstreams).filter((k) => typeof k === 'string').sort(), REGISTRY_MEMBERS)
  t.same(Reflect.ownKeys(app.upstreams).filter((k) => typeof k === 'symbol'), [Symbol.iterator])
  for (const name of ['panic', 'retriesInFlight', 'targetList', 'transition', 'refresh', 'start', 'close', 'pick', 'isFull', 'config', 'connections', 'detector', 'headers']) {
    t.equal(pool[name], undefined, `pool.${name} is not reachable`)
  }
  t.equal((app.upstreams as unknown as Record<string, unknown>).start, undefined, 'app.upstreams.start is not reachable')
  t.equal((app.upstreams as unknown as Record<string, unknown>).close, undefined, 'app.upstreams.close is not reachable')
  t.ok(Object.isFrozen(pool) && Object.isFrozen(app.upstreams), 'nothing can be added or replaced')
  t.throws(() => { 'use strict'; pool.panic = true }, TypeError)
  const view = (pool.targets as Array<Record<string, unknown>>)[0]
  t.throws(() => { view.inflight = -1 }, TypeError, 'target views are read-only')
  // the same face every time, and from iteration
  t.equal(app.upstreams.get('users'), pool)
  t.same([...app.upstreams], [pool])
  t.equal(app.upstreams.add('orders', { targets: [] }), app.upstreams.get('orders'))
})

test('a split has exactly the README members, frozen, and the same face every time', async (t) => {
  const app = Fastify()
  await app.register(fastifyUpstream, { upstreams: { users: { targets: ['http://127.0.0.1:1'] } }, splits: { s: { branches: [{ pool: 'users' }] } } })
  await app.ready()
  t.teardown(() => app.close())
  const split = app.upstreams.split('s') as unknown as Record<string | symbol, unknown>
  t.same(Reflect.ownKeys(split).sort(), SPLIT_MEMBERS)
  t.ok(Object.isFrozen(split))
  t.equal(app.upstreams.split('s'), split)
  for (const name of ['branches', 'choose', 'fallbackFor', 'total']) t.equal(split[name], undefined, `split.${name} is not reachable`)
})
