'use strict'

// A pool fed by a discovery source of your own (here an in-memory service registry that
// changes while the app runs: stand-in for Consul, Kubernetes or etcd), and the status
// route: JSON for programs, an HTML page for browsers, Prometheus metrics below it.
// Run: node examples/discovery-and-status.js   (--once exits after the walk-through)
const http = require('node:http')
const Fastify = require('fastify')
const fastifyUpstream = require('fastify-upstream')

const port = Number(process.env.PORT ?? 3002)
const once = process.argv.includes('--once')

function startInstance (name) {
  const server = http.createServer((req, res) => res.end(`${name} ${req.url}`))
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

async function main () {
  const servers = await Promise.all(['blue-1', 'blue-2', 'green-1'].map(startInstance))
  const urls = servers.map((server) => `http://127.0.0.1:${server.address().port}`)
  // the "service registry": which instances are registered right now
  const registered = new Set([urls[0], urls[1]])

  const app = Fastify({ logger: { level: 'warn' } })
  await app.register(fastifyUpstream, {
    upstreams: {
      shop: {
        targets: [],
        discovery: {
          interval: 200,
          async resolve () { return [...registered] }
        },
        healthCheck: { passive: { consecutiveFailures: 3 } }
      }
    },
    routes: [{ prefix: '/shop', upstream: 'shop' }],
    statusRoute: '/_upstreams',
    onTargetStateChange: (event) => console.log(`  event: ${event.kind} ${event.target.url} (${event.reason})`)
  })
  app.addHook('onClose', async () => { for (const server of servers) server.close() })
  const address = await app.listen({ port, host: '127.0.0.1' })
  console.log(`listening on ${address}`)

  const pool = app.upstreams.get('shop')
  const show = (title) => console.log(`${title}: ${pool.targets.map((t) => `${t.url} ${t.state}`).join(', ')}`)
  const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

  show('discovered at start')
  for (let i = 0; i < 4; i++) console.log('  GET /shop/cart ->', await (await fetch(`${address}/shop/cart`)).text())
  registered.add(urls[2])
  registered.delete(urls[0])
  await wait(500)
  show('after green-1 registered and blue-1 left')
  for (let i = 0; i < 4; i++) console.log('  GET /shop/cart ->', await (await fetch(`${address}/shop/cart`)).text())

  const status = await (await fetch(`${address}/_upstreams`)).json()
  console.log('GET /_upstreams ->', JSON.stringify(status.pools.shop.targets.map((t) => ({ url: t.url, state: t.state, requests: t.requests }))))
  const metrics = await (await fetch(`${address}/_upstreams/metrics`)).text()
  console.log('GET /_upstreams/metrics ->', metrics.split('\n').filter((l) => l.startsWith('fastify_upstream_requests_total')).join('\n  '))

  if (once) {
    await app.close()
    return
  }
  console.log(`open ${address}/_upstreams in a browser (Ctrl+C to stop)`)
  process.once('SIGINT', () => { app.close().then(() => process.exit(0)) })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
