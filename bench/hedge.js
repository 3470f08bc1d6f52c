'use strict'

// `node bench/hedge.js` (after `npm run build`): tail latency with hedged requests
// (`retry.hedge`). Three targets answer in 2 ms + an exponential time of mean 4 ms; in the
// faulty rounds the second also pauses 200 ms on 6% of its requests (2% of all requests,
// with round-robin). Each round runs, in turn and on a fresh gateway:
//   a. healthy: no pauses, no hedging
//   b. faulty, no hedging
//   c. faulty, hedging after `delay` ms (by default the p95 of the first healthy round)
// N GETs per run at a fixed concurrency, from this process (undici, keep-alive). Prints
// p50/p99 per run, then the medians over the rounds and p99(c)/p99(a), p99(b)/p99(a).
//   node bench/hedge.js [--rounds=5] [--requests=4000] [--concurrency=8] [--delay=MS]
// Everything listens on 127.0.0.1; the upstreams and the gateway are child processes of
// this one (this file, with --role=upstreams or --role=gateway), killed when it ends.
// Bounded: --requests per run, and a watchdog of --max-seconds (default 300) for the whole.

const http = require('node:http')
const { performance } = require('node:perf_hooks')
const { parseArgs, numberArg, median, fmt, printTable, spawnChild, waitMessage, stopChild, killAll } = require('./common')

const args = parseArgs(process.argv.slice(2))

const SERVICE_BASE = 2
const SERVICE_MEAN = 4
const PAUSE = 200
const PAUSE_SHARE = 0.06
const FAULTY = 1

// ---- child: the three upstreams ----------------------------------------------------------

function upstreams () {
  const body = Buffer.from('{"hello":"world"}')
  const hits = [0, 0, 0]
  let paused = 0
  let faults = false
  function handler (req, res) {
    const index = this.index
    hits[index]++
    req.resume()
    let delay = SERVICE_BASE - SERVICE_MEAN * Math.log(1 - Math.random())
    if (faults && index === FAULTY && Math.random() < PAUSE_SHARE) {
      paused++
      delay += PAUSE
    }
    const timer = setTimeout(() => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
      res.end(body)
    }, delay)
    // a hedge's cancelled attempt: its connection closes before the answer
    res.once('close', () => clearTimeout(timer))
  }
  const servers = []
  const start = async () => {
    for (let i = 0; i < 3; i++) {
      const server = http.createServer({ keepAliveTimeout: 60_000 }, handler)
      server.index = i
      await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
      servers.push(server)
    }
    process.send({ type: 'ready', urls: servers.map((s) => `http://127.0.0.1:${s.address().port}`) })
  }
  const close = () => {
    for (const server of servers) server.closeAllConnections()
    process.exit(0)
  }
  process.on('message', (message) => {
    if (message?.type === 'faults') {
      faults = message.on
      hits.fill(0)
      paused = 0
      process.send({ type: 'faults' })
    } else if (message?.type === 'hits') {
      process.send({ type: 'hits', hits, paused })
    } else if (message?.type === 'close') {
      close()
    }
  })
  process.on('disconnect', close)
  start().catch((error) => { console.error(error); process.exit(1) })
}

// ---- child: the gateway ----------------------------------------------------------------

function gateway () {
  const Fastify = require('fastify')
  const { poolProxy } = require('../dist/proxy/forwarding.js')
  const { internalPool } = require('../dist/upstream/pool.js')
  const urls = String(args.urls).split(',')
  const delay = Number(args.delay ?? 0)
  const app = Fastify({ logger: false })
  const start = async () => {
    await app.register(require('../dist/index.js'), {
      upstreams: { pool: { targets: urls, balancer: 'round-robin', retry: delay > 0 ? { hedge: { delay } } : {} } },
      routes: [{ prefix: '/', upstream: 'pool' }]
    })
    const url = await app.listen({ port: 0, host: '127.0.0.1' })
    process.send({ type: 'ready', url })
  }
  const close = () => { app.close().finally(() => process.exit(0)) }
  process.on('message', (message) => {
    if (message?.type === 'hedges') {
      const { sent, won } = poolProxy(internalPool(app.upstreams.get('pool'))).hedges
      process.send({ type: 'hedges', sent, won })
    } else if (message?.type === 'close') {
      close()
    }
  })
  process.on('disconnect', close)
  start().catch((error) => { console.error(error); process.exit(1) })
}

// ---- the parent: load and figures -----------------------------------------------------

/** Sends `total` GETs from `concurrency` keep-alive clients; resolves with each one's time (ms). */
async function drive (url, total, concurrency) {
  const { Agent, request } = require('undici')
  const agent = new Agent({ connections: concurrency })
  const times = []
  let sent = 0
  let failed = 0
  const client = async () => {
    while (sent < total) {
      sent++
      const start = performance.now()
      try {
        const res = await request(`${url}/bench`, { dispatcher: agent })
        await res.body.dump()
        if (res.statusCode !== 200) failed++
      } catch {
        failed++
      }
      times.push(performance.now() - start)
    }
  }
  try {
    await Promise.all(Array.from({ length: concurrency }, client))
  } finally {
    await agent.close()
  }
  return { times, failed }
}

function percentile (sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]
}

async function run (upstreamsChild, urls, mode, delay, requests, concurrency) {
  upstreamsChild.send({ type: 'faults', on: mode !== 'a' })
  await waitMessage(upstreamsChild, 'faults')
  const child = spawnChild(__filename, ['--role=gateway', `--urls=${urls.join(',')}`, `--delay=${mode === 'c' ? delay : 0}`])
  try {
    const { url } = await waitMessage(child, 'ready')
    // warm up: connections, JIT (the pauses count only in the measured part)
    await drive(url, Math.min(500, requests), concurrency)
    upstreamsChild.send({ type: 'faults', on: mode !== 'a' })
    await waitMessage(upstreamsChild, 'faults')
    child.send({ type: 'hedges' })
    const before = await waitMessage(child, 'hedges')
    const { times, failed } = await drive(url, requests, concurrency)
    child.send({ type: 'hedges' })
    const after = await waitMessage(child, 'hedges')
    upstreamsChild.send({ type: 'hits' })
    const { hits, paused } = await waitMessage(upstreamsChild, 'hits')
    const sorted = times.sort((x, y) => x - y)
    return {
      p50: percentile(sorted, 50),
      p95: percentile(sorted, 95),
      p99: percentile(sorted, 99),
      failed,
      hedges: after.sent - before.sent,
      won: after.won - before.won,
      hits: hits.reduce((x, y) => x + y, 0),
      paused
    }
  } finally {
    await stopChild(child)
  }
}

async function main () {
  const rounds = numberArg(args, 'rounds', 5)
  const requests = numberArg(args, 'requests', 4000)
  const concurrency = numberArg(args, 'concurrency', 8)
  const maxSeconds = numberArg(args, 'max-seconds', 300)
  const watchdog = setTimeout(() => {
    console.error(`\nstopped after ${maxSeconds} s (--max-seconds)`)
    killAll()
    process.exit(2)
  }, maxSeconds * 1000)
  watchdog.unref()

  const upstreamsChild = spawnChild(__filename, ['--role=upstreams'])
  const { urls } = await waitMessage(upstreamsChild, 'ready')
  let delay = args.delay === undefined ? undefined : numberArg(args, 'delay', 15)
  console.log(`hedge benchmark: ${rounds} rounds of a (healthy), b (faulty, no hedging), c (faulty, hedging); ` +
    `${fmt(requests)} requests per run at ${concurrency} concurrent; service time ${SERVICE_BASE} ms + exp(mean ${SERVICE_MEAN} ms); ` +
    `faulty: target ${FAULTY + 1} of 3 pauses ${PAUSE} ms on ${PAUSE_SHARE * 100}% of its requests\n`)
  const results = { a: [], b: [], c: [] }
  try {
    for (let round = 1; round <= rounds; round++) {
      for (const mode of ['a', 'b', 'c']) {
        const r = await run(upstreamsChild, urls, mode, delay, requests, concurrency)
        results[mode].push(r)
        if (mode === 'a' && delay === undefined) {
          delay = Math.max(1, Math.round(r.p95))
          console.log(`hedge delay: ${delay} ms (the p95 of the first healthy run)`)
        }
        const extra = mode === 'a' ? '' : `; paused ${fmt((r.paused / r.hits) * 100, 2)}% of upstream requests`
        const hedged = mode === 'c' ? `; hedges ${fmt(r.hedges)} (${fmt((r.hedges / requests) * 100, 1)}%), won ${fmt(r.won)}` : ''
        console.log(`round ${round} ${mode}: p50 ${fmt(r.p50, 2)} ms, p95 ${fmt(r.p95, 2)} ms, p99 ${fmt(r.p99, 2)} ms, failed ${r.failed}${extra}${hedged}`)
      }
    }
  } finally {
    await stopChild(upstreamsChild)
  }

  const names = { a: 'a. healthy', b: 'b. faulty, no hedging', c: `c. faulty, hedging (${delay} ms)` }
  const healthy = median(results.a.map((r) => r.p99))
  console.log(`\nmedians over ${rounds} rounds`)
  printTable(['run', 'p50 (ms)', 'p99 (ms)', 'p99 / healthy p99', 'per-round ratio (median)', 'hedges'], ['a', 'b', 'c'].map((mode) => {
    const runs = results[mode]
    const p99 = median(runs.map((r) => r.p99))
    const perRound = median(runs.map((r, i) => r.p99 / results.a[i].p99))
    const hedges = mode === 'c' ? `${fmt((median(runs.map((r) => r.hedges)) / requests) * 100, 1)}% of requests` : '-'
    return [names[mode], fmt(median(runs.map((r) => r.p50)), 2), fmt(p99, 2), fmt(p99 / healthy, 2), fmt(perRound, 2), hedges]
  }))
  const ratioC = median(results.c.map((r) => r.p99)) / healthy
  const ratioB = median(results.b.map((r) => r.p99)) / healthy
  console.log(`\np99(c)/p99(a) = ${ratioC.toFixed(2)}, p99(b)/p99(a) = ${ratioB.toFixed(2)}`)
  console.log(`${ratioC <= 1.5 ? 'PASS' : 'FAIL'}  p99 with hedging within 1.5x the healthy p99 (ratio ${ratioC.toFixed(2)})`)
  clearTimeout(watchdog)
}

if (args.role === 'upstreams') {
  upstreams()
} else if (args.role === 'gateway') {
  gateway()
} else {
  main().catch((error) => {
    console.error(error)
    process.exitCode = 1
  })
}
