'use strict'

// Summarises V8 .cpuprofile files (from `node bench/proxy.js --cpu-prof`): self time by
// component (the plugin's dist/, fastify, @fastify/reply-from, undici, node core, native
// and GC) and by function. With a request count per file (FILE:REQUESTS, as printed by
// proxy.js), figures are in µs per request; given two files, it also prints the
// difference (first minus second) by component and the functions that differ most.
//
//   node bench/profile-summary.js plugin.123.cpuprofile:211684 bare.456.cpuprofile:205108 [--top=25]

const fs = require('node:fs')
const path = require('node:path')
const { parseArgs, fmt, printTable } = require('./common')

function component (frame) {
  const url = frame.url
  if (url === '') {
    if (frame.functionName === '(garbage collector)') return 'GC'
    if (frame.functionName.startsWith('(')) return frame.functionName
    return 'native (syscalls, bindings)'
  }
  if (url.startsWith('node:')) return 'node core'
  if (url.includes('/dist/') && !url.includes('node_modules')) return 'fastify-upstream (dist/)'
  if (url.startsWith('wasm')) return 'undici (llhttp wasm)'
  const at = url.lastIndexOf('node_modules/')
  if (at === -1) return path.basename(url)
  const rest = url.slice(at + 'node_modules/'.length).split('/')
  return rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]
}

function functionLabel (frame) {
  const file = frame.url === '' ? '' : ` ${path.basename(frame.url)}:${frame.lineNumber + 1}`
  return `${frame.functionName || '(anonymous)'}${file}`
}

/** Self time (µs) per component and per function, without idle. */
function load (spec) {
  const colon = spec.lastIndexOf(':')
  const hasCount = colon > 0 && /^\d+$/.test(spec.slice(colon + 1))
  const file = hasCount ? spec.slice(0, colon) : spec
  const requests = hasCount ? Number(spec.slice(colon + 1)) : undefined
  const profile = JSON.parse(fs.readFileSync(file, 'utf8'))
  const self = new Map(profile.nodes.map((node) => [node.id, 0]))
  // each sample is charged to its node for the time until the next sample
  for (let i = 0; i < profile.samples.length; i++) {
    self.set(profile.samples[i], self.get(profile.samples[i]) + (profile.timeDeltas[i + 1] ?? 0))
  }
  const byComponent = new Map()
  const byFunction = new Map()
  let busy = 0
  for (const node of profile.nodes) {
    const us = self.get(node.id)
    if (us === 0 || node.callFrame.functionName === '(idle)') continue
    busy += us
    const c = component(node.callFrame)
    byComponent.set(c, (byComponent.get(c) ?? 0) + us)
    const f = `${functionLabel(node.callFrame)} [${c}]`
    byFunction.set(f, (byFunction.get(f) ?? 0) + us)
  }
  return { file, requests, busy, byComponent, byFunction }
}

function scale (p) {
  return p.requests === undefined ? { unit: 'ms', k: 1 / 1000, digits: 0 } : { unit: 'µs/req', k: 1 / p.requests, digits: 2 }
}

function summarise (p, top) {
  const { unit, k, digits } = scale(p)
  console.log(`\n${p.file}: busy ${fmt(p.busy / 1000)} ms` +
    (p.requests === undefined ? '' : `, ${fmt(p.requests)} requests, ${fmt(p.busy / p.requests, 1)} µs busy per request`) + '\n')
  const sorted = (map) => [...map.entries()].sort((a, b) => b[1] - a[1])
  printTable(['component (self time)', unit, '%'],
    sorted(p.byComponent).map(([name, us]) => [name, fmt(us * k, digits), fmt((100 * us) / p.busy, 1)]))
  console.log('')
  printTable(['function (self time)', unit, '%'],
    sorted(p.byFunction).slice(0, top).map(([name, us]) => [name, fmt(us * k, digits), fmt((100 * us) / p.busy, 1)]))
}

function compare (a, b, top) {
  if (a.requests === undefined || b.requests === undefined) return
  const diff = (ma, mb) => {
    const keys = new Set([...ma.keys(), ...mb.keys()])
    return [...keys].map((key) => {
      const x = (ma.get(key) ?? 0) / a.requests
      const y = (mb.get(key) ?? 0) / b.requests
      return [key, x, y, x - y]
    })
  }
  const row = ([key, x, y, d]) => [key, fmt(x, 2), fmt(y, 2), (d >= 0 ? '+' : '') + fmt(d, 2)]
  console.log(`\nDifference per request, ${path.basename(a.file)} minus ${path.basename(b.file)} (µs):\n`)
  const total = ['total busy', a.busy / a.requests, b.busy / b.requests, a.busy / a.requests - b.busy / b.requests]
  printTable(['component', 'first', 'second', 'diff'],
    [...diff(a.byComponent, b.byComponent).sort((p, q) => q[3] - p[3]), total].map(row))
  console.log('')
  printTable(['function', 'first', 'second', 'diff'],
    diff(a.byFunction, b.byFunction).sort((p, q) => Math.abs(q[3]) - Math.abs(p[3])).slice(0, top).map(row))
}

if (require.main === module) {
  const args = parseArgs(process.argv.slice(2))
  const specs = process.argv.slice(2).filter((a) => !a.startsWith('--'))
  if (specs.length === 0) {
    console.error('usage: node bench/profile-summary.js FILE.cpuprofile[:REQUESTS] [FILE2.cpuprofile[:REQUESTS]] [--top=25]')
    process.exit(1)
  }
  const top = Number(args.top ?? 25)
  const profiles = specs.map(load)
  for (const p of profiles) summarise(p, top)
  if (profiles.length === 2) compare(profiles[0], profiles[1], top)
}
