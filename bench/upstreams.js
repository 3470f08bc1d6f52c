'use strict'

// Child process: the upstream servers of the proxy benchmark. Tiny node:http servers on
// 127.0.0.1 (ephemeral ports) that answer every request with the same small JSON body.
// Reports { type: 'ready', urls } over IPC, answers { type: 'hits' } with the requests
// each server got, { type: 'last' } with the URL of the last request any of them got (for
// the benchmark's check of what a proxy sends) and { type: 'stats' } with its CPU time;
// exits on { type: 'close' } or when the parent goes away.

const http = require('node:http')

const count = Number(process.argv[2] ?? 3)
const body = Buffer.from('{"hello":"world"}')
const hits = new Array(count).fill(0)
let last = ''

function handler (req, res) {
  hits[this.index]++
  last = req.url
  // drain any request body, then answer
  req.resume()
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
  res.end(body)
}

async function main () {
  const servers = []
  for (let i = 0; i < count; i++) {
    const server = http.createServer({ keepAliveTimeout: 60_000 }, handler)
    server.index = i
    await new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', resolve)
    })
    servers.push(server)
  }
  const close = () => {
    for (const server of servers) server.closeAllConnections()
    process.exit(0)
  }
  process.on('message', (message) => {
    if (message?.type === 'hits') process.send({ type: 'hits', hits })
    else if (message?.type === 'last') process.send({ type: 'last', url: last })
    else if (message?.type === 'stats') process.send({ type: 'stats', id: message.id, cpu: process.cpuUsage() })
    else if (message?.type === 'close') close()
  })
  process.on('disconnect', close)
  process.send({ type: 'ready', urls: servers.map((s) => `http://127.0.0.1:${s.address().port}`) })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
