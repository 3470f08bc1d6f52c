'use strict'

// The benchmark suite (`npm run bench` builds, then runs this file):
//   1. proxy throughput and CPU per request, fastify-upstream against bare @fastify/reply-from:
//      the plugin mounted on '/' (`plugin`) and called from a handler route with
//      reply.forward() (`plugin-forward`), both with default options, each with its targets
//   2. picks per second of every built-in balancer
//
//   node bench/run.js [--only=proxy|balancers] [options of bench/proxy.js and bench/balancers.js]
//
// Prints PASS/FAIL per target and exits 0 whatever the figures; it exits non-zero only when
// a benchmark could not run. Not part of `npm test`.

const os = require('node:os')
const fs = require('node:fs')
const { parseArgs, killAll } = require('./common')
const { runProxyBench } = require('./proxy')
const { runBalancerBench } = require('./balancers')

function cpuModel () {
  try {
    const line = fs.readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('model name'))
    return line === undefined ? os.cpus()[0]?.model : line.split(':')[1].trim()
  } catch {
    return os.cpus()[0]?.model
  }
}

async function main () {
  const args = parseArgs(process.argv.slice(2))
  const only = args.only
  if (only !== undefined && only !== 'proxy' && only !== 'balancers') throw new Error('--only must be proxy or balancers')
  const watchdog = setTimeout(() => {
    console.error('benchmark: still running after 20 minutes, giving up')
    killAll()
    process.exit(2)
  }, 20 * 60_000)
  watchdog.unref()

  console.log(`# fastify-upstream benchmarks, ${new Date().toISOString()}`)
  console.log(`node ${process.version}, ${os.availableParallelism()} CPUs (${cpuModel()}), ${os.platform()} ${os.release()}`)

  const summary = []
  if (only === undefined || only === 'proxy') {
    const proxy = await runProxyBench(args)
    // every configuration with targets (plugin, plugin-forward); the references have none
    for (const [kind, c] of Object.entries(proxy.comparisons)) {
      if (c.pass === undefined) continue
      summary.push(`proxy ${kind}/bare throughput ratio  ${c.ratios.throughput.toFixed(3)} (>= 0.95)  ${c.pass.throughput ? 'PASS' : 'FAIL'}`)
      summary.push(`proxy ${kind}/bare CPU/request ratio ${c.ratios.cpu.toFixed(3)} (<= 1.05)  ${c.pass.cpu ? 'PASS' : 'FAIL'}`)
    }
  }
  if (only === undefined || only === 'balancers') {
    const balancers = await runBalancerBench(args)
    for (const [name, pass] of Object.entries(balancers.pass)) {
      const at100 = balancers.results[name].find((r) => r.size === 100)
      if (at100 !== undefined) summary.push(`balancer ${name} at 100 targets ${(at100.picksPerSecond / 1e6).toFixed(2)} M picks/s (>= 5)  ${pass ? 'PASS' : 'FAIL'}`)
    }
  }
  console.log('\n## Summary\n')
  for (const line of summary) console.log(line)
  clearTimeout(watchdog)
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  killAll()
  process.exit(1)
})
