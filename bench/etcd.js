'use strict'

// `node bench/etcd.js` (after `npm run build`): how fast a change made in etcd reaches
// every gateway instance. A 3-member etcd cluster (bench/etcd-cluster.js: loopback, data
// dirs on /dev/shm when writable, heartbeat 25 ms / election 250 ms) and, in this process,
// three gateway instances (Fastify apps with the plugin from dist/), each with a pool `api`
// whose targets come from etcd (discovery { type: 'etcd', prefix: 'bench/api/' }) and the
// plugin option etcd: { prefix: 'bench/pools/' }. Instance i lists the endpoints starting at
// member i, so each one reads and watches through a different member. Then, one at a time,
// --changes (50) changes of each kind, in cycles:
//   target added (put of a URL under bench/api/), re-weighted (put of { url, weight }),
//   removed (delete); pool added (put of pool options under bench/pools/), changed
//   (another target list), removed (delete)
// Each change is timed from just before the put/delete to the moment all three instances
// show it (their app.upstreams state polled on every turn of the event loop, setImmediate,
// no sleeps), and the put/delete's own round trip beside it. Writes go through member 0.
// Prints p50/p99/max per kind and over all changes; the target is p99 <= 25 ms.
//   node bench/etcd.js [--changes=50] [--warmup=5] [--max-seconds=120] [--log]
// Bounded: a change not seen within 5 s counts as missed, and a watchdog of --max-seconds
// ends the whole run (etcd members are SIGKILLed when this process exits, however it exits).

const http = require('node:http')
const { performance } = require('node:perf_hooks')
const { parseArgs, numberArg, fmt, printTable } = require('./common')
const { etcdAvailable, startCluster } = require('./etcd-cluster')

const args = parseArgs(process.argv.slice(2))
const CHANGE_TIMEOUT = 5000
const KINDS = ['target added', 'target re-weighted', 'target removed', 'pool added', 'pool changed', 'pool removed']

function percentile (sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]
}

async function startTargets (count) {
  const servers = []
  for (let i = 0; i < count; i++) {
    const server = http.createServer((req, res) => { req.resume(); res.end(`t${i}`) })
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    servers.push(server)
  }
  return servers
}

async function startGateway (endpoints, i) {
  const Fastify = require('fastify')
  // instance i connects to member i first
  const rotated = [...endpoints.slice(i), ...endpoints.slice(0, i)]
  const app = Fastify({ logger: args.log === true ? { level: 'warn' } : false })
  await app.register(require('../dist/index.js'), {
    upstreams: { api: { discovery: { type: 'etcd', endpoints: rotated, prefix: 'bench/api/' } } },
    etcd: { endpoints: rotated, prefix: 'bench/pools/' },
    routes: [{ prefix: '/api', upstream: 'api' }]
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return app
}

/**
 * Makes one change and times it: `write` is the put/delete, `seen(app)` says whether an
 * instance shows it. Resolves with { ms, put } (ms: until all show it; put: the write's
 * own round trip), ms undefined when not every instance showed it within CHANGE_TIMEOUT.
 */
async function timed (apps, write, seen) {
  let put
  const start = performance.now()
  const written = write().then(() => { put = performance.now() - start })
  let ms
  for (;;) {
    if (apps.every(seen)) {
      ms = performance.now() - start
      break
    }
    if (performance.now() - start > CHANGE_TIMEOUT) break
    await new Promise(setImmediate)
  }
  await written
  return { ms, put }
}

const sameUrls = (pool, urls) => pool !== undefined && pool.targets.length === urls.length && urls.every((url) => pool.target(url) !== undefined)

async function main () {
  if (!etcdAvailable()) {
    console.log('bench/etcd.js needs the etcd command: install the Debian package etcd-server (apt-get install etcd-server). Nothing measured.')
    return
  }
  const changes = numberArg(args, 'changes', 50)
  const warmup = args.warmup === undefined ? 5 : Number(args.warmup)
  const maxSeconds = numberArg(args, 'max-seconds', 120)
  const watchdog = setTimeout(() => {
    console.error(`\nstopped after ${maxSeconds} s (--max-seconds)`)
    process.exit(2) // the exit handler of etcd-cluster.js kills the members
  }, maxSeconds * 1000)
  watchdog.unref()

  const cluster = await startCluster({ members: 3, heartbeat: 25, election: 250 })
  const servers = await startTargets(4)
  const urls = servers.map((server) => `http://127.0.0.1:${server.address().port}`)
  const apps = []
  try {
    // two targets before the instances start: they read them at ready
    await cluster.put('bench/api/base-0', urls[0])
    await cluster.put('bench/api/base-1', urls[1])
    for (let i = 0; i < 3; i++) apps.push(await startGateway(cluster.endpoints, i))
    const leader = await cluster.leader()
    const dataDir = cluster.members[0].dataDir.startsWith('/dev/shm') ? '/dev/shm' : 'a temporary directory'
    console.log(`etcd benchmark: 3 etcd members (data on ${dataDir}, heartbeat 25 ms, election 250 ms, leader ${leader?.name ?? '?'}), ` +
      '3 gateway instances in this process (instance i watches through member m<i>), writes through m0; ' +
      `${changes} changes of each kind, one at a time, after ${warmup} warm-up cycles\n`)
    // every instance routes to the targets etcd gave it
    for (const app of apps) {
      const res = await app.inject({ url: '/api/x' })
      if (res.statusCode !== 200) throw new Error(`an instance answered ${res.statusCode} before the run`)
    }

    const results = Object.fromEntries(KINDS.map((kind) => [kind, { ms: [], put: [], missed: 0 }]))
    // how much later than the write's own reply all three showed the change (negative: earlier)
    const after = []
    const record = (kind, r, measured) => {
      if (!measured) return
      const entry = results[kind]
      if (r.ms === undefined) entry.missed++
      else {
        entry.ms.push(r.ms)
        after.push(r.ms - r.put)
      }
      entry.put.push(r.put)
    }
    for (let cycle = 0; cycle < warmup + changes; cycle++) {
      const measured = cycle >= warmup
      const api = (app) => app.upstreams.get('api')
      // a target of its own per cycle, taken from two servers in turn (a removed one is gone at once: no traffic)
      const url = urls[2 + (cycle % 2)]
      const key = `bench/api/extra-${cycle}`
      const weight = 2 + (cycle % 50)
      record('target added', await timed(apps, () => cluster.put(key, url), (app) => api(app).target(url)?.state === 'healthy'), measured)
      record('target re-weighted', await timed(apps, () => cluster.put(key, JSON.stringify({ url, weight })), (app) => api(app).target(url)?.weight === weight), measured)
      record('target removed', await timed(apps, () => cluster.del(key), (app) => api(app).target(url) === undefined), measured)

      const name = `dyn-${cycle}`
      const first = [urls[0], urls[1]]
      const second = [urls[cycle % 2 === 0 ? 2 : 3]]
      record('pool added', await timed(apps, () => cluster.put(`bench/pools/${name}`, JSON.stringify({ targets: first })), (app) => sameUrls(app.upstreams.get(name), first)), measured)
      record('pool changed', await timed(apps, () => cluster.put(`bench/pools/${name}`, JSON.stringify({ targets: second, balancer: 'least-request' })), (app) => sameUrls(app.upstreams.get(name), second)), measured)
      record('pool removed', await timed(apps, () => cluster.del(`bench/pools/${name}`), (app) => !app.upstreams.has(name)), measured)
    }

    const row = (label, ms, put, missed) => {
      const sorted = [...ms].sort((a, b) => a - b)
      const puts = [...put].sort((a, b) => a - b)
      return [label, ms.length + missed, missed, fmt(percentile(sorted, 50), 2), fmt(percentile(sorted, 99), 2), fmt(sorted[sorted.length - 1], 2),
        fmt(percentile(puts, 50), 2), fmt(percentile(puts, 99), 2)]
    }
    const all = KINDS.map((kind) => results[kind])
    const allMs = all.flatMap((r) => r.ms)
    printTable(['change', 'n', 'missed', 'all 3 see it p50 (ms)', 'p99', 'max', 'put/delete RTT p50 (ms)', 'p99'], [
      ...KINDS.map((kind) => row(kind, results[kind].ms, results[kind].put, results[kind].missed)),
      row('all changes', allMs, all.flatMap((r) => r.put), all.reduce((n, r) => n + r.missed, 0))
    ])
    after.sort((a, b) => a - b)
    console.log(`\nall 3 instances showed a change ${fmt(percentile(after, 50), 2)} ms after the put/delete's own reply (p50; p99 ${fmt(percentile(after, 99), 2)} ms, ` +
      `negative: before it); ${fmt(after.filter((d) => d <= 0).length / after.length * 100, 0)}% of changes were shown before the reply`)
    const p99 = percentile([...allMs].sort((a, b) => a - b), 99)
    const missed = all.reduce((n, r) => n + r.missed, 0)
    console.log(`\n${p99 <= 25 && missed === 0 ? 'PASS' : 'FAIL'}  p99 from the write to all 3 instances within 25 ms over ${allMs.length + missed} changes (p99 ${fmt(p99, 2)} ms, ${missed} missed)`)
  } finally {
    await Promise.all(apps.map((app) => app.close()))
    for (const server of servers) server.close()
    await cluster.stop()
    clearTimeout(watchdog)
  }
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
