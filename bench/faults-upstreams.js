'use strict'

// Child process: the upstream servers of the fault benchmark, on 127.0.0.1. Besides
// answering, they take orders over IPC: { type: 'kill', index } closes a server and
// resets its connections, as a crash would; { type: 'slow', index, ms } delays its
// answers; { type: 'hits' } reports the requests each server got.

const http = require('node:http')

const count = Number(process.argv[2] ?? 3)
const body = Buffer.from('{"hello":"world"}')
const hits = new Array(count).fill(0)
const delays = new Array(count).fill(0)

function handler (req, res) {
  const index = this.index
  hits[index]++
  req.resume()
  const answer = () => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
    res.end(body)
  }
  if (delays[index] > 0) setTimeout(answer, delays[index])
  else answer()
}

async function main () {
  const servers = []
  for (let i = 0; i < count; i++) {
    const server = http.createServer({ keepAliveTimeout: 60_000 }, handler)
    server.index = i
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    servers.push(server)
  }
  const close = () => {
    for (const server of servers) server.closeAllConnections()
    process.exit(0)
  }
  process.on('message', (message) => {
    if (message?.type === 'kill') {
      const server = servers[message.index]
      server.close()
      for (const socket of server.sockets ?? []) socket.resetAndDestroy()
      server.closeAllConnections()
      process.send({ type: 'killed' })
    } else if (message?.type === 'slow') {
      delays[message.index] = message.ms
      process.send({ type: 'slowed' })
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
