'use strict'

// `npm run bench:memory`: 10,000 add/remove cycles of targets while traffic flows, with
// the heap measured (after a forced GC) every 1,000 cycles. Prints the figures and the
// growth from the first to the last measurement.
//   node --expose-gc bench/memory.js [--cycles=10000]

const http = require('node:http')
const Fastify = require('fastify')
const fastifyUpstream = require('../dist/index.js')
const { parseArgs, numberArg, fmt, printTable } = require('./common')

const args = parseArgs(process.argv.slice(2))
const cycles = numberArg(args, 'cycles', 10_000)

if (typeof global.gc !== 'function') {
  console.error('run with node --expose-gc')
  process.exit(1)
}

function upstream () {
  const server = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => { req.resume(); res.end('ok') })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

function heap () {
  global.gc()
  global.gc()
  return process.memoryUsage().heapUsed
}

async function main () {
  const servers = await Promise.all([upstream(), upstream(), upstream(), upstream()])
  const urls = servers.map((s) => `http://127.0.0.1:${s.address().port}`)
  const app = Fastify()
  await app.register(fastifyUpstream, {
    upstreams: { pool: { targets: urls.slice(0, 2), balancer: 'least-request', healthCheck: { passive: {} } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const pool = app.upstreams.get('pool')

  // traffic: 4 clients in a loop until the cycles are done
  const state = { running: true, requests: 0, failed: 0 }
  const clients = Array.from({ length: 4 }, async () => {
    while (state.running) {
      try {
        const res = await fetch(`${address}/x`)
        await res.arrayBuffer()
        if (res.status !== 200) state.failed++
      } catch {
        state.failed++
      }
      state.requests++
    }
  })

  const rows = []
  const start = heap()
  rows.push([0, fmt(start / 1024), '0', fmt(state.requests)])
  for (let i = 1; i <= cycles; i++) {
    const url = urls[2 + (i % 2)]
    pool.addTarget(url)
    // let some requests reach it now and then
    if (i % 10 === 0) await new Promise((resolve) => setTimeout(resolve, 1))
    await pool.removeTarget(url, { drain: true })
    if (i % (cycles / 10) === 0) {
      const used = heap()
      rows.push([i, fmt(used / 1024), fmt((used - start) / 1024), fmt(state.requests)])
    }
  }
  state.running = false
  await Promise.all(clients)
  await app.close()
  for (const server of servers) server.close()

  console.log(`\n${cycles} add/remove cycles under traffic (${state.requests} requests, ${state.failed} failed)\n`)
  printTable(['cycles', 'heap used (KiB)', 'growth (KiB)', 'requests so far'], rows)
  // the first tenth warms up (JIT, caches); a leak shows as steady growth after it
  const kib = (row) => Number(String(row[1]).replace(/,/g, ''))
  const growth = kib(rows[rows.length - 1]) - kib(rows[1])
  const perCycle = (growth * 1024) / (cycles - rows[1][0])
  console.log(`\ngrowth from cycle ${fmt(rows[1][0])} to ${fmt(cycles)}: ${fmt(growth)} KiB (${fmt(perCycle, 1)} bytes a cycle)`)
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
