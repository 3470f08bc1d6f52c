'use strict'

// Child process: one proxy of the fault benchmark, on 127.0.0.1 (ephemeral port).
//   node bench/faults-proxy.js plugin <balancer> <url1,url2,url3> [checked] [h2c]
//     fastify-upstream with passive checks and its default retries; `checked` adds active
//     checks of GET /health every 100 ms (for the restarts); `h2c` speaks cleartext HTTP/2
//     to the targets (pool option http2: 'h2c')
//   node bench/faults-proxy.js bare - <url1,url2,url3>
//     @fastify/reply-from with a round-robin getUpstream and its own defaults
// IPC: sends { type: 'ready', url }, and { type: 'state', ... , at } on every target state
// change (plugin); exits on { type: 'close' } or when the parent goes away.

const Fastify = require('fastify')

const [kind, balancer, list, checked, protocol] = process.argv.slice(2)
const urls = list.split(',')

async function build () {
  const app = Fastify({ logger: false })
  if (kind === 'plugin') {
    await app.register(require('../dist/index.js'), {
      upstreams: {
        pool: {
          targets: urls,
          balancer,
          ...(protocol === 'h2c' ? { http2: 'h2c' } : {}),
          healthCheck: {
            passive: { consecutiveFailures: 3, ejectionTime: 10_000 },
            ...(checked === 'checked' ? { active: { path: '/health', interval: 100, timeout: 200, healthyThreshold: 1, unhealthyThreshold: 1 } } : {})
          }
        }
      },
      routes: [{ prefix: '/', upstream: 'pool' }],
      onTargetStateChange: (event) => {
        process.send({ type: 'state', url: event.target.url, from: event.from, to: event.to, reason: event.reason, at: Date.now() })
      }
    })
  } else {
    await app.register(require('@fastify/reply-from'), { disableRequestLogging: true })
    let next = 0
    const getUpstream = () => urls[next++ % urls.length]
    app.all('/*', (request, reply) => reply.from(request.url, { getUpstream }))
  }
  return app
}

build().then(async (app) => {
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  const close = () => { app.close().finally(() => process.exit(0)) }
  process.on('message', (message) => { if (message?.type === 'close') close() })
  process.on('disconnect', close)
  process.send({ type: 'ready', url })
}).catch((error) => {
  console.error(error)
  process.exit(1)
})
