'use strict'

// Child process: the upstream servers of the fault benchmark, on 127.0.0.1. Besides
// answering, they take orders over IPC: { type: 'kill', index } closes a server and
// resets its connections, as a crash would; { type: 'slow', index, ms } delays its
// answers; { type: 'hits' } reports the requests each server got; { type: 'restart',
// index, mode, grace, down } restarts a server on its port: 'graceful' (GET /health
// answers 503 for `grace` ms, then close() waiting for requests in flight), 'crude'
// (close() at once, keep-alive connections closed as they go idle) or 'crash' (every
// socket destroyed), back `down` ms later. A request with an Idempotency-Key is applied
// once across the servers (a shared store), a repeat gets the same answer.
//   node bench/faults-upstreams.js <count> [h2c]
// With `h2c`, the servers speak cleartext HTTP/2 (node:http2), and a restart closes each
// connection as an HTTP/2 server going away does: GOAWAY (graceful and crude: the
// streams it took finish), or the connection destroyed (crash).

const http = require('node:http')
const http2 = require('node:http2')

const count = Number(process.argv[2] ?? 3)
const h2c = process.argv[3] === 'h2c'
const body = Buffer.from('{"hello":"world"}')
const hits = new Array(count).fill(0)
const delays = new Array(count).fill(0)
const draining = new Array(count).fill(false)
const applied = new Set()

function handler (req, res) {
  const index = this.index
  if (req.url === '/health') {
    res.statusCode = draining[index] ? 503 : 200
    res.end()
    return
  }
  hits[index]++
  req.resume()
  const key = req.headers['idempotency-key']
  if (typeof key === 'string') applied.add(key)
  const answer = () => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
    res.end(body)
  }
  if (delays[index] > 0) setTimeout(answer, delays[index])
  else answer()
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function listen (index, port) {
  const server = h2c ? http2.createServer(handler) : http.createServer({ keepAliveTimeout: 60_000 }, handler)
  server.index = index
  server.sockets = new Set()
  server.sessions = new Set()
  server.on('session', (session) => {
    server.sessions.add(session)
    session.once('close', () => server.sessions.delete(session))
    session.on('error', () => {})
  })
  server.on('connection', (socket) => {
    server.sockets.add(socket)
    socket.once('close', () => server.sockets.delete(socket))
  })
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve))
  return server
}

async function restart (servers, { index, mode, grace, down }) {
  const server = servers[index]
  const port = server.address().port
  if (mode === 'graceful') {
    draining[index] = true
    await sleep(grace)
  }
  const closed = new Promise((resolve) => server.close(resolve))
  let idle
  if (h2c) {
    // Node's HTTP/2 server.close() leaves its sessions open: each goes away as a server's would
    for (const session of server.sessions) mode === 'crash' ? session.destroy() : session.close()
  } else if (mode === 'crude') {
    idle = setInterval(() => server.closeIdleConnections(), 5)
  }
  if (mode === 'crash') for (const socket of server.sockets) socket.resetAndDestroy()
  await closed
  clearInterval(idle)
  await sleep(down)
  servers[index] = await listen(index, port)
  draining[index] = false
}

async function main () {
  const servers = []
  for (let i = 0; i < count; i++) servers.push(await listen(i, 0))
  const close = () => {
    for (const server of servers) {
      for (const session of server.sessions) session.destroy()
      server.closeAllConnections?.()
    }
    process.exit(0)
  }
  process.on('message', (message) => {
    if (message?.type === 'kill') {
      const server = servers[message.index]
      server.close()
      for (const session of server.sessions) session.destroy()
      for (const socket of server.sockets ?? []) socket.resetAndDestroy()
      server.closeAllConnections?.()
      process.send({ type: 'killed' })
    } else if (message?.type === 'slow') {
      delays[message.index] = message.ms
      process.send({ type: 'slowed' })
    } else if (message?.type === 'restart') {
      restart(servers, message).then(() => process.send({ type: 'restarted' }))
    } else if (message?.type === 'hits') {
      process.send({ type: 'hits', hits })
    } else if (message?.type === 'close') {
      close()
    }
  })
  process.on('disconnect', close)
  process.send({ type: 'ready', urls: servers.map((s) => `http://127.0.0.1:${s.address().port}`) })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
