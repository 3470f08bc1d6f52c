import http from 'node:http'
import { test } from 'tap'
import type { TargetStateEvent } from '../../lib/index'
import { startDnsServer } from '../dns-server'
import { load, startGateway, startUpstream, startUpstreams, within } from '../helpers'

test('dns discovery: A records become targets; added, changed and removed records follow; a dead resolver keeps the last targets', async (t) => {
  const dns = await startDnsServer(t)
  // the same port on two loopback addresses: DNS names addresses, the port is the pool's
  const up = await startUpstream(t, 'u0')
  const twin = http.createServer((_req, res) => { res.setHeader('x-upstream', 'u0-twin'); res.end('twin') })
  await new Promise<void>((resolve, reject) => { twin.once('error', reject); twin.listen(up.port, '127.0.0.2', resolve) })
  t.teardown(() => { twin.closeAllConnections(); twin.close() })
  dns.records.set('api.test', { A: ['127.0.0.1'] })
  dns.ttl = 1
  const events: TargetStateEvent[] = []
  const { app, url } = await startGateway(t, {
    upstreams: {
      api: { targets: [], discovery: { type: 'dns', hostname: 'api.test', port: up.port, servers: [dns.address], interval: 200, timeout: 300 } }
    },
    routes: [{ prefix: '/', upstream: 'api' }],
    onTargetStateChange: (event) => events.push(event)
  })
  const pool = app.upstreams.get('api')
  if (pool === undefined) throw new Error('no pool')
  t.same(pool.targets.map((v) => v.url), [`http://127.0.0.1:${up.port}`], 'the first lookup ran before the app served')
  t.same(await load(`${url}/x`, 5, 1), { u0: 5 })

  // a new record appears, then the old one goes
  dns.records.set('api.test', { A: ['127.0.0.1', '127.0.0.2'] })
  t.ok(await within(() => pool.targets.length === 2), 'a new address became a target')
  t.equal(pool.target(`http://127.0.0.2:${up.port}`)?.state, 'healthy')
  dns.records.set('api.test', { A: ['127.0.0.2'] })
  t.ok(await within(() => pool.targets.length === 1), 'a vanished address was drained away')
  t.same(pool.targets.map((v) => v.url), [`http://127.0.0.2:${up.port}`])
  t.ok(events.some((e) => e.target.url === `http://127.0.0.1:${up.port}` && e.to === 'draining'))

  // the resolver dies: the last known target keeps serving
  dns.down = true
  const before = dns.queries
  t.ok(await within(() => dns.queries > before + 1, 5000), 'lookups go on')
  await new Promise((resolve) => setTimeout(resolve, 700))
  t.same(pool.targets.map((v) => v.url), [`http://127.0.0.2:${up.port}`], 'the last known target stays')
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 200)
  t.equal(await res.text(), 'twin')
  dns.down = false
  dns.records.set('api.test', { A: ['127.0.0.1'] })
  t.ok(await within(() => pool.target(`http://127.0.0.1:${up.port}`) !== undefined && pool.targets.length === 1), 'it recovers when the resolver does')
})

test('dns-srv discovery: host and port from each record, weights, and higher priorities as backups', async (t) => {
  const dns = await startDnsServer(t)
  const ups = await startUpstreams(t, 3)
  dns.records.set('_http._tcp.api.test', {
    SRV: [
      { priority: 10, weight: 3, port: ups[0].port, target: 'localhost' },
      { priority: 10, weight: 1, port: ups[1].port, target: 'localhost' },
      { priority: 20, weight: 1, port: ups[2].port, target: 'localhost' }
    ]
  })
  const { app, url } = await startGateway(t, {
    upstreams: { api: { targets: [], discovery: { type: 'dns-srv', name: '_http._tcp.api.test', servers: [dns.address], interval: 200 } } },
    routes: [{ prefix: '/', upstream: 'api' }]
  })
  const pool = app.upstreams.get('api')
  if (pool === undefined) throw new Error('no pool')
  t.same(pool.targets.map((v) => [v.url, v.weight, v.backup]), [
    [`http://localhost:${ups[0].port}`, 3, false],
    [`http://localhost:${ups[1].port}`, 1, false],
    [`http://localhost:${ups[2].port}`, 1, true]
  ])
  t.same(await load(`${url}/x`, 40, 1), { u0: 30, u1: 10 })
  // a weight change in DNS follows
  dns.records.set('_http._tcp.api.test', {
    SRV: [
      { priority: 10, weight: 1, port: ups[0].port, target: 'localhost' },
      { priority: 10, weight: 1, port: ups[1].port, target: 'localhost' },
      { priority: 20, weight: 1, port: ups[2].port, target: 'localhost' }
    ]
  })
  t.ok(await within(() => pool.target(`http://localhost:${ups[0].port}`)?.weight === 1))
})

test('dns-srv discovery: the records\' host names are resolved by the same DNS servers, for their TTL, and kept for Host', async (t) => {
  const dns = await startDnsServer(t)
  const first = await startUpstream(t, 'first')
  // the same port on another loopback address: where the name points next
  const second = await startUpstream(t, 'second', undefined, first.port, '127.0.0.2')
  const name = 'node1.node.dc1.consul'
  dns.ttl = 1
  dns.records.set('_http._tcp.api.service.consul', { SRV: [{ priority: 1, weight: 1, port: first.port, target: name }] })
  dns.records.set(name, { A: ['127.0.0.1'] })
  const { app, url } = await startGateway(t, {
    upstreams: { api: { targets: [], discovery: { type: 'dns-srv', name: '_http._tcp.api.service.consul', servers: [dns.address] } } },
    routes: [{ prefix: '/', upstream: 'api' }]
  })
  t.same(app.upstreams.get('api')?.targets.map((v) => v.url), [`http://${name}:${first.port}`], 'the target keeps the name')
  t.same(await load(`${url}/x`, 5, 1), { first: 5 }, 'a name only those servers know is reached')
  t.equal(first.last?.headers.host, `${name}:${first.port}`, 'Host carries the name')
  // the name moves: once its TTL is over, a new connection goes to the new address
  dns.records.set(name, { A: ['127.0.0.2'] })
  await new Promise((resolve) => setTimeout(resolve, 1200))
  first.server.closeAllConnections()
  for (let i = 0; i < 30 && second.hits === 0; i++) await load(`${url}/x`, 1, 1)
  t.ok(second.hits > 0, 'the new address is used after the TTL')
})

test('a custom discovery source plugs in with resolve()', async (t) => {
  const ups = await startUpstreams(t, 2)
  let current = [ups[0].url]
  let calls = 0
  const { app } = await startGateway(t, {
    upstreams: {
      api: {
        targets: [],
        discovery: {
          interval: 100,
          resolve: async () => {
            calls++
            return current
          }
        }
      }
    }
  })
  const pool = app.upstreams.get('api')
  if (pool === undefined) throw new Error('no pool')
  t.same(pool.targets.map((v) => v.url), [ups[0].url])
  current = [ups[1].url]
  t.ok(await within(() => pool.targets.length === 1 && pool.targets[0].url === ups[1].url))
  t.ok(calls >= 2)
  await app.close()
  const after = calls
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(calls, after, 'no lookup after close')
})

test('a pool may be discovery alone, with no targets option', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { app, url } = await startGateway(t, {
    upstreams: { api: { discovery: { resolve: async () => [up.url] } } },
    routes: [{ prefix: '/', upstream: 'api' }]
  })
  t.same(app.upstreams.get('api')?.targets.map((v) => v.url), [up.url])
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 200)
  t.equal(res.headers.get('x-upstream'), 'u0', 'proxied to the discovered target')
  t.equal(up.hits, 1)
})
