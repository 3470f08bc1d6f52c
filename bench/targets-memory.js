'use strict'

// `npm run bench:targets`: what a target costs while it is idle, and what active checks
// cost in CPU, for pools of thousands of targets (as service discovery produces).
//
// 1. Heap per idle target: a pool of N targets (added at run time, as discovery adds
//    them) on distinct loopback origins where nothing listens; no request is sent, so no
//    connection is opened. Heap used (after a forced GC) with the targets, less heap used
//    before they were added, over N. Each size in a fresh process, `--repeat` times.
// 2. The same at --used targets (default 1,000) that each got one request from real
//    servers, then once more after the idle sweep closed their connection pools.
// 3. CPU of active checks (HTTP, every --interval ms) at --cpu-targets targets, each on
//    its own port of a server process: the gateway process's own CPU (process.cpuUsage)
//    over --duration seconds, after --warmup seconds, beside the same pool without checks.
//
//   node bench/targets-memory.js [--sizes=1000,10000] [--repeat=3] [--used=1000]
//     [--cpu-targets=1000] [--interval=1000] [--duration=10] [--warmup=10] [--rounds=3]
//     [--only=heap|used|cpu]

const http = require('node:http')
const path = require('node:path')
const { parseArgs, numberArg, fmt, median, printTable, spawnChild, waitMessage, stopChild, killAll } = require('./common')

const args = parseArgs(process.argv.slice(2))
const BUDGET = 5 * 1024 // bytes of heap per idle target
const WATCHDOG = 15 * 60_000

/** Distinct origins on loopback: 250 addresses × as many ports as needed. */
function idleUrl (i) {
  return `http://127.0.0.${2 + (i % 250)}:${20000 + Math.floor(i / 250)}`
}

function heap () {
  global.gc()
  global.gc()
  const usage = process.memoryUsage()
  return { heap: usage.heapUsed, external: usage.external }
}

function plugin () {
  return {
    Fastify: require('fastify'),
    fastifyUpstream: require('../dist/index.js'),
    internalPool: require('../dist/upstream/pool.js').internalPool
  }
}

// ---- children -----------------------------------------------------------------------

/** Child: `count` HTTP servers on 127.0.0.1, one port each; counts the probes they get. */
async function servers (count) {
  const body = Buffer.from('ok')
  let probes = 0
  const list = []
  const handler = (req, res) => {
    if (req.url === '/health') probes++
    req.resume()
    res.writeHead(200, { 'content-length': body.length })
    res.end(body)
  }
  for (let i = 0; i < count; i++) {
    const server = http.createServer(handler)
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    list.push(server)
  }
  process.on('message', (message) => {
    if (message?.type === 'probes') process.send({ type: 'probes', probes })
    else if (message?.type === 'close-idle') for (const server of list) server.closeIdleConnections()
  })
  process.send({ type: 'ready', urls: list.map((s) => `http://127.0.0.1:${s.address().port}`) })
}

/** Child: heap per idle target at `count` targets. */
async function heapChild (count) {
  const { Fastify, fastifyUpstream, internalPool } = plugin()
  const app = Fastify({ logger: false })
  await app.register(fastifyUpstream, { upstreams: { idle: { targets: [idleUrl(count)] } } })
  await app.ready()
  const api = app.upstreams.get('idle')
  // warm the add path up (JIT, the pool's arrays) with targets that are removed again
  for (let i = 0; i < 100; i++) api.addTarget(idleUrl(count + 1 + i))
  for (let i = 0; i < 100; i++) await api.removeTarget(idleUrl(count + 1 + i))
  const before = heap()
  for (let i = 0; i < count; i++) api.addTarget(idleUrl(i))
  const after = heap()
  const pools = internalPool(api).connections.size
  await app.close()
  process.send({ type: 'result', heap: (after.heap - before.heap) / count, external: (after.external - before.external) / count, pools })
}

/** Child: heap per target at `urls.length` targets, idle, after one request each, after the sweep. */
async function usedChild (urls, warm) {
  const { Fastify, fastifyUpstream, internalPool } = plugin()
  const app = Fastify({ logger: false })
  await app.register(fastifyUpstream, {
    upstreams: { used: { targets: [idleUrl(0)], balancer: 'round-robin' } },
    routes: [{ prefix: '/', upstream: 'used' }]
  })
  await app.ready()
  const api = app.upstreams.get('used')
  const connections = internalPool(api).connections
  // warm the request path up (JIT, caches) on a server of its own, which then leaves: its
  // one-off cost is not the targets'
  api.addTarget(warm)
  await api.removeTarget(idleUrl(0))
  for (let i = 0; i < 2000; i++) await app.inject({ method: 'GET', url: '/x' })
  await api.removeTarget(warm)
  connections.sweep()
  const before = heap()
  for (const url of urls) api.addTarget(url)
  const idle = heap()
  let failed = 0
  for (let i = 0; i < urls.length; i++) {
    const res = await app.inject({ method: 'GET', url: '/x' })
    if (res.statusCode !== 200) failed++
  }
  const withPools = connections.size
  // the servers end their keep-alive connections (as their keep-alive timeout would)
  process.send({ type: 'close-idle' })
  await waitFor(() => internalPool(api).targetList.every((t) => t.connection.stats.connected === 0))
  const used = heap()
  // two sweeps: the first notes the request counts, the second finds nothing changed
  connections.sweep()
  connections.sweep()
  const afterPools = connections.size
  await new Promise((resolve) => setTimeout(resolve, 100))
  const swept = heap()
  await app.close()
  const per = (m) => (m.heap - before.heap) / urls.length
  process.send({ type: 'result', idle: per(idle), used: per(used), swept: per(swept), withPools, afterPools, failed })
}

async function waitFor (check, timeout = 20_000) {
  const deadline = Date.now() + timeout
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for the keep-alive connections to close')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** Child: a gateway with `urls` as targets, with or without active checks; reports its CPU. */
async function gatewayChild (urls, checks, interval, warmup, duration) {
  const { Fastify, fastifyUpstream, internalPool } = plugin()
  const app = Fastify({ logger: false })
  const healthCheck = checks ? { active: { path: '/health', interval, timeout: 1000 } } : undefined
  await app.register(fastifyUpstream, { upstreams: { pool: { targets: urls, healthCheck } } })
  await app.ready() // with checks: the first round of probes is done
  process.send({ type: 'ready' })
  await new Promise((resolve) => setTimeout(resolve, warmup * 1000))
  process.send({ type: 'start' })
  const cpu = process.cpuUsage()
  const start = performance.now()
  await new Promise((resolve) => setTimeout(resolve, duration * 1000))
  const used = process.cpuUsage(cpu)
  const wall = performance.now() - start
  process.send({ type: 'stop' })
  const pool = app.upstreams.get('pool')
  const available = pool.targets.filter((t) => t.state === 'healthy').length
  const pools = internalPool(pool).connections.size
  const memory = heap()
  await app.close()
  process.send({ type: 'result', user: used.user, system: used.system, wall, available, pools, heap: memory.heap })
}

// ---- parent -------------------------------------------------------------------------

const self = path.join(__dirname, 'targets-memory.js')

function child (role, extra = []) {
  return spawnChild(self, [`--role=${role}`, ...extra], { execArgv: ['--expose-gc'] })
}

async function runHeap (sizes, repeat) {
  const rows = []
  const figures = []
  for (const size of sizes) {
    const heaps = []
    const externals = []
    for (let r = 0; r < repeat; r++) {
      const c = child('heap', [`--targets=${size}`])
      const result = await waitMessage(c, 'result', 120_000)
      await stopChild(c)
      if (result.pools !== 0) throw new Error(`${result.pools} connection pools made with no request`)
      heaps.push(result.heap)
      externals.push(result.external)
    }
    const per = median(heaps)
    figures.push({ size, per })
    rows.push([fmt(size), heaps.map((h) => fmt(h)).join(' / '), fmt(per), fmt(median(externals)), per <= BUDGET ? 'PASS' : 'FAIL'])
  }
  console.log(`\nheap per idle target (bytes; fresh process each, median of ${repeat}; no connection pool made)\n`)
  printTable(['targets', 'heap per target, each run', 'median', 'external per target', '<= 5 KiB'], rows)
  return figures
}

async function runUsed (urls, repeat) {
  const rows = []
  for (let r = 0; r < repeat; r++) {
    const c = child('used')
    c.on('message', (message) => {
      if (message?.type === 'close-idle') runUsed.servers.send({ type: 'close-idle' })
    })
    c.send({ type: 'urls', urls, warm: runUsed.warm })
    const result = await waitMessage(c, 'result', 120_000)
    await stopChild(c)
    rows.push(result)
  }
  const med = (key) => median(rows.map((row) => row[key]))
  console.log(`\n${fmt(urls.length)} targets, one request each, then idle (heap bytes per target, median of ${repeat})\n`)
  printTable(['phase', 'heap per target', 'connection pools'], [
    ['idle, never used', fmt(med('idle')), '0'],
    ['after one request each (keep-alive closed)', fmt(med('used')), fmt(med('withPools'))],
    ['after the idle sweep', fmt(med('swept')), fmt(med('afterPools'))]
  ])
  const failed = rows.reduce((sum, row) => sum + row.failed, 0)
  if (failed > 0) console.log(`${failed} requests failed`)
  return { idle: med('idle'), used: med('used'), swept: med('swept') }
}

async function runCpu (servers, urls, rounds, interval, warmup, duration) {
  const results = { checks: [], none: [] }
  for (let r = 0; r < rounds; r++) {
    // alternate the order each round
    const order = r % 2 === 0 ? [true, false] : [false, true]
    for (const checks of order) {
      const c = child('gateway', [`--checks=${checks}`, `--interval=${interval}`, `--warmup=${warmup}`, `--duration=${duration}`])
      // 'result' follows 'stop' at once: listen for it from the start
      const outcome = waitMessage(c, 'result', (warmup + duration + 120) * 1000)
      outcome.catch(() => {})
      c.send({ type: 'urls', urls })
      await waitMessage(c, 'ready', 60_000)
      await waitMessage(c, 'start', (warmup + 10) * 1000)
      servers.send({ type: 'probes' })
      const first = (await waitMessage(servers, 'probes')).probes
      await waitMessage(c, 'stop', (duration + 10) * 1000)
      servers.send({ type: 'probes' })
      const last = (await waitMessage(servers, 'probes')).probes
      const result = await outcome
      await stopChild(c)
      const cpuMs = (result.user + result.system) / 1000
      const probes = last - first
      results[checks ? 'checks' : 'none'].push({
        cpuPerSecond: cpuMs / (result.wall / 1000),
        probesPerSecond: probes / (result.wall / 1000),
        perProbe: probes > 0 ? (cpuMs * 1000) / probes : 0,
        available: result.available,
        pools: result.pools,
        heap: result.heap
      })
    }
  }
  const rows = []
  for (const [name, list] of [['active checks every ' + fmt(interval) + ' ms', results.checks], ['no checks', results.none]]) {
    const med = (key) => median(list.map((row) => row[key]))
    rows.push([
      name,
      list.map((row) => fmt(row.cpuPerSecond, 1)).join(' / '),
      fmt(med('cpuPerSecond'), 1),
      fmt(med('cpuPerSecond') / 10, 2) + '%',
      fmt(med('probesPerSecond')),
      fmt(med('perProbe'), 1),
      fmt(med('available')),
      fmt(med('pools')),
      fmt(med('heap') / 1024 / 1024, 1)
    ])
  }
  console.log(`\n${fmt(urls.length)} targets, gateway CPU over ${duration} s after ${warmup} s (fresh process each, median of ${rounds})\n`)
  printTable(['pool', 'CPU ms/s, each run', 'median', 'of one core', 'probes/s', 'CPU µs/probe', 'healthy', 'connection pools', 'heap MiB'], rows)
  return results
}

async function main () {
  const sizes = String(args.sizes ?? '1000,10000').split(',').map(Number)
  const repeat = numberArg(args, 'repeat', 3)
  const usedCount = numberArg(args, 'used', 1000)
  const cpuTargets = numberArg(args, 'cpu-targets', 1000)
  const interval = numberArg(args, 'interval', 1000)
  const duration = numberArg(args, 'duration', 10)
  // startup work (JIT, GC threads) still shows a few seconds in: an idle gateway used
  // 6-8 ms of CPU a second 3 s after it started, 0.1 ms 10 s after
  const warmup = numberArg(args, 'warmup', 10)
  const rounds = numberArg(args, 'rounds', 3)
  const only = args.only
  const watchdog = setTimeout(() => {
    console.error(`watchdog: still running after ${WATCHDOG / 60_000} min, stopping`)
    killAll()
    process.exit(2)
  }, WATCHDOG)
  watchdog.unref()

  console.log(`node ${process.version}, ${require('node:os').cpus()[0]?.model ?? 'unknown CPU'} × ${require('node:os').availableParallelism()}`)
  if (only !== undefined && !['heap', 'used', 'cpu'].includes(only)) throw new Error('--only must be heap, used or cpu')
  const run = (part) => only === undefined || only === part
  if (run('heap')) await runHeap(sizes, repeat)
  if (only === 'heap') return
  const count = Math.max(usedCount, cpuTargets)
  // one more server: the one the request path is warmed up on
  const servers = child('servers', [`--count=${count + 1}`])
  const { urls } = await waitMessage(servers, 'ready', 120_000)
  try {
    if (run('used')) {
      runUsed.servers = servers
      runUsed.warm = urls[count]
      await runUsed(urls.slice(0, usedCount), repeat)
    }
    if (run('cpu')) await runCpu(servers, urls.slice(0, cpuTargets), rounds, interval, warmup, duration)
  } finally {
    await stopChild(servers)
  }
}

if (args.role === undefined) {
  main().then(() => process.exit(0), (error) => {
    console.error(error)
    killAll()
    process.exit(1)
  })
} else {
  // a child ends with its parent, or when told to
  process.on('disconnect', () => process.exit(0))
  process.on('message', (message) => { if (message?.type === 'close') process.exit(0) })
  const withUrls = (run) => process.once('message', (message) => { run(message.urls, message.warm).catch(fail) })
  const fail = (error) => {
    console.error(error)
    process.exit(1)
  }
  if (args.role === 'servers') servers(Number(args.count)).catch(fail)
  else if (args.role === 'heap') heapChild(Number(args.targets)).catch(fail)
  else if (args.role === 'used') withUrls(usedChild)
  else if (args.role === 'gateway') {
    withUrls((urls) => gatewayChild(urls, args.checks === 'true', Number(args.interval), Number(args.warmup), Number(args.duration)))
  }
}
