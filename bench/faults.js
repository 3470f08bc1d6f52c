'use strict'

// `npm run bench:faults`: the resilience figures, side by side with bare
// @fastify/reply-from (round-robin getUpstream), each proxy in its own process and the
// upstreams in another, load from this process with autocannon.
//   1. killed: one of three targets is killed one second into a run at 8 concurrent
//      clients: failed requests, and how long until the dead target is out of rotation.
//   2. slow: one of three targets answers 100 ms late: p50/p99 latency against the same
//      proxy with every target fast.
//   3. restarts: 8 clients send GETs, POSTs and POSTs with an Idempotency-Key (which the
//      targets apply once) while each target is restarted in turn, gracefully, crudely
//      and by crash (see faults-upstreams.js): failed requests by kind; the plugin runs
//      twice, with HTTP/1.1 targets and with h2c targets (which go away with GOAWAY).
//   node bench/faults.js [--rounds=3] [--duration=4] [--only=restarts | --only=killed,slow]

const path = require('node:path')
const autocannon = require('autocannon')
const { parseArgs, numberArg, median, fmt, printTable, spawnChild, waitMessage, stopChild } = require('./common')
const { nginxInstalled, startNginx } = require('./faults-nginx')

const args = parseArgs(process.argv.slice(2))
const rounds = numberArg(args, 'rounds', 3)
const duration = numberArg(args, 'duration', 4)
const CONNECTIONS = 8
const only = typeof args.only === 'string' ? new Set(args.only.split(',')) : undefined
const wanted = (part) => only === undefined || only.has(part)
const MODES = ['graceful', 'crude', 'crash']
const KINDS = ['GET', 'POST', 'keyed POST']

const proxies = [
  { name: 'fastify-upstream least-request', kind: 'plugin', balancer: 'least-request' },
  { name: 'fastify-upstream ewma', kind: 'plugin', balancer: 'ewma' },
  { name: 'reply-from round robin', kind: 'bare', balancer: '-' }
]

function cannon (url) {
  return new Promise((resolve, reject) => {
    autocannon({ url: `${url}/bench`, connections: CONNECTIONS, duration, pipelining: 1 }, (error, result) => {
      if (error) reject(error)
      else resolve(result)
    })
  })
}

async function start (proxy, checked = false) {
  const upstreams = spawnChild(path.join(__dirname, 'faults-upstreams.js'), ['3', ...(proxy.h2c === true ? ['h2c'] : [])])
  const { urls } = await waitMessage(upstreams, 'ready')
  const child = spawnChild(path.join(__dirname, 'faults-proxy.js'), [proxy.kind, proxy.balancer, urls.join(','), checked ? 'checked' : '-', ...(proxy.h2c === true ? ['h2c'] : [])])
  const states = []
  child.on('message', (message) => { if (message?.type === 'state') states.push(message) })
  const { url } = await waitMessage(child, 'ready')
  return { upstreams, child, url, urls, states }
}

async function stop (run) {
  await stopChild(run.child)
  await stopChild(run.upstreams)
}

async function killed (proxy) {
  const run = await start(proxy)
  try {
    const load = cannon(run.url)
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const killedAt = Date.now()
    run.upstreams.send({ type: 'kill', index: 1 })
    await waitMessage(run.upstreams, 'killed')
    const result = await load
    const ejection = run.states.find((s) => s.url === run.urls[1] && (s.to === 'ejected' || s.to === 'unhealthy'))
    return {
      requests: result.requests.total,
      failed: result.non2xx + result.errors,
      outAfter: ejection === undefined ? undefined : ejection.at - killedAt
    }
  } finally {
    await stop(run)
  }
}

async function slow (proxy, slowed) {
  const run = await start(proxy)
  try {
    if (slowed) {
      run.upstreams.send({ type: 'slow', index: 1, ms: 100 })
      await waitMessage(run.upstreams, 'slowed')
    }
    const result = await cannon(run.url)
    run.upstreams.send({ type: 'hits' })
    const { hits } = await waitMessage(run.upstreams, 'hits')
    const total = hits.reduce((a, b) => a + b, 0)
    return { p50: result.latency.p50, p99: result.latency.p99, slowShare: total === 0 ? 0 : hits[1] / total, failed: result.non2xx + result.errors }
  } finally {
    await stop(run)
  }
}

/**
 * Clients sending GETs, POSTs and keyed POSTs in turn to `url` until stopped (and at most
 * 3,000 requests each); the failed and sent requests by kind.
 */
function mixedLoad (url) {
  const tally = Object.fromEntries(KINDS.map((kind) => [kind, { sent: 0, failed: 0 }]))
  const state = { running: true, next: 0 }
  const client = async () => {
    for (let i = 0; i < 3000 && state.running; i++) {
      const kind = KINDS[state.next++ % KINDS.length]
      const headers = { 'content-type': 'text/plain', ...(kind === 'keyed POST' ? { 'idempotency-key': `k${state.next}` } : {}) }
      tally[kind].sent++
      try {
        const res = await fetch(`${url}/bench`, kind === 'GET' ? { signal: AbortSignal.timeout(5000) } : { method: 'POST', headers, body: 'x'.repeat(1024), signal: AbortSignal.timeout(5000) })
        await res.arrayBuffer()
        if (res.status !== 200) tally[kind].failed++
      } catch {
        tally[kind].failed++
      }
    }
  }
  const all = Promise.all(Array.from({ length: CONNECTIONS }, client))
  return async () => {
    state.running = false
    await all
    return tally
  }
}

async function restarts (proxy, mode) {
  const run = proxy.kind === 'nginx' ? await startBehindNginx() : await start(proxy, true)
  try {
    const finish = mixedLoad(run.url)
    await new Promise((resolve) => setTimeout(resolve, 500))
    for (let index = 0; index < 3; index++) {
      run.upstreams.send({ type: 'restart', index, mode, grace: 400, down: 200 })
      await waitMessage(run.upstreams, 'restarted', 30_000)
      // the next one goes once this one is back in rotation (active checks every 100 ms)
      await new Promise((resolve) => setTimeout(resolve, 400))
    }
    return await finish()
  } finally {
    if (run.nginx !== undefined) await run.nginx.stop()
    await stop(run)
  }
}

/** The upstreams behind NGINX (see faults-nginx.js), shaped as start() returns them. */
async function startBehindNginx () {
  const upstreams = spawnChild(path.join(__dirname, 'faults-upstreams.js'), ['3'])
  const { urls } = await waitMessage(upstreams, 'ready')
  const nginx = await startNginx(urls)
  // a child that stop() can end at once
  return { upstreams, child: { exitCode: 0 }, url: nginx.url, urls, states: [], nginx }
}

async function main () {
  if (wanted('restarts')) await restartFigures()
  if (!wanted('killed') && !wanted('slow')) return
  console.log(`fault benchmark: ${rounds} rounds, ${duration} s each, ${CONNECTIONS} connections, alternating proxies\n`)
  const kill = new Map(proxies.map((p) => [p.name, []]))
  // (--only=restarts skips the rest)
  const fast = new Map(proxies.map((p) => [p.name, []]))
  const late = new Map(proxies.map((p) => [p.name, []]))
  for (let round = 1; round <= rounds; round++) {
    for (const proxy of proxies) {
      const k = await killed(proxy)
      kill.get(proxy.name).push(k)
      const f = await slow(proxy, false)
      fast.get(proxy.name).push(f)
      const s = await slow(proxy, true)
      late.get(proxy.name).push(s)
      console.log(`round ${round} ${proxy.name}: killed: ${k.failed} failed of ${k.requests}, out after ${k.outAfter ?? '-'} ms; ` +
        `all fast p99 ${f.p99} ms; one slow p99 ${s.p99} ms (${(s.slowShare * 100).toFixed(2)}% to the slow target)`)
    }
  }

  console.log('\n1. one of three targets killed under load (medians)')
  printTable(['proxy', 'requests', 'failed', 'dead target out after (ms)'], proxies.map((p) => {
    const runs = kill.get(p.name)
    const out = runs.map((r) => r.outAfter).filter((v) => v !== undefined)
    return [p.name, fmt(median(runs.map((r) => r.requests))), fmt(median(runs.map((r) => r.failed))), out.length === 0 ? 'never' : fmt(median(out))]
  }))
  console.log('\n2. one of three targets 100 ms slow (medians)')
  printTable(['proxy', 'p99 all fast (ms)', 'p99 one slow (ms)', 'ratio', 'p50 one slow (ms)', 'share to slow'], proxies.map((p) => {
    const f = median(fast.get(p.name).map((r) => r.p99))
    const s = median(late.get(p.name).map((r) => r.p99))
    return [p.name, fmt(f, 1), fmt(s, 1), fmt(s / f, 2), fmt(median(late.get(p.name).map((r) => r.p50)), 1), `${(median(late.get(p.name).map((r) => r.slowShare)) * 100).toFixed(2)}%`]
  }))

  const plugin = 'fastify-upstream least-request'
  const failed = median(kill.get(plugin).map((r) => r.failed))
  const outs = kill.get(plugin).map((r) => r.outAfter ?? Infinity)
  const ratio = median(late.get(plugin).map((r) => r.p99)) / median(fast.get(plugin).map((r) => r.p99))
  console.log('\ntargets')
  console.log(`${failed === 0 ? 'PASS' : 'FAIL'}  0 failed idempotent requests with a target killed (median ${failed})`)
  console.log(`${Math.max(...outs) <= 1000 ? 'PASS' : 'FAIL'}  dead target out of rotation within 1 s in every round (worst ${Math.max(...outs)} ms)`)
  console.log(`${ratio <= 2 ? 'PASS' : 'FAIL'}  least-request p99 with a slow target within 2x the healthy p99 (ratio ${ratio.toFixed(2)})`)
}

async function restartFigures () {
  console.log(`restarts: each of three targets restarted in turn under ${CONNECTIONS} clients (GET, POST, keyed POST in turn), ${rounds} rounds\n`)
  const compared = [proxies[0], { ...proxies[0], name: 'fastify-upstream least-request, h2c targets', h2c: true }, proxies[2]]
  if (nginxInstalled()) compared.push({ name: 'nginx (keepalive, max_fails=1)', kind: 'nginx', balancer: '-' })
  else console.log('nginx is not installed (Debian: apt-get install nginx-light): its figures are left out\n')
  const figures = []
  for (let round = 1; round <= rounds; round++) {
    for (const mode of MODES) {
      for (const proxy of compared) {
        const tally = await restarts(proxy, mode)
        figures.push({ mode, proxy: proxy.name, tally })
        console.log(`round ${round} ${mode} ${proxy.name}: ` + KINDS.map((kind) => `${kind} ${tally[kind].failed} failed of ${tally[kind].sent}`).join(', '))
      }
    }
  }
  console.log('\n3. rolling restarts: failed requests, summed over the rounds (failed / sent)')
  printTable(['restart', 'proxy', ...KINDS], MODES.flatMap((mode) => compared.map((proxy) => {
    const runs = figures.filter((f) => f.mode === mode && f.proxy === proxy.name)
    return [mode, proxy.name, ...KINDS.map((kind) => `${fmt(runs.reduce((sum, r) => sum + r.tally[kind].failed, 0))} / ${fmt(runs.reduce((sum, r) => sum + r.tally[kind].sent, 0))}`)]
  })))
  const plugin = figures.filter((f) => f.proxy === proxies[0].name)
  const lost = (mode, kinds) => plugin.filter((f) => f.mode === mode).reduce((sum, f) => sum + kinds.reduce((s, kind) => s + f.tally[kind].failed, 0), 0)
  console.log('\ntargets')
  console.log(`${MODES.every((mode) => lost(mode, ['GET', 'keyed POST']) === 0) ? 'PASS' : 'FAIL'}  0 failed GETs and keyed POSTs in every kind of restart`)
  console.log(`${lost('graceful', KINDS) === 0 ? 'PASS' : 'FAIL'}  0 failed requests of any method in graceful restarts`)
  const h2c = figures.filter((f) => f.proxy === compared[1].name)
  const lostH2c = (mode) => h2c.filter((f) => f.mode === mode).reduce((sum, f) => sum + KINDS.reduce((s, kind) => s + f.tally[kind].failed, 0), 0)
  console.log(`${lostH2c('graceful') + lostH2c('crude') === 0 ? 'PASS' : 'FAIL'}  h2c targets: 0 failed requests of any method in graceful and crude restarts (GOAWAY)`)
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
