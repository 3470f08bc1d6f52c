'use strict'

// Child process of the WebSocket benchmark, on 127.0.0.1 (ephemeral ports):
//   node bench/websocket-servers.js target            a ws echo server
//   node bench/websocket-servers.js plugin <url>      fastify-upstream, a mount with websocket: true
//   node bench/websocket-servers.js http-proxy <url>  @fastify/http-proxy with websocket: true
// IPC: sends { type: 'ready', url }; answers { type: 'stats' } with its CPU time and
// memory (after a full GC when run with --expose-gc); exits on { type: 'close' } or when
// the parent goes away.

const http = require('node:http')

const [kind, target] = process.argv.slice(2)

async function build () {
  if (kind === 'target') {
    const { WebSocketServer } = require('ws')
    const server = http.createServer()
    const wss = new WebSocketServer({ server, perMessageDeflate: false })
    wss.on('connection', (ws) => { ws.on('message', (data, binary) => ws.send(data, { binary })) })
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    return { url: `http://127.0.0.1:${server.address().port}`, close: () => { server.closeAllConnections(); server.close() } }
  }
  const app = require('fastify')({ logger: false })
  if (kind === 'plugin') {
    await app.register(require('../dist/index.js'), {
      upstreams: { echo: { targets: [target] } },
      routes: [{ prefix: '/', upstream: 'echo', websocket: true }],
      metrics: false
    })
  } else {
    await app.register(require('@fastify/http-proxy'), { upstream: target, websocket: true })
  }
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  return { url, close: () => app.close() }
}

build().then(({ url, close }) => {
  const stop = () => { Promise.resolve(close()).finally(() => process.exit(0)) }
  process.on('message', (message) => {
    if (message?.type === 'close') stop()
    if (message?.type === 'stats') {
      if (typeof global.gc === 'function') { global.gc(); global.gc() }
      const memory = process.memoryUsage()
      process.send({ type: 'stats', cpu: process.cpuUsage(), heap: memory.heapUsed, external: memory.external, rss: memory.rss })
    }
  })
  process.on('disconnect', stop)
  process.send({ type: 'ready', url })
}).catch((error) => {
  console.error(error)
  process.exit(1)
})
