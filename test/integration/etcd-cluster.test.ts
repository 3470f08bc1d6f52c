// Three gateway instances sharing pools and targets through a three-member etcd cluster:
// how fast they agree, what a leader's death costs, and consistent hashing across them.
import Fastify, { type FastifyInstance } from 'fastify'
import { test } from 'tap'
import fastifyUpstream from '../../lib/index'
import { etcdSkip, startEtcd, type EtcdCluster } from '../etcd'
import { drive, listen, startUpstreams, until, type Teardown } from '../helpers'

/** Three instances, each first talking to another member. */
async function instances (t: Teardown, etcd: EtcdCluster, balancer?: unknown): Promise<Array<{ app: FastifyInstance, url: string }>> {
  return await Promise.all([0, 1, 2].map(async (i) => {
    const endpoints = [...etcd.endpoints.slice(i), ...etcd.endpoints.slice(0, i)]
    const app = Fastify()
    await app.register(fastifyUpstream, {
      etcd: { endpoints, prefix: '/pools/' },
      upstreams: { api: { targets: [], discovery: { type: 'etcd', endpoints, prefix: '/api/' }, ...(balancer === undefined ? {} : { balancer }) } as never },
      routes: [{ prefix: '/api', upstream: 'api' }]
    })
    return { app, url: await listen(t, app) }
  }))
}

/** ms from `change` (awaited) until every instance says `done`: polled on every turn of the event loop. */
async function converge (apps: FastifyInstance[], change: () => Promise<unknown>, done: (app: FastifyInstance) => boolean): Promise<number> {
  const start = performance.now()
  await change()
  while (!apps.every(done)) {
    if (performance.now() - start > 5000) throw new Error('no convergence within 5 s')
    await new Promise((resolve) => setImmediate(resolve))
  }
  return performance.now() - start
}

function p99 (times: number[]): number {
  const sorted = [...times].sort((a, b) => a - b)
  return sorted[Math.ceil(sorted.length * 0.99) - 1]
}

test('every instance applies a change within 25 ms (p99 over 50 changes of each kind)', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t, { members: 3 })
  const ups = await startUpstreams(t, 3)
  const apps = (await instances(t, etcd)).map((instance) => instance.app)
  const target = (i: number): string => `http://127.0.0.1:${20100 + i}`
  const kinds: Record<string, number[]> = { 'target added': [], 'target re-weighted': [], 'target removed': [], 'pool added': [], 'pool changed': [], 'pool removed': [] }
  // five rounds first, not measured: the first changes compile code and open connections
  for (let i = -5; i < 50; i++) {
    if (i === 0) for (const times of Object.values(kinds)) times.length = 0
    const key = `/api/t${i}`
    kinds['target added'].push(await converge(apps, async () => await etcd.put(key, target(i)), (app) => app.upstreams.get('api')?.target(target(i)) !== undefined))
    kinds['target re-weighted'].push(await converge(apps, async () => await etcd.put(key, JSON.stringify({ url: target(i), weight: 7 })), (app) => app.upstreams.get('api')?.target(target(i))?.weight === 7))
    kinds['target removed'].push(await converge(apps, async () => await etcd.del(key), (app) => app.upstreams.get('api')?.target(target(i)) === undefined))
    const pool = `/pools/p${i}`
    kinds['pool added'].push(await converge(apps, async () => await etcd.put(pool, JSON.stringify({ targets: [ups[0].url] })), (app) => app.upstreams.has(`p${i}`)))
    kinds['pool changed'].push(await converge(apps, async () => await etcd.put(pool, JSON.stringify({ targets: [ups[1].url] })), (app) => app.upstreams.get(`p${i}`)?.targets[0]?.url === ups[1].url))
    kinds['pool removed'].push(await converge(apps, async () => await etcd.del(pool), (app) => !app.upstreams.has(`p${i}`)))
  }
  for (const [kind, times] of Object.entries(kinds)) {
    t.ok(p99(times) <= 25, `${kind}: p99 ${p99(times).toFixed(1)} ms (median ${[...times].sort((a, b) => a - b)[25].toFixed(1)} ms)`)
  }
})

test('the etcd leader killed under load: no request fails, and the instances go on converging with the new leader', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t, { members: 3 })
  const ups = await startUpstreams(t, 3)
  await etcd.put('/api/a', ups[0].url)
  await etcd.put('/api/b', ups[1].url)
  const gateways = await instances(t, etcd)
  const apps = gateways.map((gateway) => gateway.app)
  await until('all have both targets', () => apps.every((app) => app.upstreams.get('api')?.targets.length === 2))
  const leader = await etcd.leader()
  const loads = gateways.map(async (gateway) => await drive(`${gateway.url}/api/x`, 1500, 4))
  await new Promise((resolve) => setTimeout(resolve, 100))
  await etcd.kill(leader)
  const counts = await Promise.all(loads)
  for (const [i, count] of counts.entries()) {
    t.same(Object.keys(count).filter((name) => name.startsWith('status-')), [], `instance ${i}: every request answered by a target (${JSON.stringify(count)})`)
  }
  const next = await etcd.leader()
  t.not(next.name, leader.name, 'a new leader')
  const time = await converge(apps, async () => await etcd.put('/api/c', ups[2].url), (app) => app.upstreams.get('api')?.target(ups[2].url) !== undefined)
  t.ok(time < 5000, `a change after the election reached every instance (${time.toFixed(1)} ms)`)
})

test('consistent hashing agrees across the instances for 10,000 keys, whatever order the targets came in', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t, { members: 3 })
  const urls = Array.from({ length: 6 }, (_, i) => `http://127.0.0.1:${21000 + i}`)
  // the first instance learns of the targets one by one, in this order (keys in reverse)...
  const first = await instances(t, etcd, { type: 'consistent-hash', key: 'header:x-user' })
  for (let i = urls.length - 1; i >= 0; i--) await etcd.put(`/api/${String.fromCharCode(97 + i)}`, urls[i])
  // ...a later one reads them all at once, in key order
  const later = await instances(t, etcd, { type: 'consistent-hash', key: 'header:x-user' })
  const apps = [...first, ...later].map((instance) => instance.app)
  await until('every instance has the six', () => apps.every((app) => app.upstreams.get('api')?.targets.length === 6))
  t.not(apps[0].upstreams.get('api')?.targets.map((target) => target.url).join(), apps[3].upstreams.get('api')?.targets.map((target) => target.url).join(), 'the targets arrived in different orders')
  let agree = 0
  for (let i = 0; i < 10_000; i++) {
    const request = { url: '/', headers: { 'x-user': `user-${i}` } }
    const picks = apps.map((app) => app.upstreams.get('api')?.select(request)?.url)
    if (picks[0] !== undefined && picks.every((pick) => pick === picks[0])) agree++
  }
  t.equal(agree, 10_000, 'every key goes to the same target on every instance')
})
