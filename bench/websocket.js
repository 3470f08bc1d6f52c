'use strict'

// `npm run bench:websocket`: an echo through the plugin's WebSocket mount, side by side
// with a direct connection to the target and with @fastify/http-proxy's websocket mode,
// in alternating rounds: messages per second (each client sends, waits for the echo,
// sends again) and the proxy process's CPU per message. Then the heap of the proxy per
// idle proxied socket, with `--sockets` sockets open. Loopback only; every round bounded.
//   node bench/websocket.js [--rounds=5] [--duration=3] [--clients=20] [--size=256] [--sockets=9000]
// (9,000 by default: each proxied socket holds two descriptors in the proxy, and this
// machine's hard limit is 20,000 a process)

const path = require('node:path')
const WebSocket = require('ws')
const { parseArgs, numberArg, median, fmt, printTable, spawnChild, waitMessage, stopChild } = require('./common')

const args = parseArgs(process.argv.slice(2))
const rounds = numberArg(args, 'rounds', 5)
const duration = numberArg(args, 'duration', 3)
const clients = numberArg(args, 'clients', 20)
const size = numberArg(args, 'size', 256)
const sockets = numberArg(args, 'sockets', 9000)
const SERVERS = path.join(__dirname, 'websocket-servers.js')

async function stats (child) {
  child.send({ type: 'stats' })
  return await waitMessage(child, 'stats', 10_000)
}

function openSocket (url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false })
    ws.once('open', () => resolve(ws))
    ws.once('error', reject)
  })
}

/** `clients` ping-pong loops for `duration` s; resolves with the messages echoed. */
async function echoLoad (url) {
  const payload = Buffer.alloc(size, 1)
  const deadline = Date.now() + duration * 1000
  let count = 0
  await Promise.all(Array.from({ length: clients }, async () => {
    const ws = await openSocket(url)
    await new Promise((resolve) => {
      ws.on('message', () => {
        count++
        if (Date.now() < deadline) ws.send(payload)
        else resolve()
      })
      ws.send(payload)
    })
    ws.terminate()
  }))
  return count
}

async function main () {
  const target = spawnChild(SERVERS, ['target'])
  const { url: targetUrl } = await waitMessage(target, 'ready')
  const kinds = ['direct', 'plugin', 'http-proxy']
  const results = Object.fromEntries(kinds.map((kind) => [kind, []]))
  console.log(`WebSocket echo: ${rounds} rounds of ${duration} s, ${clients} clients, ${size}-byte messages, alternating\n`)
  try {
    for (let round = 1; round <= rounds; round++) {
      const order = [...kinds.slice((round - 1) % kinds.length), ...kinds.slice(0, (round - 1) % kinds.length)]
      for (const kind of order) {
        let proxy
        let url = targetUrl
        if (kind !== 'direct') {
          proxy = spawnChild(SERVERS, [kind, targetUrl])
          url = (await waitMessage(proxy, 'ready')).url
        }
        const before = proxy === undefined ? undefined : (await stats(proxy)).cpu
        const started = process.hrtime.bigint()
        const messages = await echoLoad(url.replace(/^http/, 'ws') + '/echo')
        const seconds = Number(process.hrtime.bigint() - started) / 1e9
        let cpu
        if (proxy !== undefined) {
          const after = (await stats(proxy)).cpu
          cpu = ((after.user - before.user) + (after.system - before.system)) / messages
          await stopChild(proxy)
        }
        results[kind].push({ rate: messages / seconds, cpu })
        console.log(`  ${round} ${kind}: ${fmt(messages / seconds)} messages/s${cpu === undefined ? '' : `, ${fmt(cpu, 2)} µs CPU/message in the proxy`}`)
      }
    }
    console.log('')
    const m = Object.fromEntries(kinds.map((kind) => [kind, { rate: median(results[kind].map((r) => r.rate)), cpu: kind === 'direct' ? undefined : median(results[kind].map((r) => r.cpu)) }]))
    printTable(['path', 'messages/s', 'proxy CPU µs/message', 'throughput vs http-proxy'], kinds.map((kind) => [
      kind, fmt(m[kind].rate), m[kind].cpu === undefined ? '' : fmt(m[kind].cpu, 2), kind === 'direct' ? '' : (m[kind].rate / m['http-proxy'].rate).toFixed(3)
    ]))

    console.log(`\nidle sockets: heap of the proxy with ${fmt(sockets)} proxied sockets open`)
    const memory = []
    for (const kind of ['plugin', 'http-proxy']) {
      const proxy = spawnChild(SERVERS, [kind, targetUrl], { execArgv: ['--expose-gc'] })
      const { url } = await waitMessage(proxy, 'ready')
      // a few first, so that lazily made things (the connection pool, JIT) are in the baseline
      const warm = await Promise.all(Array.from({ length: 10 }, () => openSocket(url.replace(/^http/, 'ws') + '/idle')))
      const before = await stats(proxy)
      const open = []
      for (let i = 0; i < sockets; i += 200) {
        open.push(...await Promise.all(Array.from({ length: Math.min(200, sockets - i) }, () => openSocket(url.replace(/^http/, 'ws') + '/idle'))))
      }
      const after = await stats(proxy)
      const perSocket = (after.heap + after.external - before.heap - before.external) / sockets
      memory.push([kind, fmt(sockets), fmt(perSocket / 1024, 2), fmt((after.rss - before.rss) / sockets / 1024, 2)])
      for (const ws of [...open, ...warm]) ws.terminate()
      await stopChild(proxy)
    }
    printTable(['proxy', 'sockets', 'heap KB per socket', 'RSS KB per socket'], memory)
  } finally {
    await stopChild(target)
  }
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
