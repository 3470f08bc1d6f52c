import net from 'node:net'
import { test } from 'tap'
import { startGateway, startUpstream, until, type Teardown, type Upstream } from '../helpers'

/** Starts a POST with `sent` bytes of a `length`-byte body, then stalls; resolves with the status line once answered (or the socket ends). */
function slowUpload (url: string, path: string, length: number, sent: number): { answer: Promise<string>, socket: net.Socket } {
  const { port } = new URL(url)
  const socket = net.connect(Number(port), '127.0.0.1', () => {
    socket.write(`POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: ${length}\r\n\r\n${'x'.repeat(sent)}`)
  })
  const answer = new Promise<string>((resolve) => {
    let data = ''
    socket.on('data', (chunk: Buffer) => { data += chunk.toString() })
    socket.on('close', () => resolve(data))
    socket.on('error', () => {})
  })
  return { answer, socket }
}

test('bodyTimeout: slow uploads get 408 and free the target\'s connections; the target is not blamed', async (t) => {
  const up = await startUpstream(t, 'u0')
  const pool = { targets: [up.url], maxConnections: 2, retry: { attempts: 0 }, healthCheck: { passive: { consecutiveFailures: 1 } } }
  const { app, url } = await startGateway(t, {
    upstreams: { guarded: pool, open: pool },
    routes: [
      { prefix: '/guarded', upstream: 'guarded', bodyTimeout: 300 },
      { prefix: '/open', upstream: 'open' }
    ]
  })
  const uploads = [slowUpload(url, '/guarded/up', 1000, 10), slowUpload(url, '/guarded/up', 1000, 10)]
  const unguarded = [slowUpload(url, '/open/up', 1000, 10), slowUpload(url, '/open/up', 1000, 10)]
  // before the gateway closes (registered after it): its close would wait for the stalled uploads
  t.teardown(() => { for (const { socket } of [...uploads, ...unguarded]) socket.destroy() })
  await until('four connections held', () => app.upstreams.get('guarded')?.targets[0].inflight === 2 && app.upstreams.get('open')?.targets[0].inflight === 2)
  t.equal((await fetch(`${url}/guarded/x`)).status, 503, 'while the slow uploads hold both connections, others are refused')
  const started = Date.now()
  const answers = await Promise.all(uploads.map((u) => u.answer))
  const waited = Date.now() - started
  for (const answer of answers) {
    t.match(answer, /^HTTP\/1\.1 408 /, 'the stalled client gets 408')
    t.match(answer, /FST_UPSTREAM_BODY_TIMEOUT/)
    t.match(answer, /connection: close/i, 'and its connection is closed')
  }
  t.ok(waited < 2000, `answered after the body timeout (${waited} ms)`)
  const after = await fetch(`${url}/guarded/x`)
  t.equal(after.status, 200, 'the connections are free again')
  await after.arrayBuffer()
  t.equal(app.upstreams.get('guarded')?.targets[0].state, 'healthy', 'a client\'s stalled body is no failure of the target')
  // without bodyTimeout the same uploads still hold the other pool's connections
  t.equal((await fetch(`${url}/open/x`)).status, 503, 'without bodyTimeout the slow uploads still hold every connection')
})

/** A target that reads request bodies only after `delay` ms; `t` closes it. */
async function lateReader (t: Teardown, delay: number): Promise<Upstream> {
  const up = await startUpstream(t, 'late')
  up.server.removeAllListeners('request')
  up.server.on('request', (req, res) => {
    up.hits++
    req.pause()
    setTimeout(() => {
      let size = 0
      req.on('data', (chunk: Buffer) => { size += chunk.length })
      req.on('end', () => res.end(String(size)))
      req.resume()
    }, delay)
  })
  return up
}

test('bodyTimeout counts only the client\'s silence, not a target that reads slowly or a wait for a connection', async (t) => {
  const up = await lateReader(t, 600)
  const { url } = await startGateway(t, {
    upstreams: { u: { targets: [up.url], maxConnections: 1, maxPending: 5 } },
    routes: [{ prefix: '/up', upstream: 'u', bodyTimeout: 200 }]
  })
  const body = Buffer.alloc(4 * 1024 * 1024, 1)
  // two at once: the second waits for the only connection while the first is read late
  const [first, second] = await Promise.all([
    fetch(`${url}/up/a`, { method: 'POST', body }),
    fetch(`${url}/up/b`, { method: 'POST', body })
  ])
  t.equal(first.status, 200, 'held back by a slow reader: not the client\'s fault')
  t.equal(await first.text(), String(body.length), 'the whole body arrived')
  t.equal(second.status, 200, 'held back waiting for a connection: not the client\'s fault')
  t.equal(await second.text(), String(body.length))
})
