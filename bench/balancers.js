'use strict'

// Balancer benchmark: picks per second of every built-in balancer, called directly
// (`update(targets)` once, then `pick(request)` in a loop), at 3, 100 and 1000 targets.
// Requests come from a pre-built array of request-like objects, cycled through. Each
// balancer is measured in a child process of its own, so that the loop's call site and
// the JIT's type feedback see only that balancer (as in a pool), and one balancer's
// warm-up or garbage does not weigh on the next. Each figure is the median of several
// timed runs, after a warm-up run.
//
//   node bench/balancers.js [--runs=7] [--ms=200] [--sizes=3,100,1000] [--balancers=ewma,random]
//
// Needs the built plugin (npm run build). Bounded in time; children are always killed.

const { performance } = require('node:perf_hooks')
const { parseArgs, numberArg, median, fmt, printTable, spawnChild, waitMessage, killAll } = require('./common')

const TARGET = 5e6 // picks per second, at 100 targets
const BALANCERS = {
  'round-robin': (m) => new m.RoundRobinBalancer(),
  random: (m) => new m.RandomBalancer(),
  'least-request': (m) => new m.LeastRequestBalancer(),
  ewma: (m) => new m.EwmaBalancer(),
  'consistent-hash': (m) => new m.ConsistentHashBalancer({ key: 'header:x-user' })
}
const REQUESTS = 4096 // a power of two: the loop cycles with a mask

/** Targets with mixed weights, in-flight counts and latencies, as a pool would feed them. */
function makeTargets (n) {
  const now = performance.now()
  const targets = []
  for (let i = 0; i < n; i++) {
    targets.push({
      url: `http://10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:8080`,
      weight: 1 + (i % 3),
      inflight: i % 5,
      latency: 1 + (i % 7) * 0.5,
      // 1 to 10 ms: some pairs differ by more than least-request's slowRatio, some not
      meanLatency: 1 + (i % 7) * 1.5,
      latencyUpdatedAt: now
    })
  }
  return targets
}

function makeRequests () {
  const requests = []
  for (let i = 0; i < REQUESTS; i++) {
    requests.push({
      headers: { 'x-user': `user-${(i * 2654435761) >>> 0}` },
      url: '/',
      ip: `192.168.${(i >> 8) & 255}.${i & 255}`
    })
  }
  return requests
}

/** Runs `count` picks; returns the elapsed nanoseconds (and checks every pick). */
function timed (balancer, requests, count) {
  const mask = REQUESTS - 1
  let missing = 0
  const start = process.hrtime.bigint()
  for (let i = 0; i < count; i++) {
    if (balancer.pick(requests[i & mask]) === undefined) missing++
  }
  const ns = Number(process.hrtime.bigint() - start)
  if (missing > 0) throw new Error(`${missing} of ${count} picks returned no target`)
  return ns
}

// A child in a busy loop never sees its IPC channel close: it checks its parent between runs
const parentPid = process.ppid
function exitIfOrphaned () {
  if (process.ppid !== parentPid) process.exit(1)
}

/** Child side: measures one balancer at every size and sends the results. */
function measure (name, sizes, runs, ms) {
  const dist = require('../dist/index.js')
  const requests = makeRequests()
  const results = []
  for (const size of sizes) {
    const balancer = BALANCERS[name](dist)
    const targets = makeTargets(size)
    balancer.update(targets)
    // calibrate: picks for about `ms` milliseconds per run (this also warms the JIT up)
    let count = 10_000
    let ns = timed(balancer, requests, count)
    while (ns < 20e6) {
      exitIfOrphaned()
      count *= 4
      ns = timed(balancer, requests, count)
    }
    count = Math.max(10_000, Math.round((count * ms * 1e6) / ns))
    timed(balancer, requests, count) // warm-up run
    const rates = []
    for (let r = 0; r < runs; r++) {
      exitIfOrphaned()
      rates.push((count * 1e9) / timed(balancer, requests, count))
    }
    // the distribution over targets, as a sanity check of the picks
    const hits = new Map()
    for (let i = 0; i < 100_000; i++) {
      const t = balancer.pick(requests[i & (REQUESTS - 1)])
      hits.set(t, (hits.get(t) ?? 0) + 1)
    }
    results.push({ size, picksPerSecond: median(rates), min: Math.min(...rates), max: Math.max(...rates), count, distinct: hits.size })
  }
  return results
}

async function runBalancerBench (args = {}) {
  const runs = Math.max(3, Math.round(numberArg(args, 'runs', 7)))
  const ms = numberArg(args, 'ms', 200)
  const sizes = typeof args.sizes === 'string' ? args.sizes.split(',').map(Number) : [3, 100, 1000]
  const names = typeof args.balancers === 'string' ? args.balancers.split(',') : Object.keys(BALANCERS)
  for (const name of names) if (BALANCERS[name] === undefined) throw new Error(`unknown balancer ${name}`)

  console.log(`\n## Balancer picks per second (median of ${runs} runs of ~${ms} ms, after a warm-up; one child process per balancer)\n`)
  const table = []
  const results = {}
  for (const name of names) {
    const child = spawnChild(__filename, [`--child=${name}`, `--sizes=${sizes.join(',')}`, `--runs=${runs}`, `--ms=${ms}`])
    const budget = 30_000 + sizes.length * (runs + 4) * ms * 3
    try {
      const { results: rows } = await waitMessage(child, 'result', budget)
      results[name] = rows
      console.log(`  ${name}: ${rows.map((r) => `${r.size} targets ${fmt(r.picksPerSecond / 1e6, 2)} M/s`).join(', ')}`)
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    }
  }
  const pass = {}
  for (const name of names) {
    const at = (size) => results[name].find((r) => r.size === size)
    const hundred = at(100)
    pass[name] = hundred === undefined ? undefined : hundred.picksPerSecond >= TARGET
    table.push([
      name,
      ...sizes.map((size) => fmt(at(size).picksPerSecond / 1e6, 2)),
      pass[name] === undefined ? 'n/a' : pass[name] ? 'PASS' : 'FAIL'
    ])
  }
  console.log('')
  printTable(['balancer', ...sizes.map((s) => `${s} targets (M picks/s)`), `>= ${TARGET / 1e6} M/s at 100`], table)
  console.log('\n(spread of the runs, min-max M picks/s: ' + names.map((name) =>
    `${name} ${results[name].map((r) => `${fmt(r.min / 1e6, 1)}-${fmt(r.max / 1e6, 1)}`).join('/')}`).join('; ') + ')')
  return { results, pass }
}

module.exports = { runBalancerBench, makeTargets, makeRequests }

if (require.main === module) {
  const args = parseArgs(process.argv.slice(2))
  if (typeof args.child === 'string') {
    const sizes = args.sizes.split(',').map(Number)
    const results = measure(args.child, sizes, Number(args.runs), Number(args.ms))
    process.send({ type: 'result', results }, () => process.exit(0))
  } else {
    const watchdog = setTimeout(() => {
      console.error('balancer benchmark: still running after 10 minutes, giving up')
      killAll()
      process.exit(2)
    }, 600_000)
    watchdog.unref()
    runBalancerBench(args).then(() => process.exit(0), (error) => {
      console.error(error)
      killAll()
      process.exit(1)
    })
  }
}
