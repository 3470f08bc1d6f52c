'use strict'

// `npm run demo`: three local upstream servers, and a Fastify gateway on port 3000 that
// balances a pool over them. It sends a few requests itself and prints which target
// served each, then keeps serving until Ctrl+C (or exits at once with --once).
const http = require('node:http')
const Fastify = require('fastify')
const fastifyUpstream = require('fastify-upstream')

const port = Number(process.env.PORT ?? 3000)
const once = process.argv.includes('--once')

function startUpstream (name) {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ servedBy: name, path: req.url }))
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

async function main () {
  const upstreams = await Promise.all(['alpha', 'beta', 'gamma'].map(startUpstream))
  const urls = upstreams.map((server) => `http://127.0.0.1:${server.address().port}`)

  const app = Fastify({ logger: { level: 'warn' } })
  await app.register(fastifyUpstream, {
    upstreams: {
      api: {
        targets: [{ url: urls[0], weight: 2 }, urls[1], urls[2]],
        balancer: 'round-robin'
      }
    },
    // GET /api/anything -> GET /v1/anything on a target of pool "api"
    routes: [{ prefix: '/api', upstream: 'api', rewritePrefix: '/v1' }]
  })
  // or proxy from any handler
  app.get('/whoami', (request, reply) => reply.forward('api', { url: '/v1/whoami' }))
  app.get('/status', async () => app.upstreams.status())
  app.addHook('onClose', async () => { for (const server of upstreams) server.close() })

  const address = await app.listen({ port, host: '127.0.0.1' })
  console.log(`gateway listening on ${address}`)
  console.log(`pool "api": ${urls[0]} (weight 2), ${urls[1]}, ${urls[2]}`)

  for (let i = 1; i <= 8; i++) {
    const res = await fetch(`${address}/api/hello?n=${i}`)
    const body = await res.json()
    console.log(`GET /api/hello?n=${i} -> ${res.status} served by ${body.servedBy} (upstream path ${body.path})`)
  }
  const whoami = await (await fetch(`${address}/whoami`)).json()
  console.log(`GET /whoami -> served by ${whoami.servedBy} (upstream path ${whoami.path})`)

  if (once) {
    await app.close()
    return
  }
  console.log(`try: curl ${address}/api/hello   or   curl ${address}/status   (Ctrl+C to stop)`)
  process.once('SIGINT', () => { app.close().then(() => process.exit(0)) })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
