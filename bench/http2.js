'use strict'

// HTTP/2 to the targets: the plugin's mount over three h2c targets (`http2: 'h2c'`)
// against the same over three HTTP/1.1 targets, in alternating rounds, each proxy a fresh
// process warmed up first (as proxy.js). For each: requests per second, the proxy
// process's CPU per request, the targets' CPU per request, and the upstream connections
// the proxy opened in its life (TCP connections the HTTP/1.1 targets accepted, HTTP/2
// sessions the h2c targets did) and held at the end of its round. Three proxies:
//   h1        HTTP/1.1 targets, default options (no connection limit)
//   h2c       h2c targets, http2: 'h2c', default options (no connection limit)
//   h2c-max1  the same with maxConnections: 1 (every request of a target on one connection)
// autocannon drives the load from this process (HTTP/1.1 to the proxy, keep-alive).
//
//   node bench/http2.js [--rounds=5] [--duration=4] [--warmup=2] [--connections=50]
//                       [--proxies=h1,h2c,h2c-max1] [--no-pin]
//
// Needs the built plugin (npm run build). Loopback only; bounded in time (a watchdog ends
// the run); the children are killed at the end, on error and on SIGINT/SIGTERM.

const path = require('node:path')
const { performance } = require('node:perf_hooks')
const autocannon = require('autocannon')
const { parseArgs, numberArg, median, fmt, printTable, spawnChild, waitMessage, stopChild, killAll, cpuPlan, pin } = require('./common')

const SERVERS = path.join(__dirname, 'http2-servers.js')
const BODY = '{"hello":"world"}'
const KINDS = ['h1', 'h2c', 'h2c-max1']

const args = parseArgs(process.argv.slice(2))
const rounds = Math.round(numberArg(args, 'rounds', 5))
const duration = numberArg(args, 'duration', 4)
const warmup = numberArg(args, 'warmup', 2)
const connections = Math.round(numberArg(args, 'connections', 50))
const kinds = typeof args.proxies === 'string' ? args.proxies.split(',') : KINDS
for (const kind of kinds) if (!KINDS.includes(kind)) throw new Error(`--proxies: unknown proxy ${kind}`)
const cpus = args['no-pin'] === true ? undefined : cpuPlan()

async function stats (child) {
  child.send({ type: 'stats' })
  return await waitMessage(child, 'stats', 5000)
}

const micros = (before, after) => (after.user - before.user) + (after.system - before.system)

async function load (url, seconds) {
  return await autocannon({ url: url + '/users/1', connections, pipelining: 1, duration: seconds, timeout: 10 })
}

/** A fresh proxy of `kind` over `targets`: checked, warmed up, measured for one round, stopped. */
async function freshRound (kind, targets) {
  const before = await stats(targets.child)
  const proxy = spawnChild(SERVERS, ['proxy', kind, targets.urls.join(',')])
  try {
    const { url } = await waitMessage(proxy, 'ready', 15_000)
    if (cpus !== undefined) pin(proxy.pid, cpus.proxy)
    const res = await fetch(url + '/users/1', { signal: AbortSignal.timeout(5000) })
    const text = await res.text()
    if (res.status !== 200 || text !== BODY) throw new Error(`${kind} proxy answered ${res.status} ${text.slice(0, 200)}`)
    await load(url, warmup)
    const p0 = await stats(proxy)
    const t0 = await stats(targets.child)
    const started = performance.now()
    const result = await load(url, duration)
    const wall = (performance.now() - started) * 1000
    const p1 = await stats(proxy)
    const t1 = await stats(targets.child)
    const requests = result.requests.total
    return {
      kind,
      requests,
      rps: requests / result.duration,
      cpu: micros(p0.cpu, p1.cpu) / requests,
      cores: micros(p0.cpu, p1.cpu) / wall,
      targetCpu: micros(t0.cpu, t1.cpu) / requests,
      opened: t1.opened - before.opened,
      open: t1.open,
      p50: result.latency.p50,
      p99: result.latency.p99,
      errors: result.errors + result.timeouts + result.non2xx
    }
  } finally {
    await stopChild(proxy)
  }
}

async function main () {
  const budgetMs = (rounds * kinds.length * (warmup + duration + 10) + 60) * 1000
  const watchdog = setTimeout(() => {
    console.error(`http2 benchmark: still running after ${budgetMs / 1000} s, giving up`)
    killAll()
    process.exit(2)
  }, budgetMs)
  watchdog.unref()
  const targets = {}
  try {
    for (const protocol of ['h1', 'h2c']) {
      const child = spawnChild(SERVERS, ['targets', protocol, '3'])
      const { urls } = await waitMessage(child, 'ready', 10_000)
      if (cpus !== undefined) pin(child.pid, cpus.upstreams)
      targets[protocol] = { child, urls }
    }
    if (cpus !== undefined) pin(process.pid, cpus.parent)
    console.log(`HTTP/2 to the targets: ${rounds} rounds of ${duration} s per proxy, each a fresh process after a ${warmup} s warm-up, ` +
      `${connections} client connections (HTTP/1.1, keep-alive), GET /users/1, 3 targets, least-request`)
    console.log(cpus === undefined
      ? 'CPU pinning: off'
      : `CPU pinning: load generator on CPU ${cpus.parent}, targets on ${cpus.upstreams}, each proxy on ${cpus.proxy}`)
    console.log(`started ${new Date().toISOString()}\n`)
    const results = Object.fromEntries(kinds.map((kind) => [kind, []]))
    const rows = []
    for (let i = 1; i <= rounds; i++) {
      const shift = (i - 1) % kinds.length
      for (const kind of [...kinds.slice(shift), ...kinds.slice(0, shift)]) {
        const r = await freshRound(kind, targets[kind === 'h1' ? 'h1' : 'h2c'])
        results[kind].push(r)
        rows.push([String(i), kind, fmt(r.rps), fmt(r.cpu, 1), fmt(r.cores, 2), fmt(r.targetCpu, 1), fmt(r.opened), fmt(r.open), fmt(r.p50), fmt(r.p99), fmt(r.errors)])
        console.log(`  ${i} ${kind}: ${fmt(r.rps)} req/s, ${fmt(r.cpu, 1)} µs CPU/req in the proxy, ${fmt(r.targetCpu, 1)} in the targets, ` +
          `${r.opened} upstream connections opened, ${r.open} open` + (r.errors > 0 ? `, ${r.errors} errors/non-2xx` : ''))
      }
    }
    console.log('')
    printTable(['round', 'proxy', 'req/s', 'proxy CPU µs/req', 'proxy cores', 'targets CPU µs/req', 'conns opened', 'conns open', 'p50 ms', 'p99 ms', 'errors'], rows)
    const m = Object.fromEntries(kinds.map((kind) => {
      const list = results[kind]
      return [kind, {
        rps: median(list.map((r) => r.rps)),
        cpu: median(list.map((r) => r.cpu)),
        targetCpu: median(list.map((r) => r.targetCpu)),
        opened: median(list.map((r) => r.opened)),
        open: median(list.map((r) => r.open)),
        p99: median(list.map((r) => r.p99)),
        errors: list.reduce((n, r) => n + r.errors, 0)
      }]
    }))
    const base = kinds.includes('h1') ? 'h1' : undefined
    console.log('\nMedians, and ratios to h1 (paired: the median of per-round ratios):\n')
    printTable(['proxy', 'req/s', 'proxy CPU µs/req', 'targets CPU µs/req', 'conns opened', 'conns open', 'p99 ms', 'errors', 'throughput ratio', 'CPU ratio', 'paired'], kinds.map((kind) => {
      const x = m[kind]
      const paired = base === undefined || kind === base
        ? ''
        : `${median(results[kind].map((r, i) => r.rps / results[base][i].rps)).toFixed(3)} / ${median(results[kind].map((r, i) => r.cpu / results[base][i].cpu)).toFixed(3)}`
      return [kind, fmt(x.rps), fmt(x.cpu, 1), fmt(x.targetCpu, 1), fmt(x.opened), fmt(x.open), fmt(x.p99), fmt(x.errors),
        base === undefined || kind === base ? '' : (x.rps / m[base].rps).toFixed(3),
        base === undefined || kind === base ? '' : (x.cpu / m[base].cpu).toFixed(3), paired]
    }))
    console.log(`\nfinished ${new Date().toISOString()}`)
    if (Object.values(m).some((x) => x.errors > 0)) console.log('WARNING: some requests failed; the figures are suspect')
  } finally {
    clearTimeout(watchdog)
    for (const { child } of Object.values(targets)) await stopChild(child)
  }
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  killAll()
  process.exit(1)
})
