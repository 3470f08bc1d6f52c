// Rolling restarts of every target under load (gracefully, crudely, by crash): which requests fail, by method and Idempotency-Key.
import http from 'node:http'
import type net from 'node:net'
import { test } from 'tap'
import { sleep, startGateway, type Teardown } from '../helpers'

/** What the targets share, as a database behind them would: each Idempotency-Key seen, and how often it came. */
type Store = Map<string, number>

interface Target {
  url: string
  /** readiness 503 for `grace` ms, then close(), waiting for requests in flight; back after `down` ms */
  graceful: (grace: number, down: number) => Promise<void>
  /**
   * close() at once: no new connection, requests in flight finish, and each keep-alive
   * connection closes as soon as it is idle (the race a gateway meets on a restart
   * without grace); back `down` ms after the last one closed
   */
  crude: (down: number) => Promise<void>
  /** every socket destroyed at once; back after `down` ms */
  crash: (down: number) => Promise<void>
}

/** A target on a fixed loopback port that can be restarted; it applies each Idempotency-Key once (see Store). */
async function restartable (t: Teardown, name: string, store: Store): Promise<Target> {
  let draining = false
  const sockets = new Set<net.Socket>()
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    if (req.url === '/health') {
      res.statusCode = draining ? 503 : 200
      res.end()
      return
    }
    let length = 0
    req.on('data', (chunk: Buffer) => { length += chunk.length })
    req.on('end', () => {
      const key = req.headers['idempotency-key']
      // applied the first time; a repeat (a retry after the target read it) gets the same answer
      if (typeof key === 'string') store.set(key, (store.get(key) ?? 0) + 1)
      // a little work, so that requests are in flight when the target goes
      setTimeout(() => {
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify({ name, length }))
      }, 3)
    })
  }
  let server = http.createServer({ keepAliveTimeout: 60_000 }, handler)
  const listen = async (port: number): Promise<number> => {
    server = http.createServer({ keepAliveTimeout: 60_000 }, handler)
    server.on('connection', (socket) => {
      sockets.add(socket)
      socket.once('close', () => sockets.delete(socket))
    })
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
    return (server.address() as net.AddressInfo).port
  }
  const port = await listen(0)
  const closed = (): Promise<void> => new Promise((resolve) => server.close(() => resolve()))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await closed()
  })
  const back = async (down: number): Promise<void> => {
    await sleep(down)
    await listen(port)
    draining = false
  }
  return {
    url: `http://127.0.0.1:${port}`,
    async graceful (grace, down) {
      draining = true
      await sleep(grace)
      await closed()
      await back(down)
    },
    async crude (down) {
      const done = closed()
      const idle = setInterval(() => server.closeIdleConnections(), 5)
      await done
      clearInterval(idle)
      await back(down)
    },
    async crash (down) {
      const done = closed()
      for (const socket of sockets) socket.resetAndDestroy()
      await done
      await back(down)
    }
  }
}

interface Tally { sent: number, failed: number }
type Kind = 'GET' | 'POST' | 'keyed POST'

/** `clients` clients sending GETs, POSTs and keyed POSTs in turn until `stop()`; the tallies by kind. */
function load (url: string, clients: number): { stop: () => Promise<Record<Kind, Tally>> } {
  const tally: Record<Kind, Tally> = { GET: { sent: 0, failed: 0 }, POST: { sent: 0, failed: 0 }, 'keyed POST': { sent: 0, failed: 0 } }
  const kinds: Kind[] = ['GET', 'POST', 'keyed POST']
  const state = { running: true }
  let next = 0
  const body = 'b'.repeat(2048)
  const client = async (): Promise<void> => {
    // bounded: at most this many requests per client, whatever the timing
    for (let i = 0; i < 3000 && state.running; i++) {
      const kind = kinds[next++ % kinds.length]
      const init: RequestInit = kind === 'GET'
        ? {}
        : { method: 'POST', body, headers: { 'content-type': 'text/plain', ...(kind === 'keyed POST' ? { 'idempotency-key': `key-${next}` } : {}) } }
      tally[kind].sent++
      try {
        const res = await fetch(`${url}/orders`, { ...init, signal: AbortSignal.timeout(5000) })
        const text = await res.text()
        if (res.status !== 200 || (kind !== 'GET' && JSON.parse(text).length !== body.length)) tally[kind].failed++
      } catch {
        tally[kind].failed++
      }
    }
  }
  const all = Promise.all(Array.from({ length: clients }, client))
  return {
    async stop () {
      state.running = false
      await all
      return tally
    }
  }
}

const MODES = ['graceful', 'crude', 'crash'] as const

for (const mode of MODES) {
  test(`every target restarted in turn, ${mode}: ${mode === 'graceful' ? 'no request of any method fails' : 'no GET and no keyed POST fails'}`, async (t) => {
    const store: Store = new Map()
    const targets = [await restartable(t, 't0', store), await restartable(t, 't1', store), await restartable(t, 't2', store)]
    const { url } = await startGateway(t, {
      upstreams: {
        pool: {
          targets: targets.map((target) => target.url),
          balancer: 'least-request',
          retry: { attempts: 2, backoff: { base: 5, max: 20 } },
          healthCheck: {
            active: { path: '/health', interval: 100, timeout: 200, healthyThreshold: 1, unhealthyThreshold: 1 },
            passive: { consecutiveFailures: 1, ejectionTime: 1000 }
          }
        }
      },
      routes: [{ prefix: '/', upstream: 'pool' }]
    })
    const running = load(url, 8)
    await sleep(300)
    for (const target of targets) {
      if (mode === 'graceful') await target.graceful(400, 200)
      else if (mode === 'crude') await target.crude(200)
      else await target.crash(200)
      // back in rotation (its next active check passes) before the next one goes
      await sleep(400)
    }
    const tally = await running.stop()
    const repeated = [...store.values()].filter((times) => times > 1).length
    t.comment(`${mode}: ${Object.entries(tally).map(([kind, { sent, failed }]) => `${kind} ${failed} failed of ${sent}`).join(', ')}; ` +
      `${repeated} keyed POSTs reached a second target after the first had read them`)
    t.ok(tally.GET.sent > 100 && tally['keyed POST'].sent > 100, 'the load ran through the restarts')
    t.equal(tally.GET.failed, 0, 'no GET failed')
    t.equal(tally['keyed POST'].failed, 0, 'no keyed POST failed')
    if (mode === 'graceful') t.equal(tally.POST.failed, 0, 'no POST failed either')
  })
}
