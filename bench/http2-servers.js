'use strict'

// Child processes of the HTTP/2 benchmark, on 127.0.0.1 (ephemeral ports):
//   node bench/http2-servers.js targets h1 <count>    node:http targets (HTTP/1.1, keep-alive 60 s)
//   node bench/http2-servers.js targets h2c <count>   node:http2 targets, cleartext (h2c, prior knowledge)
//   node bench/http2-servers.js proxy <kind> <urls>   fastify-upstream (dist/), a mount on '/' over a pool
//                                                     of the urls, least-request; kind h1 (default options),
//                                                     h2c (http2: 'h2c'), h2c-max1 (the same, maxConnections: 1)
// Every target answers every request with the same small JSON body. IPC: sends
// { type: 'ready', url | urls }; answers { type: 'stats' } with its CPU time and, for
// targets, the connections accepted so far (TCP for h1, HTTP/2 sessions for h2c) and open
// now; exits on { type: 'close' } or when the parent goes away.

const http = require('node:http')
const http2 = require('node:http2')

const [role, kind, arg] = process.argv.slice(2)
const body = Buffer.from('{"hello":"world"}')
const connections = { opened: 0, open: 0 }

async function targets () {
  const servers = []
  for (let i = 0; i < Number(arg); i++) {
    let server
    if (kind === 'h2c') {
      server = http2.createServer()
      server.on('stream', (stream) => {
        stream.on('error', () => {})
        stream.resume()
        stream.respond({ ':status': 200, 'content-type': 'application/json', 'content-length': body.length })
        stream.end(body)
      })
      server.on('session', (session) => {
        connections.opened++
        connections.open++
        session.on('error', () => {})
        session.on('close', () => { connections.open-- })
      })
    } else {
      server = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
        req.resume()
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
        res.end(body)
      })
      server.on('connection', (socket) => {
        connections.opened++
        connections.open++
        socket.on('close', () => { connections.open-- })
      })
    }
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    servers.push(server)
  }
  return { urls: servers.map((s) => `http://127.0.0.1:${s.address().port}`), close: () => process.exit(0) }
}

async function proxy () {
  const app = require('fastify')({ logger: false })
  const pool = { targets: arg.split(','), balancer: 'least-request' }
  if (kind !== 'h1') pool.http2 = 'h2c'
  if (kind === 'h2c-max1') pool.maxConnections = 1
  await app.register(require('../dist/index.js'), { upstreams: { pool }, routes: [{ prefix: '/', upstream: 'pool' }] })
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  return { url, close: () => app.close().finally(() => process.exit(0)) }
}

;(role === 'proxy' ? proxy() : targets()).then((ready) => {
  process.on('message', (message) => {
    if (message?.type === 'close') ready.close()
    if (message?.type === 'stats') process.send({ type: 'stats', cpu: process.cpuUsage(), ...connections })
  })
  process.on('disconnect', () => ready.close())
  process.send({ type: 'ready', url: ready.url, urls: ready.urls })
}).catch((error) => {
  console.error(error)
  process.exit(1)
})
