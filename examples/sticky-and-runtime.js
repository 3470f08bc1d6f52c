'use strict'

// Sticky routing with consistent hashing, a custom route handler using reply.forward, and
// pool changes at runtime: a target added while serving, another drained away.
// Run: node examples/sticky-and-runtime.js   (--once exits after the walk-through)
const http = require('node:http')
const Fastify = require('fastify')
const fastifyUpstream = require('fastify-upstream')

const port = Number(process.env.PORT ?? 3001)
const once = process.argv.includes('--once')

function startUpstream (name) {
  const server = http.createServer((req, res) => res.end(name))
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

async function main () {
  const servers = await Promise.all(['cache-a', 'cache-b', 'cache-c', 'cache-d'].map(startUpstream))
  const urls = servers.map((server) => `http://127.0.0.1:${server.address().port}`)

  const app = Fastify()
  await app.register(fastifyUpstream, {
    upstreams: {
      cache: {
        targets: urls.slice(0, 3),
        balancer: { type: 'consistent-hash', key: 'header:x-user' }
      }
    }
  })
  app.get('/profile', (request, reply) => reply.forward('cache', { url: '/profile' }))
  app.addHook('onClose', async () => { for (const server of servers) server.close() })
  const address = await app.listen({ port, host: '127.0.0.1' })
  console.log(`listening on ${address}`)

  const users = ['ada', 'grace', 'linus', 'barbara', 'ken', 'margaret']
  async function show (title) {
    const line = []
    for (const user of users) {
      const res = await fetch(`${address}/profile`, { headers: { 'x-user': user } })
      line.push(`${user}->${await res.text()}`)
    }
    console.log(`${title.padEnd(28)} ${line.join('  ')}`)
  }

  await show('three targets:')
  await show('again (same mapping):')
  const pool = app.upstreams.get('cache')
  pool.addTarget(urls[3])
  await show('cache-d added:')
  await pool.removeTarget(urls[0], { drain: true })
  await show('cache-a drained and removed:')
  console.log(JSON.stringify(app.upstreams.status().pools.cache.targets.map((t) => `${t.url} ${t.state} requests=${t.requests}`)))

  if (once) {
    await app.close()
    return
  }
  console.log(`try: curl -H 'x-user: ada' ${address}/profile   (Ctrl+C to stop)`)
  process.once('SIGINT', () => { app.close().then(() => process.exit(0)) })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
