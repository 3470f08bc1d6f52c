'use strict'

// Many gateway instances sharing one pool through etcd: the pool's options are a key in
// etcd (plugin option `etcd`), its targets register themselves under a prefix with a lease
// (registerTarget), and every instance watches both. A target that dies without a word
// leaves every instance when its lease runs out. Needs the `etcd` command (Debian package
// etcd-server): a single throwaway member on 127.0.0.1 is started here.
// Run: node examples/many-instances.js   (--once exits after the walk-through)
const { spawn } = require('node:child_process')
const http = require('node:http')
const Fastify = require('fastify')
const fastifyUpstream = require('fastify-upstream')
const { etcdAvailable, startCluster } = require('../bench/etcd-cluster')

const port = Number(process.env.PORT ?? 3003)
const once = process.argv.includes('--once')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const TTL = 2

function startTarget (name) {
  const server = http.createServer((req, res) => res.end(name))
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

// target-a in a process of its own, so that it can die without deregistering (SIGKILL)
function spawnTarget (name, endpoints) {
  const code = `
    const { registerTarget } = require(${JSON.stringify(require.resolve('fastify-upstream'))})
    const server = require('node:http').createServer((req, res) => res.end(${JSON.stringify(name)}))
    server.listen(0, '127.0.0.1', async () => {
      const url = 'http://127.0.0.1:' + server.address().port
      await registerTarget({ endpoints: ${JSON.stringify(endpoints)}, prefix: 'demo/services/api/', url, ttl: ${TTL}, name: ${JSON.stringify(name)} })
      console.log(url)
    })`
  const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] })
  process.once('exit', () => child.kill('SIGKILL'))
  return new Promise((resolve, reject) => {
    child.stdout.once('data', (line) => resolve({ child, url: String(line).trim() }))
    child.once('exit', (status) => reject(new Error(`${name} exited (${status})`)))
  })
}

async function withoutEtcd () {
  const server = await startTarget('target-a')
  const app = Fastify({ logger: { level: 'warn' } })
  await app.register(fastifyUpstream, {
    upstreams: { api: { targets: [`http://127.0.0.1:${server.address().port}`] } },
    routes: [{ prefix: '/api', upstream: 'api' }]
  })
  app.addHook('onClose', async () => { server.close() })
  const address = await app.listen({ port, host: '127.0.0.1' })
  console.log(`listening on ${address}`)
  console.log(`GET /api/hello -> ${(await fetch(`${address}/api/hello`)).status} (a pool in code)`)
  console.log('the rest of this example needs the etcd command: install the Debian package etcd-server')
  await app.close()
}

async function main () {
  if (!etcdAvailable()) return await withoutEtcd()
  const etcd = await startCluster({ members: 1 })
  const { endpoints } = etcd
  // what an operator does once (etcdctl put demo/pools/api '{...}'): the pool, shared by every instance
  await etcd.put('demo/pools/api', JSON.stringify({ discovery: { type: 'etcd', endpoints, prefix: 'demo/services/api/' } }))

  const gateways = []
  for (let i = 0; i < 3; i++) {
    const app = Fastify({ logger: { level: 'warn' } })
    await app.register(fastifyUpstream, {
      etcd: { endpoints, prefix: 'demo/pools/' },
      routes: [{ prefix: '/api', upstream: 'api' }],
      statusRoute: '/_upstreams'
    })
    gateways.push({ app, address: await app.listen({ port: i === 0 ? port : 0, host: '127.0.0.1' }) })
  }
  console.log(`listening on ${gateways[0].address} (and ${gateways[1].address}, ${gateways[2].address})`)
  console.log(`pool "api" from the etcd key demo/pools/api, targets from demo/services/api/ (etcd at ${endpoints[0]})`)

  const names = new Map()
  const has = (url) => gateways.every(({ app }) => app.upstreams.get('api')?.target(url) !== undefined)
  async function until (check) {
    const start = Date.now()
    while (!check()) await sleep(10)
    return Date.now() - start
  }
  async function show (title) {
    console.log(title)
    for (const [i, { address }] of gateways.entries()) {
      const res = await fetch(`${address}/api/hello`)
      console.log(`  gateway ${i + 1}: GET /api/hello -> ${res.status} ${await res.text()}`)
    }
  }

  const a = await spawnTarget('target-a', endpoints)
  names.set(a.url, 'target-a')
  console.log(`target-a registered itself (lease ttl ${TTL} s); on every gateway after ${await until(() => has(a.url))} ms`)
  await show('each gateway routes to it:')

  const serverB = await startTarget('target-b')
  const urlB = `http://127.0.0.1:${serverB.address().port}`
  names.set(urlB, 'target-b')
  const b = await fastifyUpstream.registerTarget({ endpoints, prefix: 'demo/services/api/', url: urlB, ttl: TTL, name: 'target-b' })
  console.log(`target-b registered as ${b.key}; on every gateway after ${await until(() => has(urlB))} ms`)
  console.log('the pool through each gateway\'s status route:')
  for (const [i, { address }] of gateways.entries()) {
    const res = await fetch(`${address}/_upstreams`)
    const targets = (await res.json()).pools.api.targets.map((t) => `${names.get(t.url)} ${t.state}`)
    console.log(`  gateway ${i + 1}: GET /_upstreams -> ${res.status} api: ${targets.join(', ')}`)
  }

  a.child.kill('SIGKILL')
  const dead = Date.now()
  console.log('target-a killed (SIGKILL: no deregistration, its lease is no longer renewed)')
  await until(() => gateways.every(({ app }) => app.upstreams.get('api').target(a.url) === undefined) || Date.now() - dead > 10_000)
  const took = Date.now() - dead
  console.log(`every gateway dropped target-a after ${(took / 1000).toFixed(2)} s (lease ttl ${TTL} s${took <= (TTL + 1) * 1000 ? '' : ': later than ttl + 1 s'})`)
  await show('each gateway routes to target-b alone:')

  const close = async () => {
    await b.close()
    serverB.close()
    await Promise.all(gateways.map(({ app }) => app.close()))
    await etcd.stop()
  }
  if (once) return await close()
  console.log(`try: curl ${gateways[0].address}/api/hello   (Ctrl+C to stop)`)
  process.once('SIGINT', () => { close().then(() => process.exit(0)) })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
