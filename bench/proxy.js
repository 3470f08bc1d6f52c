'use strict'

// Proxy benchmark: fastify-upstream (three targets, least-request, a `routes` mount on '/')
// against bare @fastify/reply-from (`base` = one upstream, `reply.from()` in a catch-all
// route). Each proxy runs in its own child process, the three upstream servers in a third;
// autocannon drives the load from this process, in alternating rounds (plugin then bare,
// bare then plugin, ...). CPU per request is the proxy process's own CPU time (user +
// system, from process.cpuUsage() in the child, asked over IPC before and after the
// round) divided by the requests completed in the round.
//
// Every round starts both proxies afresh and warms each up before measuring it (as JMH
// runs several forks): the JIT's choices, made once per process, persist for its life,
// and with the same two processes through every round a whole run's CPU ratio moved
// between 1.07 and 1.29 from run to run of the same code. Fresh processes make each
// round an independent sample, and the median sees past an unlucky one.
//
//   node bench/proxy.js [--rounds=7] [--duration=4] [--warmup=2] [--connections=50] [--path=/hello]
//                       [--no-pin]             do not pin the processes to CPUs (taskset)
//                       [--wait-quiet=SECONDS] first wait (at most that long) for an idle machine
//                       [--cpu-prof[=DIR]]     profile both proxy children with --cpu-prof
//
// Needs the built plugin (npm run build). Loopback only; bounded in time (a watchdog ends
// the run); the children are killed at the end, on error and on SIGINT/SIGTERM.

const path = require('node:path')
const os = require('node:os')
const fs = require('node:fs')
const { performance } = require('node:perf_hooks')
const autocannon = require('autocannon')
const {
  parseArgs, numberArg, median, fmt, printTable, spawnChild, waitMessage, stopChild, killAll, cpuPlan, pin,
  machineBusy, waitQuiet
} = require('./common')

const TARGETS = { throughput: 0.95, cpu: 1.05 }
/** a round is "contended" when other work took more than this many cores of the machine */
const CONTENDED = 0.25
const BODY = '{"hello":"world"}'

function options (args) {
  let cpuProf
  if (args['cpu-prof'] !== undefined) {
    cpuProf = typeof args['cpu-prof'] === 'string'
      ? path.resolve(args['cpu-prof'])
      : fs.mkdtempSync(path.join(os.tmpdir(), 'fastify-upstream-prof-'))
    fs.mkdirSync(cpuProf, { recursive: true })
  }
  return {
    rounds: Math.max(5, Math.round(numberArg(args, 'rounds', 7))),
    duration: numberArg(args, 'duration', 4),
    warmup: numberArg(args, 'warmup', 2),
    connections: Math.round(numberArg(args, 'connections', 50)),
    path: typeof args.path === 'string' ? args.path : '/hello',
    waitQuiet: args['wait-quiet'] === undefined ? 0 : numberArg(args, 'wait-quiet', 60),
    cpus: args['no-pin'] === true ? undefined : cpuPlan(),
    cpuProf
  }
}

/** A function that asks `child` for its { cpu, ... } over IPC. */
function statsOf (child) {
  let nextId = 0
  return async () => {
    const id = ++nextId
    child.send({ type: 'stats', id })
    return waitMessage(child, 'stats', 5000)
  }
}

const cpuMicros = (before, after) => (after.user - before.user) + (after.system - before.system)

async function startProxy (kind, urls, { cpuProf, cpus }) {
  const execArgv = cpuProf === undefined
    ? []
    : ['--cpu-prof', `--cpu-prof-dir=${cpuProf}`, `--cpu-prof-name=${kind}.${Date.now()}.cpuprofile`]
  const child = spawnChild(path.join(__dirname, 'proxy-server.js'), [kind, urls.join(',')], { execArgv })
  const { url } = await waitMessage(child, 'ready', 15_000)
  if (cpus !== undefined) pin(child.pid, cpus.proxy)
  return { kind, url, child, stats: statsOf(child), served: 0 }
}

/** One request through the proxy, to fail early and clearly when it does not work. */
async function check (proxy, urlPath) {
  const res = await fetch(proxy.url + urlPath, { signal: AbortSignal.timeout(5000) })
  const text = await res.text()
  if (res.status !== 200 || text !== BODY) throw new Error(`${proxy.kind} proxy answered ${res.status} ${text.slice(0, 200)}`)
  proxy.served++
}

async function round (proxy, upstreamStats, opts) {
  const machine0 = machineBusy()
  const self0 = process.cpuUsage()
  const up0 = await upstreamStats()
  const before = await proxy.stats()
  const t0 = performance.now()
  const result = await autocannon({
    url: proxy.url + opts.path,
    connections: opts.connections,
    pipelining: 1,
    duration: opts.duration,
    timeout: 10
  })
  const after = await proxy.stats()
  const wall = (performance.now() - t0) * 1000
  const up1 = await upstreamStats()
  const self1 = process.cpuUsage()
  const machine1 = machineBusy()

  const requests = result.requests.total
  proxy.served += requests
  const proxyCpu = cpuMicros(before.cpu, after.cpu)
  // CPU the machine spent outside the processes of this benchmark (other work, and kernel
  // threads such as ksoftirqd that carry some of the loopback traffic), in cores
  const ours = proxyCpu + cpuMicros(up0.cpu, up1.cpu) + cpuMicros(self0, self1)
  const other = machine0 === undefined ? NaN : Math.max(0, (machine1 - machine0) - ours) / wall
  const active = after.elu.active - before.elu.active
  const idle = after.elu.idle - before.elu.idle
  return {
    kind: proxy.kind,
    requests,
    rps: requests / result.duration,
    cpuPerRequest: requests > 0 ? proxyCpu / requests : NaN,
    cores: proxyCpu / wall,
    elu: active / (active + idle),
    other,
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors: result.errors + result.timeouts + result.non2xx
  }
}

function roundRow (label, r) {
  return [
    label, r.kind, fmt(r.rps), fmt(r.requests), fmt(r.cpuPerRequest, 1), fmt(r.cores, 2), fmt(r.elu, 2),
    Number.isNaN(r.other) ? '-' : fmt(r.other, 2), fmt(r.p50), fmt(r.p99), fmt(r.errors)
  ]
}

function mediansOf (results) {
  return {
    rps: median(results.map((r) => r.rps)),
    cpu: median(results.map((r) => r.cpuPerRequest)),
    errors: results.reduce((n, r) => n + r.errors, 0)
  }
}

/** Starts a fresh proxy of `kind`, checks it, warms it up, measures one round, stops it. */
async function freshRound (kind, urls, upstreamStats, opts, profiled) {
  const proxy = await startProxy(kind, kind === 'plugin' ? urls : urls.slice(0, 1), opts)
  try {
    await check(proxy, opts.path)
    await round(proxy, upstreamStats, { ...opts, duration: opts.warmup })
    return await round(proxy, upstreamStats, opts)
  } finally {
    await stopChild(proxy.child)
    profiled.push(proxy)
  }
}

async function runProxyBench (args = {}) {
  const opts = options(args)
  const budgetMs = (opts.waitQuiet + opts.rounds * 2 * (opts.warmup + opts.duration + 8) + 60) * 1000
  const watchdog = setTimeout(() => {
    console.error(`proxy benchmark: still running after ${budgetMs / 1000} s, giving up`)
    killAll()
    process.exit(2)
  }, budgetMs)
  watchdog.unref()

  let upstreams
  const profiled = []
  try {
    console.log(`\n## Proxy throughput and CPU per request (${opts.rounds} rounds of ${opts.duration} s per proxy, ` +
      `each in a fresh process after a ${opts.warmup} s warm-up, ${opts.connections} connections, keep-alive, GET ${opts.path})\n`)
    if (opts.waitQuiet > 0) {
      const quiet = await waitQuiet(opts.waitQuiet)
      console.log(quiet ? 'machine idle: starting' : `machine still busy after ${opts.waitQuiet} s: starting anyway`)
    }
    upstreams = spawnChild(path.join(__dirname, 'upstreams.js'), ['3'])
    const { urls } = await waitMessage(upstreams, 'ready', 10_000)
    if (opts.cpus !== undefined) {
      pin(process.pid, opts.cpus.parent)
      pin(upstreams.pid, opts.cpus.upstreams)
    }
    console.log(`upstreams: ${urls.join(', ')} (pid ${upstreams.pid})`)
    console.log(opts.cpus === undefined
      ? 'CPU pinning: off'
      : `CPU pinning: load generator on CPU ${opts.cpus.parent}, upstreams on ${opts.cpus.upstreams}, each proxy on ${opts.cpus.proxy}`)
    console.log('')

    const upstreamStats = statsOf(upstreams)
    const rows = []
    const results = { plugin: [], bare: [] }
    for (let i = 1; i <= opts.rounds; i++) {
      for (const kind of i % 2 === 1 ? ['plugin', 'bare'] : ['bare', 'plugin']) {
        const r = await freshRound(kind, urls, upstreamStats, opts, profiled)
        rows.push(roundRow(String(i), r))
        console.log(`  ${i} ${r.kind}: ${fmt(r.rps)} req/s, ${fmt(r.cpuPerRequest, 1)} µs CPU/req, ELU ${fmt(r.elu, 2)}` +
          `, other load ${Number.isNaN(r.other) ? '?' : fmt(r.other, 2)} cores` + (r.errors > 0 ? `, ${r.errors} errors/non-2xx` : ''))
        results[kind].push(r)
      }
    }
    upstreams.send({ type: 'hits' })
    const { hits } = await waitMessage(upstreams, 'hits', 5000)

    console.log('')
    printTable(['round', 'proxy', 'req/s', 'requests', 'CPU µs/req', 'cores', 'ELU', 'other', 'p50 ms', 'p99 ms', 'errors'], rows)
    console.log('(cores: CPU the proxy used / wall time; ELU: its event-loop utilisation; other: cores the machine spent outside the benchmark)')

    const m = { plugin: mediansOf(results.plugin), bare: mediansOf(results.bare) }
    const ratios = { throughput: m.plugin.rps / m.bare.rps, cpu: m.plugin.cpu / m.bare.cpu }
    // each plugin round against the bare round of the same round: slow drift cancels out
    const paired = {
      throughput: median(results.plugin.map((r, i) => r.rps / results.bare[i].rps)),
      cpu: median(results.plugin.map((r, i) => r.cpuPerRequest / results.bare[i].cpuPerRequest))
    }
    const pass = { throughput: ratios.throughput >= TARGETS.throughput, cpu: ratios.cpu <= TARGETS.cpu }
    console.log('\nMedians over the measured rounds:\n')
    printTable(['proxy', 'req/s', 'CPU µs/req', 'errors'], [
      ['plugin (3 targets, least-request)', fmt(m.plugin.rps), fmt(m.plugin.cpu, 1), fmt(m.plugin.errors)],
      ['bare @fastify/reply-from (1 target)', fmt(m.bare.rps), fmt(m.bare.cpu, 1), fmt(m.bare.errors)]
    ])
    console.log(`\nrequests per upstream (all rounds, warm-ups included): ${hits.map((h, i) => `${urls[i]} ${fmt(h)}`).join(', ')}`)
    const contended = [...results.plugin, ...results.bare].filter((r) => r.other > CONTENDED).length
    if (contended > 0) {
      console.log(`NOTE: in ${contended} of ${2 * opts.rounds} rounds other work took more than ${CONTENDED} cores of the machine; ` +
        'throughput figures of those rounds are not comparable')
    }
    if (m.plugin.errors + m.bare.errors > 0) console.log('WARNING: some requests failed; the figures are suspect')
    console.log(`\nthroughput ratio plugin/bare:      ${ratios.throughput.toFixed(3)} (target >= ${TARGETS.throughput}) ` +
      `${pass.throughput ? 'PASS' : 'FAIL'}   [median of paired rounds: ${paired.throughput.toFixed(3)}]`)
    console.log(`CPU per request ratio plugin/bare: ${ratios.cpu.toFixed(3)} (target <= ${TARGETS.cpu}) ` +
      `${pass.cpu ? 'PASS' : 'FAIL'}   [median of paired rounds: ${paired.cpu.toFixed(3)}]`)
    return { medians: m, ratios, paired, pass, rounds: results, hits, contended }
  } finally {
    clearTimeout(watchdog)
    if (upstreams !== undefined) await stopChild(upstreams)
    if (opts.cpuProf !== undefined) {
      console.log(`\nCPU profiles of the proxy children in ${opts.cpuProf} ` +
        `(${profiled.map((p) => `${p.kind}: pid ${p.child.pid}, ${fmt(p.served)} requests`).join('; ')}); ` +
        'summarise with node bench/profile-summary.js FILE --requests=N')
    }
  }
}

module.exports = { runProxyBench }

if (require.main === module) {
  runProxyBench(parseArgs(process.argv.slice(2))).then(() => process.exit(0), (error) => {
    console.error(error)
    killAll()
    process.exit(1)
  })
}
