'use strict'

// Proxy benchmark: fastify-upstream (three targets, least-request) against bare
// @fastify/reply-from (`base` = one upstream, `reply.from()` in a catch-all route). By
// default the plugin runs three times: mounted with `routes: [{ prefix: '/', upstream:
// 'pool' }]` and default options (which buffer small responses, see `responseBuffer`);
// used as its README uses it, a handler route `GET /users/:id` calling
// `reply.forward('pool', { url: '/v1/users/' + id })`, default options; and mounted with
// `responseBuffer: 0` (every response streamed, as bare does). More on request
// (`--proxies`): the mount with `forwardedHeaders: 'none'` (bare sends no X-Forwarded-*
// headers); `xff-floor`, reply-from over the three targets adding the three X-Forwarded-*
// headers in `rewriteRequestHeaders` and nothing else: what those headers cost any
// reply-from proxy that streams; `bare-forward`, bare reply-from with plugin-forward's
// route and URL. The requests cycle through 1,000 distinct paths (`/users/<id>?page=<n>`,
// every connection starting at a different place in the cycle), so that no cache keyed by
// the path (reply-from keeps parsed URLs in an LRU of 100) serves most of them from the
// cache. Each proxy runs in its own child process, the three upstream
// servers in another; autocannon drives the load from this process, the proxies taking
// turns in an order that rotates every round. CPU per request is the proxy process's own
// CPU time (user + system, from process.cpuUsage() in the child, asked over IPC before and
// after the round) divided by the requests completed in the round.
//
// Every round starts each proxy afresh and warms it up before measuring it (as JMH
// runs several forks): the JIT's choices, made once per process, persist for its life,
// and with the same processes through every round a whole run's CPU ratio moved
// between 1.07 and 1.29 from run to run of the same code. Fresh processes make each
// round an independent sample, and the median sees past an unlucky one.
//
//   node bench/proxy.js [--rounds=7] [--duration=4] [--warmup=2] [--connections=50]
//                       [--paths=1000]         distinct paths requested, cycled
//                       [--path=/users/1]      one fixed path instead (plugin-forward and
//                                              bare-forward serve /users/:id only)
//                       [--proxies=plugin,plugin-forward,plugin-stream,bare]   which to run (bare
//                                              always; also plugin-no-xff, plugin-split, xff-floor, bare-forward)
//                       [--no-pin]             do not pin the processes to CPUs (taskset)
//                       [--wait-quiet=SECONDS] first wait (at most that long) for an idle machine
//                       [--cpu-prof[=DIR]]     profile every proxy process with --cpu-prof
//                       [--baseline=DIR]       also run each plugin proxy on the build in DIR (the
//                                              `dist/` of another commit, DIR/index.js), as
//                                              `plugin@baseline`, ..., in the same rounds
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
/** every proxy the benchmark knows, as proxy-server.js names them; bare is the baseline */
const PROXIES = {
  plugin: "plugin, 3 targets, least-request, default options, mount on '/'",
  'plugin-forward': 'plugin, the same pool, GET /users/:id -> reply.forward()',
  'plugin-stream': 'plugin mount, the same with responseBuffer: 0 (streaming)',
  'plugin-no-xff': "plugin mount, the same with forwardedHeaders: 'none'",
  'plugin-split': 'plugin mount on a split: 95 / 5 between two pools of the same 3 targets',
  'xff-floor': 'reply-from over the 3 targets adding x-forwarded-* (floor)',
  'bare-forward': 'bare reply-from, 1 target, GET /users/:id -> reply.from()',
  bare: 'bare @fastify/reply-from, 1 target'
}
/** the proxies run when --proxies does not say */
const DEFAULT_PROXIES = ['plugin', 'plugin-forward', 'plugin-stream', 'bare']
/** the configurations the targets are for (default options); the others are references */
const TARGETED = new Set(['plugin', 'plugin-forward'])
/** the proxies whose route sends /users/<id> upstream as /v1/users/<id> */
const V1 = new Set(['plugin-forward', 'bare-forward'])
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
    paths: typeof args.path === 'string' ? [args.path] : requestPaths(Math.round(numberArg(args, 'paths', 1000))),
    proxies: proxyList(args.proxies, args.baseline),
    baseline: baselineEntry(typeof args.baseline === 'string' ? args.baseline : undefined),
    waitQuiet: args['wait-quiet'] === undefined ? 0 : numberArg(args, 'wait-quiet', 60),
    cpus: args['no-pin'] === true ? undefined : cpuPlan(),
    cpuProf
  }
}

/**
 * `count` distinct request paths, `/users/<id>?page=<n>`. The ids are distinct too (a
 * permutation of 1..100000), so that the path without its query, which bare reply-from
 * keys its URL cache with, is distinct as well.
 */
function requestPaths (count) {
  if (count > 100_000) throw new Error('--paths: at most 100000')
  const paths = []
  for (let i = 0; i < count; i++) paths.push(`/users/${1 + ((i * 7919) % 100_000)}?page=${1 + (i % 10)}`)
  return paths
}

/**
 * autocannon's `setupClient`: every connection cycles through all of `paths`, each from a
 * different starting point spread evenly over the cycle. (With the same start, the 50
 * connections would walk the cycle nearly in step, and a path-keyed cache of 100 entries
 * would see each path ~50 times in a row.) The request buffers are built once per
 * connection, before it sends anything: the load generator does no more per request than
 * with one path.
 */
function spreadPaths (paths, connections) {
  const requests = paths.map((p) => ({ method: 'GET', path: p }))
  let next = 0
  return (client) => {
    const offset = Math.floor(((next++ % connections) * requests.length) / connections)
    client.setRequests(offset === 0 ? requests : [...requests.slice(offset), ...requests.slice(0, offset)])
  }
}

function proxyList (value, baseline) {
  const list = typeof value === 'string' ? value.split(',').filter(Boolean) : DEFAULT_PROXIES
  for (const kind of list) if (PROXIES[kind] === undefined) throw new Error(`--proxies: unknown proxy ${kind}`)
  const withBare = list.includes('bare') ? list : [...list, 'bare']
  if (baseline === undefined) return withBare
  // each plugin proxy beside the same proxy on the baseline build
  return withBare.flatMap((kind) => kind.startsWith('plugin') ? [kind, `${kind}@baseline`] : [kind])
}

/** What a proxy is, by its name (`plugin@baseline` is `plugin` on the baseline build). */
function describeProxy (kind) {
  return kind.endsWith('@baseline') ? `${PROXIES[kind.replace(/@baseline$/, '')]} [baseline build]` : PROXIES[kind]
}

/** The baseline build's entry file, checked to exist. */
function baselineEntry (dir) {
  if (dir === undefined) return undefined
  const entry = path.resolve(dir, 'index.js')
  if (!fs.existsSync(entry)) throw new Error(`--baseline: no ${entry} (give the dist/ directory of a built copy of the plugin)`)
  return entry
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

async function startProxy (kind, urls, { cpuProf, cpus, baseline }) {
  const execArgv = cpuProf === undefined
    ? []
    : ['--cpu-prof', `--cpu-prof-dir=${cpuProf}`, `--cpu-prof-name=${kind}.${Date.now()}.cpuprofile`]
  const argv = kind.endsWith('@baseline') ? [kind, urls.join(','), baseline] : [kind, urls.join(',')]
  const child = spawnChild(path.join(__dirname, 'proxy-server.js'), argv, { execArgv })
  const { url } = await waitMessage(child, 'ready', 15_000)
  if (cpus !== undefined) pin(child.pid, cpus.proxy)
  return { kind, url, child, stats: statsOf(child), served: 0 }
}

/**
 * A few requests through the proxy, to fail early and clearly when it does not work: the
 * answer, and the URL the target got (path and query).
 */
async function check (proxy, paths, upstreams) {
  for (const urlPath of new Set([paths[0], paths[paths.length >> 1], paths[paths.length - 1]])) {
    const res = await fetch(proxy.url + urlPath, { signal: AbortSignal.timeout(5000) })
    const text = await res.text()
    if (res.status !== 200 || text !== BODY) throw new Error(`${proxy.kind} proxy answered ${res.status} ${text.slice(0, 200)} to GET ${urlPath}`)
    proxy.served++
    upstreams.send({ type: 'last' })
    const { url } = await waitMessage(upstreams, 'last', 5000)
    const expected = V1.has(proxy.kind.replace(/@baseline$/, '')) ? '/v1' + urlPath : urlPath
    if (url !== expected) throw new Error(`${proxy.kind} proxy sent GET ${urlPath} upstream as ${url}, not ${expected}`)
  }
}

async function round (proxy, upstreamStats, opts) {
  const machine0 = machineBusy()
  const self0 = process.cpuUsage()
  const up0 = await upstreamStats()
  const before = await proxy.stats()
  const t0 = performance.now()
  const result = await autocannon({
    url: proxy.url + opts.paths[0],
    setupClient: spreadPaths(opts.paths, opts.connections),
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
async function freshRound (kind, urls, upstreams, upstreamStats, opts, profiled) {
  const proxy = await startProxy(kind, kind === 'bare' || kind === 'bare-forward' ? urls.slice(0, 1) : urls, opts)
  try {
    await check(proxy, opts.paths, upstreams)
    await round(proxy, upstreamStats, { ...opts, duration: opts.warmup })
    return await round(proxy, upstreamStats, opts)
  } finally {
    await stopChild(proxy.child)
    profiled.push(proxy)
  }
}

async function runProxyBench (args = {}) {
  const opts = options(args)
  const budgetMs = (opts.waitQuiet + opts.rounds * opts.proxies.length * (opts.warmup + opts.duration + 8) + 60) * 1000
  const watchdog = setTimeout(() => {
    console.error(`proxy benchmark: still running after ${budgetMs / 1000} s, giving up`)
    killAll()
    process.exit(2)
  }, budgetMs)
  watchdog.unref()

  let upstreams
  const profiled = []
  try {
    console.log(`\n## Proxy throughput and CPU per request (${opts.proxies.join(', ')}: ${opts.rounds} rounds of ${opts.duration} s per proxy, ` +
      `each in a fresh process after a ${opts.warmup} s warm-up, ${opts.connections} connections, keep-alive, ` +
      (opts.paths.length === 1 ? `GET ${opts.paths[0]})\n` : `GET ${fmt(opts.paths.length)} distinct paths cycled: ${opts.paths[0]}, ${opts.paths[1]}, ...)\n`))
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
    const results = Object.fromEntries(opts.proxies.map((kind) => [kind, []]))
    for (let i = 1; i <= opts.rounds; i++) {
      // rotate the order, so that no proxy always runs first or right after another
      const shift = (i - 1) % opts.proxies.length
      for (const kind of [...opts.proxies.slice(shift), ...opts.proxies.slice(0, shift)]) {
        const r = await freshRound(kind, urls, upstreams, upstreamStats, opts, profiled)
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

    const m = Object.fromEntries(opts.proxies.map((kind) => [kind, mediansOf(results[kind])]))
    const comparisons = {}
    for (const kind of opts.proxies) {
      if (kind === 'bare') continue
      const ratios = { throughput: m[kind].rps / m.bare.rps, cpu: m[kind].cpu / m.bare.cpu }
      // each round against the bare proxy of the same round: slow drift cancels out
      const paired = {
        throughput: median(results[kind].map((r, i) => r.rps / results.bare[i].rps)),
        cpu: median(results[kind].map((r, i) => r.cpuPerRequest / results.bare[i].cpuPerRequest))
      }
      // the targets are the plugin's, with default options (mounted, and reply.forward);
      // the other configurations and the floor are references
      const pass = TARGETED.has(kind) ? { throughput: ratios.throughput >= TARGETS.throughput, cpu: ratios.cpu <= TARGETS.cpu } : undefined
      comparisons[kind] = { ratios, paired, pass }
    }
    console.log('\nMedians over the measured rounds, and ratios to bare (paired: the median of per-round ratios):\n')
    printTable(['proxy', 'req/s', 'CPU µs/req', 'errors', 'throughput ratio', 'CPU ratio', 'paired'], opts.proxies.map((kind) => {
      const c = comparisons[kind]
      return [describeProxy(kind), fmt(m[kind].rps), fmt(m[kind].cpu, 1), fmt(m[kind].errors),
        c === undefined ? '' : c.ratios.throughput.toFixed(3), c === undefined ? '' : c.ratios.cpu.toFixed(3),
        c === undefined ? '' : `${c.paired.throughput.toFixed(3)} / ${c.paired.cpu.toFixed(3)}`]
    }))
    console.log(`\nrequests per upstream (all rounds, warm-ups included): ${hits.map((h, i) => `${urls[i]} ${fmt(h)}`).join(', ')}`)
    const all = Object.values(results).flat()
    const contended = all.filter((r) => r.other > CONTENDED).length
    if (contended > 0) {
      console.log(`NOTE: in ${contended} of ${all.length} rounds other work took more than ${CONTENDED} cores of the machine; ` +
        'throughput figures of those rounds are not comparable')
    }
    if (all.some((r) => r.errors > 0)) console.log('WARNING: some requests failed; the figures are suspect')
    console.log('')
    for (const kind of opts.proxies) {
      const base = `${kind}@baseline`
      if (results[base] === undefined) continue
      // this build against the baseline build, round by round as against bare
      const cpu = median(results[kind].map((r, i) => r.cpuPerRequest / results[base][i].cpuPerRequest))
      const throughput = median(results[kind].map((r, i) => r.rps / results[base][i].rps))
      console.log(`${kind} against ${base}: CPU per request ${(m[kind].cpu / m[base].cpu).toFixed(3)} (paired ${cpu.toFixed(3)}), ` +
        `throughput ${(m[kind].rps / m[base].rps).toFixed(3)} (paired ${throughput.toFixed(3)})`)
    }
    for (const [kind, c] of Object.entries(comparisons)) {
      if (c.pass === undefined) {
        console.log(`${kind}: throughput ratio to bare ${c.ratios.throughput.toFixed(3)}, CPU per request ratio ${c.ratios.cpu.toFixed(3)} (reference)`)
      } else {
        console.log(`${kind}: throughput ratio to bare ${c.ratios.throughput.toFixed(3)} (target >= ${TARGETS.throughput}) ${c.pass.throughput ? 'PASS' : 'FAIL'}, ` +
          `CPU per request ratio ${c.ratios.cpu.toFixed(3)} (target <= ${TARGETS.cpu}) ${c.pass.cpu ? 'PASS' : 'FAIL'}`)
      }
    }
    return { medians: m, comparisons, rounds: results, hits, contended }
  } finally {
    clearTimeout(watchdog)
    if (upstreams !== undefined) await stopChild(upstreams)
    if (opts.cpuProf !== undefined) {
      console.log(`\nCPU profiles of the proxy children in ${opts.cpuProf} ` +
        `(${profiled.map((p) => `${p.kind}: pid ${p.child.pid}, ${fmt(p.served)} requests`).join('; ')}); ` +
        'summarise with node bench/profile-summary.js FILE:REQUESTS [FILE2:REQUESTS]')
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
