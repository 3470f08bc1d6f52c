'use strict'

// Child process: one proxy of the proxy benchmark, on 127.0.0.1 (ephemeral port).
//   node bench/proxy-server.js plugin <url1,url2,url3>        fastify-upstream, least-request over every url, default options,
//                                                             mounted with routes: [{ prefix: '/', upstream: 'pool' }]
//   node bench/proxy-server.js plugin-forward <url1,url2,url3> the same pool, no mount: a handler route, as the README's
//                                                             usage: GET /users/:id -> reply.forward('pool', { url: '/v1/users/' + id })
//   node bench/proxy-server.js plugin-stream <url1,url2,url3> the same with responseBuffer: 0 (every response streamed)
//   node bench/proxy-server.js plugin-no-xff <url1,url2,url3> the same with forwardedHeaders: 'none' (the hop work bare does)
//   node bench/proxy-server.js plugin-split <url1,url2,url3>  the mount on a split instead of a pool: 95 / 5 between two
//                                                             pools of the same targets (what choosing a branch costs)
//   node bench/proxy-server.js xff-floor <url1,url2,url3>     @fastify/reply-from, the urls in turn, adding the three
//                                                             x-forwarded headers the plugin adds by default: a floor
//   node bench/proxy-server.js bare <url1>                    @fastify/reply-from with `base`, catch-all route
//   node bench/proxy-server.js bare-forward <url1>            @fastify/reply-from with `base`, plugin-forward's route and
//                                                             URL: GET /users/:id -> reply.from('/v1/users/' + id) (a reference)
// IPC: sends { type: 'ready', url }; answers { type: 'stats' } with this process's CPU time
// and event-loop utilisation; exits on { type: 'close' } or when the parent goes away.

const { performance } = require('node:perf_hooks')
const Fastify = require('fastify')

// `plugin@baseline` (and the like) runs the same proxy on another build of the plugin,
// whose entry file is the third argument (see --baseline in proxy.js)
const [name, list, entry] = process.argv.slice(2)
const kind = name.replace(/@baseline$/, '')
const pluginEntry = entry ?? '../dist/index.js'
const urls = (list ?? '').split(',').filter(Boolean)

/** The route of the reply-from proxies: every method, every path. */
function catchAll (app, handler) {
  app.route({ method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'], url: '/*', handler })
}

async function build () {
  const app = Fastify({ logger: false })
  if (kind === 'plugin-forward') {
    // the plugin as its README uses it: a route of the application's own that picks the
    // path to send (the request's query string is kept: the url has none)
    await app.register(require(pluginEntry), {
      upstreams: { pool: { targets: urls, balancer: 'least-request' } }
    })
    app.get('/users/:id', (request, reply) => reply.forward('pool', { url: '/v1/users/' + request.params.id }))
  } else if (kind === 'plugin' || kind === 'plugin-stream' || kind === 'plugin-no-xff') {
    const fastifyUpstream = require(pluginEntry)
    const pool = { targets: urls, balancer: 'least-request' }
    if (kind === 'plugin-stream') pool.responseBuffer = 0
    if (kind === 'plugin-no-xff') pool.forwardedHeaders = 'none'
    await app.register(fastifyUpstream, {
      upstreams: { pool },
      routes: [{ prefix: '/', upstream: 'pool' }]
    })
  } else if (kind === 'plugin-split') {
    await app.register(require(pluginEntry), {
      upstreams: { stable: { targets: urls, balancer: 'least-request' }, canary: { targets: urls, balancer: 'least-request' } },
      routes: [{ prefix: '/', upstream: [{ pool: 'stable', weight: 95 }, { pool: 'canary', weight: 5 }] }]
    })
  } else if (kind === 'xff-floor') {
    // the least any reply-from proxy over these targets can do while adding the headers
    await app.register(require('@fastify/reply-from'), { disableRequestLogging: true })
    const options = {
      rewriteRequestHeaders (request, headers) {
        headers['x-forwarded-for'] = request.raw.socket.remoteAddress
        headers['x-forwarded-proto'] = request.protocol
        headers['x-forwarded-host'] = request.host
        return headers
      }
    }
    let next = 0
    catchAll(app, (request, reply) => {
      next = next + 1 === urls.length ? 0 : next + 1
      return reply.from(urls[next] + request.url, options)
    })
  } else if (kind === 'bare') {
    await app.register(require('@fastify/reply-from'), { base: urls[0] })
    catchAll(app, (request, reply) => reply.from())
  } else if (kind === 'bare-forward') {
    // what plugin-forward's route costs without the plugin: the same route and URL, one target
    await app.register(require('@fastify/reply-from'), { base: urls[0] })
    app.get('/users/:id', (request, reply) => reply.from('/v1/users/' + request.params.id))
  } else {
    throw new Error(`unknown proxy kind ${kind}: expected plugin, plugin-forward, plugin-stream, plugin-no-xff, plugin-split, xff-floor, bare or bare-forward`)
  }
  return app
}

async function main () {
  if (urls.length === 0) throw new Error('no upstream urls given')
  const app = await build()
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address()

  let closing = false
  const close = async () => {
    if (closing) return
    closing = true
    const timer = setTimeout(() => process.exit(0), 2000)
    timer.unref()
    try {
      app.server.closeAllConnections()
      await app.close()
    } finally {
      // process.exit() (not a kill) lets --cpu-prof write its profile
      process.exit(0)
    }
  }
  process.on('message', (message) => {
    if (message?.type === 'stats') {
      process.send({
        type: 'stats',
        id: message.id,
        cpu: process.cpuUsage(),
        elu: performance.eventLoopUtilization()
      })
    } else if (message?.type === 'close') {
      close()
    }
  })
  process.on('disconnect', close)
  process.send({ type: 'ready', url: `http://127.0.0.1:${port}` })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
