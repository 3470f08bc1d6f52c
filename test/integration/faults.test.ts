import http from 'node:http'
import net from 'node:net'
import { performance } from 'node:perf_hooks'
import { test } from 'tap'
import { sleep, startGateway, startUpstream, startUpstreams, within } from '../helpers'
import type { TargetStateEvent } from '../../lib/index'

// Fault injection against real loopback servers: targets die, come back, hang, flap,
// reset mid-body and answer 5xx in bursts, while clients keep sending.

/** `clients` concurrent clients send GETs until `stop()`; returns status counts. */
function clients (url: string, count: number): { stop: () => Promise<Record<string, number>> } {
  const counts: Record<string, number> = {}
  const state = { running: true }
  const loops = Array.from({ length: count }, async () => {
    while (state.running) {
      let key: string
      try {
        const res = await fetch(url)
        await res.arrayBuffer()
        key = String(res.status)
      } catch (error) {
        key = `error ${(error as Error).message}`
      }
      counts[key] = (counts[key] ?? 0) + 1
    }
  })
  return {
    stop: async () => {
      state.running = false
      await Promise.all(loops)
      return counts
    }
  }
}

test('a target killed under load: no failed idempotent request, out of rotation within 1 s, back when restarted', async (t) => {
  const ups = await startUpstreams(t, 3)
  const events: Array<TargetStateEvent & { at: number }> = []
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: ups.map((u) => u.url),
        healthCheck: { passive: { consecutiveFailures: 3, ejectionTime: 1000 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onTargetStateChange: (event) => events.push({ ...event, at: performance.now() })
  })
  const load = clients(`${url}/x`, 8)
  await sleep(300)
  const killedAt = performance.now()
  await ups[1].close()
  t.ok(await within(() => events.some((e) => e.to === 'ejected'), 2000), 'the dead target was ejected')
  const ejection = events.find((e) => e.to === 'ejected') as TargetStateEvent & { at: number }
  t.equal(ejection.target.url, ups[1].url)
  t.ok(ejection.at - killedAt < 1000, `out of rotation ${Math.round(ejection.at - killedAt)} ms after the kill`)
  await sleep(200)
  const restarted = await startUpstream(t, 'u1-again', undefined, ups[1].port)
  t.ok(await within(() => restarted.hits > 0, 3000), 'the restarted target serves again')
  const counts = await load.stop()
  t.same(Object.keys(counts), ['200'], `every request succeeded: ${JSON.stringify(counts)}`)
  t.equal(app.upstreams.get('pool')?.target(ups[1].url)?.state, 'healthy')
})

test('a target that accepts and never answers: GETs fail over after the response timeout, a POST gets 504', async (t) => {
  const sockets = new Set<net.Socket>()
  const silent = net.createServer((socket) => { sockets.add(socket) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => silent.close(resolve))
  })
  const silentUrl = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`
  const good = await startUpstream(t, 'good')
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: [silentUrl, good.url], balancer: 'round-robin', timeout: { response: 300 }, retry: { backoff: { base: 0 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const get = await fetch(`${url}/a`)
  t.equal(get.status, 200, 'the GET that met the silent target first was retried')
  await get.arrayBuffer()
  // round robin now points at the silent target again
  await (await fetch(`${url}/b`)).arrayBuffer()
  const post = await fetch(`${url}/c`, { method: 'POST', body: 'x' })
  const statuses = [post.status]
  await post.arrayBuffer()
  const post2 = await fetch(`${url}/d`, { method: 'POST', body: 'y' })
  statuses.push(post2.status)
  await post2.arrayBuffer()
  t.same(statuses.sort(), [200, 504], 'the POST sent to the silent target timed out and was not replayed')
})

test('a target that resets mid-body: the client sees a broken response, the target is counted, the gateway keeps serving', async (t) => {
  const breaker = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100000' })
    res.write('x'.repeat(1000), () => { res.socket?.resetAndDestroy() })
  })
  await new Promise<void>((resolve) => breaker.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { breaker.closeAllConnections(); breaker.close() })
  const breakerUrl = `http://127.0.0.1:${(breaker.address() as net.AddressInfo).port}`
  const good = await startUpstream(t, 'good')
  const { app, url } = await startGateway(t, {
    upstreams: {
      broken: { targets: [breakerUrl], healthCheck: { passive: { consecutiveFailures: 2 } } },
      good: { targets: [good.url] }
    }
  }, (app) => {
    app.get('/broken', (_request, reply) => reply.forward('broken'))
    app.get('/good', (_request, reply) => reply.forward('good'))
  })
  for (let i = 0; i < 2; i++) {
    const outcome = await fetch(`${url}/broken`).then(async (res) => { await res.arrayBuffer(); return 'complete' }, () => 'broken')
      .catch(() => 'broken')
    t.equal(outcome, 'broken', 'the truncated body is not passed off as complete')
  }
  const target = app.upstreams.get('broken')?.targets[0]
  t.ok(await within(() => target?.state === 'ejected', 2000), 'two broken bodies in a row ejected the target')
  t.equal(target?.inflight, 0)
  const res = await fetch(`${url}/good`)
  t.equal(res.status, 200)
  await res.arrayBuffer()
})

test('a flapping target and 5xx bursts: retries on 5xx keep clients whole, passive checks eject the culprit', async (t) => {
  let broken = false
  const flap = setInterval(() => { broken = !broken }, 150)
  t.teardown(() => clearInterval(flap))
  const flapping = await startUpstream(t, 'flapping', (_req, res, _body, upstream) => {
    res.setHeader('x-upstream', upstream.name)
    res.statusCode = broken ? 503 : 200
    res.end(broken ? 'burst' : 'ok')
  })
  const steady = await startUpstreams(t, 2)
  const events: TargetStateEvent[] = []
  const { url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [flapping.url, ...steady.map((u) => u.url)],
        healthCheck: { passive: { consecutiveFailures: 2, statusCodes: ['500-599'], ejectionTime: 200 } },
        retry: { statusCodes: [503], backoff: { base: 0 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onTargetStateChange: (event) => events.push(event)
  })
  const load = clients(`${url}/x`, 8)
  await sleep(1500)
  const counts = await load.stop()
  t.same(Object.keys(counts), ['200'], `every request succeeded: ${JSON.stringify(counts)}`)
  t.ok(events.filter((e) => e.to === 'ejected').length >= 1, 'the flapping target was ejected')
  t.ok(events.filter((e) => e.from === 'ejected' && e.to === 'healthy').length >= 1, 'and came back between bursts')
  t.ok(flapping.hits > 0)
})

test('all targets down: 502s until they are ejected, then fast 503s with Retry-After', async (t) => {
  const a = await startUpstream(t, 'a')
  const b = await startUpstream(t, 'b')
  await a.close()
  await b.close()
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [a.url, b.url], healthCheck: { passive: { consecutiveFailures: 1, ejectionTime: 5000, maxEjectionPercent: 100 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const first = await fetch(`${url}/x`)
  t.equal(first.status, 502)
  t.match(await first.json(), { code: 'FST_UPSTREAM_CONNECT_FAILED' })
  t.same(app.upstreams.get('pool')?.targets.map((v) => v.state), ['ejected', 'ejected'])
  const started = performance.now()
  const res = await fetch(`${url}/x`)
  const elapsed = performance.now() - started
  t.equal(res.status, 503)
  t.match(await res.json(), { code: 'FST_UPSTREAM_NO_TARGET' })
  const retryAfter = Number(res.headers.get('retry-after'))
  t.ok(retryAfter >= 1 && retryAfter <= 5, `Retry-After ${retryAfter}`)
  t.ok(elapsed < 100, `answered in ${elapsed.toFixed(1)} ms`)
})

test('close() during probes and in-flight retries leaves nothing running', async (t) => {
  const before = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap').sort()
  const dead = await startUpstream(t, 'dead')
  await dead.close()
  const slow = await startUpstream(t, 'slow', (req, res) => {
    if (req.url === '/health') res.end('ok')
    else setTimeout(() => res.end('late'), 200)
  })
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [dead.url, slow.url],
        balancer: 'round-robin',
        healthCheck: { active: { path: '/health', interval: 30, timeout: 100 } },
        retry: { backoff: { base: 50, max: 100 } },
        slowStart: { window: 5000 }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  // requests in flight, some in a retry backoff, while probes run
  app.upstreams.get('pool')?.addTarget(dead.url.replace(/:\d+$/, ':1'))
  const pending = Array.from({ length: 4 }, () => fetch(`${url}/x`).then(async (res) => { await res.arrayBuffer(); return res.status }))
  await sleep(60)
  await app.close()
  t.same((await Promise.all(pending)).sort(), [200, 200, 200, 200], 'in-flight requests finished before close completed')
  await slow.close()
  // nothing new is left: for each kind of resource, no more than before the gateway started
  const leftover = (): string[] => {
    const remaining = [...before]
    return process.getActiveResourcesInfo().filter((r) => {
      const at = remaining.indexOf(r)
      if (at === -1) return r !== 'TTYWrap'
      remaining.splice(at, 1)
      return false
    })
  }
  await within(() => leftover().length === 0, 2000)
  t.same(leftover(), [], 'no timer, socket or server left behind')
})
