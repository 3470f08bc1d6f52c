// A pool's targets from etcd (discovery type 'etcd'), and targets that register themselves
// with a lease (registerTarget), against a real etcd.
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import Fastify from 'fastify'
import { test } from 'tap'
import fastifyUpstream, { registerTarget } from '../../lib/index'
import { etcdSkip, etcdTlsSkip, startEtcd } from '../etcd'
import { listen, load, logCapture, sleep, startGateway, startUpstream, startUpstreams, until } from '../helpers'

const prefix = '/services/api/'

test('targets come and go with their keys: a URL or JSON; re-weighted; removed ones drained; a bad value left out with a warning', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  const ups = await startUpstreams(t, 3)
  await etcd.put(prefix + 'a', ups[0].url)
  const { lines, stream } = logCapture()
  const app = Fastify({ logger: { stream, level: 'info' } })
  await app.register(fastifyUpstream, {
    upstreams: { api: { targets: [], discovery: { type: 'etcd', endpoints: etcd.endpoints, prefix } } },
    routes: [{ prefix: '/', upstream: 'api' }]
  })
  const url = await listen(t, app)
  const pool = app.upstreams.get('api')
  if (pool === undefined) throw new Error('no pool')
  t.same(pool.targets.map((target) => target.url), [ups[0].url], 'the key read at start is a target before the app serves')
  t.same(await load(`${url}/x`, 4, 1), { u0: 4 })

  await etcd.put(prefix + 'b', JSON.stringify({ url: ups[1].url, weight: 3 }))
  await until('b added', () => pool.target(ups[1].url) !== undefined)
  t.equal(pool.target(ups[1].url)?.weight, 3, 'the weight the JSON gives')
  t.same(await load(`${url}/x`, 8, 1), { u0: 2, u1: 6 }, 'balanced by weight')

  await etcd.put(prefix + 'b', JSON.stringify({ url: ups[1].url, weight: 1 }))
  await until('b re-weighted', () => pool.target(ups[1].url)?.weight === 1)

  await etcd.put(prefix + 'bad', 'ftp://nowhere')
  await etcd.put(prefix + 'worse', '{"url":')
  await until('both warned', () => lines.filter((line) => String(line.msg).startsWith('etcd key ignored')).length === 2)
  t.same(pool.targets.map((target) => target.url).sort(), [ups[0].url, ups[1].url].sort(), 'no target from a bad value, the others kept')
  const warning = lines.find((line) => line.msg === 'etcd key ignored: its value is no valid target') as unknown as { key: string, reason: string }
  t.equal(warning.key, prefix + 'bad', 'the warning names the key')
  t.match(warning.reason, /must be an http\(s\) URL/, 'and what is wrong')

  // a slow request holds the target while its key goes: it is drained, not cut
  const slow = await startUpstream(t, 'slow', (_req, res) => { setTimeout(() => res.end('late'), 300) })
  await etcd.put(prefix + 'slow', slow.url)
  await until('slow added', () => pool.target(slow.url) !== undefined)
  await etcd.del(prefix + 'a')
  await etcd.del(prefix + 'b')
  await until('a and b gone', () => pool.targets.length === 1)
  const pending = fetch(`${url}/x`)
  await until('the slow request is in flight', () => pool.target(slow.url)?.inflight === 1)
  await etcd.del(prefix + 'slow')
  await until('slow draining', () => pool.target(slow.url)?.state === 'draining')
  const res = await pending
  t.equal(await res.text(), 'late', 'the request in flight finished on the drained target')
  await until('slow removed', () => pool.targets.length === 0)
})

test('with active checks, a target from etcd takes no request before its first probe passes', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  const good = await startUpstream(t, 'good')
  let healthy = false
  const late = await startUpstream(t, 'late', (req, res) => {
    if (req.url === '/health') res.statusCode = healthy ? 200 : 503
    res.setHeader('x-upstream', 'late')
    res.end('late')
  })
  await etcd.put(prefix + 'good', good.url)
  const { app, url } = await startGateway(t, {
    upstreams: {
      api: {
        targets: [],
        discovery: { type: 'etcd', endpoints: etcd.endpoints, prefix },
        healthCheck: { active: { path: '/health', interval: 100, healthyThreshold: 1, unhealthyThreshold: 1 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'api' }]
  })
  const pool = app.upstreams.get('api')
  await etcd.put(prefix + 'late', late.url)
  await until('late added', () => pool?.target(late.url) !== undefined)
  t.not(pool?.target(late.url)?.state, 'healthy', 'not healthy before a probe passed')
  t.same(await load(`${url}/x`, 10, 2), { good: 10 }, 'no request to it meanwhile')
  healthy = true
  await until('late healthy', () => pool?.target(late.url)?.state === 'healthy')
  const counts = await load(`${url}/x`, 10, 1)
  t.ok((counts.late ?? 0) > 0, 'then it takes its share')
})

test('registerTarget puts the target under a lease, close() removes it at once', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  const up = await startUpstream(t, 'self')
  const { app, url } = await startGateway(t, {
    upstreams: { api: { targets: [], discovery: { type: 'etcd', endpoints: etcd.endpoints, prefix } } },
    routes: [{ prefix: '/', upstream: 'api' }]
  })
  const registration = await registerTarget({ endpoints: etcd.endpoints, prefix, url: up.url, ttl: 2, weight: 2 })
  t.equal(registration.key, prefix + encodeURIComponent(up.url))
  t.same(JSON.parse(await etcd.get(registration.key) as string), { url: up.url, weight: 2, backup: false })
  await until('registered', () => app.upstreams.get('api')?.target(up.url) !== undefined)
  t.same(await load(`${url}/x`, 3, 1), { self: 3 })
  // it outlives its TTL while the process renews it
  await sleep(3000)
  t.ok(await etcd.get(registration.key), 'still there after more than its TTL')
  const closing = performance.now()
  await registration.close()
  await until('gone from the pool', () => app.upstreams.get('api')?.targets.length === 0)
  t.ok(performance.now() - closing < 1000, 'at once, not when the lease runs out')
  t.equal(await etcd.get(registration.key), undefined)
  await registration.close()
  await t.rejects(registerTarget({ endpoints: etcd.endpoints, prefix, url: 'ftp://x' }), { code: 'FST_UPSTREAM_INVALID_OPTION' })
  await t.rejects(registerTarget({ endpoints: etcd.endpoints, prefix, url: up.url, ttl: 0 }), /ttl/)
})

test('a target that dies without deregistering leaves the pool within its TTL + 1 s', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  const up = await startUpstream(t, 'doomed')
  const { app } = await startGateway(t, {
    upstreams: { api: { targets: [], discovery: { type: 'etcd', endpoints: etcd.endpoints, prefix } } },
    routes: [{ prefix: '/', upstream: 'api' }]
  })
  // the target's own process registers it, then is killed: nothing revokes its lease
  const entry = join(__dirname, '..', '..', 'dist', 'index.js')
  const child = spawn(process.execPath, ['-e', `
    require(${JSON.stringify(entry)}).registerTarget({ endpoints: ${JSON.stringify(etcd.endpoints)}, prefix: ${JSON.stringify(prefix)}, url: ${JSON.stringify(up.url)}, ttl: 2 })
      .then(() => { console.log('registered'); setInterval(() => {}, 1000) })
  `], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { child.kill('SIGKILL') })
  await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()))
  await until('registered', () => app.upstreams.get('api')?.target(up.url) !== undefined)
  await sleep(2500)
  t.ok(app.upstreams.get('api')?.target(up.url), 'kept alive past its TTL by the process')
  const killed = performance.now()
  child.kill('SIGKILL')
  await until('gone', () => app.upstreams.get('api')?.target(up.url) === undefined, 10_000)
  const gone = performance.now() - killed
  // etcd grants at least 1.5 election timeouts; the TTL asked for is 2 s
  t.ok(gone <= 3000, `gone ${Math.round(gone)} ms after the process died (TTL 2 s + 1 s)`)
})

test('etcd with user/password auth and mutual TLS', { skip: etcdTlsSkip }, async (t) => {
  const etcd = await startEtcd(t, { auth: true, tls: true })
  const up = await startUpstream(t, 'secure')
  const connection = { endpoints: etcd.endpoints, ...etcd.credentials, tls: etcd.tls }
  const registration = await registerTarget({ ...connection, prefix, url: up.url, ttl: 5 })
  t.teardown(() => registration.close())
  const { app, url } = await startGateway(t, {
    upstreams: { api: { targets: [], discovery: { type: 'etcd', ...connection, prefix } } },
    routes: [{ prefix: '/', upstream: 'api' }]
  })
  t.same(app.upstreams.get('api')?.targets.map((target) => target.url), [up.url])
  t.same(await load(`${url}/x`, 2, 1), { secure: 2 })
  // without the password, or without the client certificate, nothing is read
  const { lines, stream } = logCapture()
  const denied = Fastify({ logger: { stream, level: 'warn' } })
  await denied.register(fastifyUpstream, {
    upstreams: { api: { targets: [], discovery: { type: 'etcd', endpoints: etcd.endpoints, username: 'gateway', password: 'wrong', tls: etcd.tls, prefix } } }
  })
  t.teardown(() => denied.close())
  await denied.ready()
  t.same(denied.upstreams.get('api')?.targets, [], 'no target with a wrong password')
  t.ok(lines.some((line) => line.msg.startsWith('upstream discovery failed') || line.msg.startsWith('etcd is unreachable')), 'and a warning')
})

test('a key put back while its target drains brings the target back after the drain; backup follows the value', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  const main = await startUpstream(t, 'main')
  const slow = await startUpstream(t, 'slow', (_req, res) => { setTimeout(() => { res.setHeader('x-upstream', 'slow'); res.end() }, 400) })
  await etcd.put(prefix + 'main', main.url)
  await etcd.put(prefix + 'slow', slow.url)
  const { app, url } = await startGateway(t, {
    upstreams: { api: { targets: [], discovery: { type: 'etcd', endpoints: etcd.endpoints, prefix } } },
    routes: [{ prefix: '/', upstream: 'api' }]
  })
  const pool = app.upstreams.get('api')
  if (pool === undefined) throw new Error('no pool')
  // a request in flight on `slow`, then its key deleted and put back (a lease that lapsed and was renewed)
  // round robin: of two requests, one goes to each
  const pending = [fetch(`${url}/x`), fetch(`${url}/x`)]
  await until('one in flight on slow', () => pool.target(slow.url)?.inflight === 1)
  await etcd.del(prefix + 'slow')
  await until('draining', () => pool.target(slow.url)?.state === 'draining')
  await etcd.put(prefix + 'slow', slow.url)
  const answered = await Promise.all(pending.map(async (res) => (await res).headers.get('x-upstream')))
  t.same(answered.sort(), ['main', 'slow'], 'the request in flight finished on the draining target')
  await until('back after its drain', () => pool.target(slow.url)?.state === 'healthy')

  await etcd.put(prefix + 'slow', JSON.stringify({ url: slow.url, backup: true }))
  await until('a backup', () => pool.target(slow.url)?.backup === true)
  t.same(await load(`${url}/x`, 4, 2), { main: 4 }, 'a backup takes nothing while the primary can')
  await etcd.put(prefix + 'slow', JSON.stringify({ url: slow.url, backup: false }))
  await until('a primary again', () => pool.target(slow.url)?.backup === false)
  await etcd.put(prefix + 'slow', 'not a url')
  await sleep(100)
  t.ok(pool.target(slow.url), 'a bad value keeps the key\'s last valid target')
})

test('with auth, a first endpoint that is down: the login and the calls go to the next member', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t, { members: 3, auth: true })
  const up = await startUpstream(t, 'up')
  await etcd.kill(etcd.members[0])
  const connection = { endpoints: etcd.endpoints, ...etcd.credentials, timeout: 500 }
  const registration = await registerTarget({ ...connection, prefix, url: up.url, ttl: 5 })
  t.teardown(() => registration.close())
  const { app } = await startGateway(t, {
    upstreams: { api: { targets: [], discovery: { type: 'etcd', ...connection, prefix } } }
  })
  t.same(app.upstreams.get('api')?.targets.map((target) => target.url), [up.url], 'read through a live member')
})

test('a key naming a target the pool cannot take (https in an h2c pool) is left out with a warning; later keys still apply', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  const { lines, stream } = logCapture()
  const app = Fastify({ logger: { stream, level: 'warn' } })
  await app.register(fastifyUpstream, {
    upstreams: { api: { targets: [], http2: 'h2c', discovery: { type: 'etcd', endpoints: etcd.endpoints, prefix } } }
  })
  await listen(t, app)
  await etcd.put(prefix + 'tls', 'https://127.0.0.1:4431')
  await until('warned', () => lines.some((line) => line.msg === 'upstream discovery: a target the pool cannot take is left out'))
  await etcd.put(prefix + 'plain', 'http://127.0.0.1:4432')
  await until('the next key applied', () => app.upstreams.get('api')?.target('http://127.0.0.1:4432') !== undefined)
  t.same(app.upstreams.get('api')?.targets.map((target) => target.url), ['http://127.0.0.1:4432'])
  t.notOk(lines.some((line) => line.msg.startsWith('etcd is unreachable')), 'no outage made of it')
})
