'use strict'

// A canary rollout and a mirror: checkout v2 takes 5%, then more, of the clients (each
// client keeps its version by its session cookie), testers reach it by a header at any
// weight, and a copy of every request also goes to a shadow pool, whose answers are
// dropped: it sees real traffic without any client seeing it.
// Run: node examples/canary-and-mirror.js   (--once exits after the walk-through)
const http = require('node:http')
const Fastify = require('fastify')
const fastifyUpstream = require('fastify-upstream')

const port = Number(process.env.PORT ?? 3002)
const once = process.argv.includes('--once')

function startUpstream (name, seen) {
  const server = http.createServer((req, res) => {
    seen?.push(`${req.method} ${req.url}${req.headers['x-upstream-mirror'] === undefined ? '' : ' (mirrored)'}`)
    req.resume()
    req.on('end', () => res.end(name))
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

async function main () {
  const shadowSeen = []
  const servers = await Promise.all([startUpstream('v1'), startUpstream('v2'), startUpstream('shadow', shadowSeen)])
  const [v1, v2, shadow] = servers.map((server) => `http://127.0.0.1:${server.address().port}`)

  const app = Fastify()
  await app.register(fastifyUpstream, {
    upstreams: {
      'checkout-v1': { targets: [v1] },
      'checkout-v2': { targets: [v2] },
      shadow: { targets: [shadow] }
    },
    splits: {
      checkout: {
        branches: [
          { pool: 'checkout-v2', match: { header: 'x-canary', equals: 'always' } },
          { pool: 'checkout-v1', weight: 95 },
          { pool: 'checkout-v2', weight: 5 }
        ],
        key: 'cookie:session'
      }
    },
    routes: [{ prefix: '/checkout', upstream: 'checkout', mirror: { pool: 'shadow', percent: 100 } }]
  })
  app.addHook('onClose', async () => { for (const server of servers) server.close() })
  const address = await app.listen({ port, host: '127.0.0.1' })
  console.log(`listening on ${address}`)

  const clients = Array.from({ length: 200 }, (_, i) => `session=client-${i}`)
  async function share (title) {
    const counts = { v1: 0, v2: 0 }
    for (const cookie of clients) {
      const res = await fetch(`${address}/checkout/cart`, { headers: { cookie } })
      const body = await res.text()
      if (res.status !== 200) console.log(`${cookie} -> ${res.status}`)
      counts[body] = (counts[body] ?? 0) + 1
    }
    console.log(`${title.padEnd(24)} v1: ${counts.v1}  v2: ${counts.v2}  (of ${clients.length} clients)`)
  }

  const split = app.upstreams.split('checkout')
  await share('weights 95 / 5:')
  await share('again (no client moved):')
  for (const v2Weight of [25, 50, 100]) {
    split.setWeights({ 'checkout-v1': 100 - v2Weight, 'checkout-v2': v2Weight })
    await share(`weights ${100 - v2Weight} / ${v2Weight}:`)
  }
  split.setWeights({ 'checkout-v1': 95, 'checkout-v2': 5 })
  const tester = await fetch(`${address}/checkout/cart`, { headers: { 'x-canary': 'always' } })
  console.log(`a tester at 95 / 5:       ${await tester.text()}`)

  // mirrored copies are sent after each request, and counted in the metrics
  await new Promise((resolve) => setTimeout(resolve, 200))
  console.log(`the shadow pool saw ${shadowSeen.length} copies, e.g. ${shadowSeen[0]}`)
  console.log(JSON.stringify(app.upstreams.status().splits.checkout.branches))

  if (once) await app.close()
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
