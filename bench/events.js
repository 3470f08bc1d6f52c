'use strict'

// `npm run bench:events`: the delay of each server-sent event through the plugin, against
// a direct connection to the same target, side by side in alternating rounds. The target
// writes an event every `--interval` ms carrying the time it was written; the client
// reads each one and takes the difference (one process, one clock). Loopback only;
// bounded by the rounds and the events per round.
//   node bench/events.js [--rounds=6] [--events=200] [--interval=5]

const http = require('node:http')
const Fastify = require('fastify')
const { parseArgs, numberArg, median, fmt, printTable } = require('./common')

const args = parseArgs(process.argv.slice(2))
const rounds = numberArg(args, 'rounds', 6)
const events = numberArg(args, 'events', 200)
const interval = numberArg(args, 'interval', 5)

const now = () => Number(process.hrtime.bigint()) / 1e6

function target () {
  return http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    res.flushHeaders()
    let sent = 0
    const timer = setInterval(() => {
      res.write(`data: ${now()}\n\n`)
      if (++sent === events) {
        clearInterval(timer)
        res.end()
      }
    }, interval)
    req.on('close', () => clearInterval(timer))
  })
}

/** Reads one stream of events from `url`; resolves with the delay of each (ms) and the time to the headers. */
function readEvents (url) {
  return new Promise((resolve, reject) => {
    const started = now()
    const request = http.get(url, (res) => {
      const headers = now() - started
      const delays = []
      let buffered = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => {
        const at = now()
        buffered += chunk
        let end
        while ((end = buffered.indexOf('\n\n')) !== -1) {
          const line = buffered.slice(0, end)
          buffered = buffered.slice(end + 2)
          if (line.startsWith('data: ')) delays.push(at - Number(line.slice(6)))
        }
      })
      res.on('end', () => resolve({ delays, headers }))
      res.on('error', reject)
    })
    request.setTimeout(30_000, () => request.destroy(new Error('no events for 30 s')))
    request.on('error', reject)
  })
}

function percentile (sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]
}

async function main () {
  const upstream = target()
  await new Promise((resolve) => upstream.listen(0, '127.0.0.1', resolve))
  const direct = `http://127.0.0.1:${upstream.address().port}`
  const app = Fastify({ logger: false })
  await app.register(require('../dist/index.js'), {
    upstreams: { events: { targets: [direct] } },
    routes: [{ prefix: '/', upstream: 'events' }]
  })
  const gateway = await app.listen({ port: 0, host: '127.0.0.1' })
  console.log(`server-sent events: ${rounds} rounds of ${events} events every ${interval} ms, direct and through the plugin alternating\n`)
  const results = { direct: [], plugin: [] }
  const headers = { direct: [], plugin: [] }
  try {
    for (let round = 1; round <= rounds; round++) {
      const order = round % 2 === 1 ? ['direct', 'plugin'] : ['plugin', 'direct']
      for (const path of order) {
        const { delays, headers: h } = await readEvents(`${path === 'direct' ? direct : gateway}/events`)
        if (delays.length !== events) throw new Error(`${path}: ${delays.length} of ${events} events arrived`)
        results[path].push(...delays)
        headers[path].push(h)
        console.log(`  ${round} ${path}: median ${fmt(median(delays), 3)} ms, headers after ${fmt(h, 1)} ms`)
      }
    }
  } finally {
    await app.close()
    upstream.closeAllConnections()
    upstream.close()
  }
  const rows = ['direct', 'plugin'].map((path) => {
    const sorted = [...results[path]].sort((a, b) => a - b)
    return [path, fmt(sorted.length), fmt(median(sorted), 3), fmt(percentile(sorted, 99), 3), fmt(median(headers[path]), 1)]
  })
  console.log('')
  printTable(['path', 'events', 'median delay (ms)', 'p99 delay (ms)', 'headers after (median ms)'], rows)
  const added = median(results.plugin) - median(results.direct)
  console.log(`\nthe plugin adds ${fmt(added, 3)} ms to the median event delay (headers: ${fmt(median(headers.plugin) - median(headers.direct), 1)} ms)`)
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
