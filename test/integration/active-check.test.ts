import net from 'node:net'
import { performance } from 'node:perf_hooks'
import Fastify from 'fastify'
import { test } from 'tap'
import fastifyUpstream from '../../lib/index'
import type { TargetState } from '../../lib/index'
import { closedPort, recorder, resources, settledResources, sleep, startGateway, startUpstream, until, type StateEvent, type Teardown, type Upstream } from '../helpers'

// Active health checks, end to end: real upstream servers on loopback answer the probes,
// and a real gateway proxies traffic by what the probes found.

interface Probe { method: string, url: string, headers: Record<string, string | string[] | undefined> }

/** An upstream whose health path answers `status` (after `delay` ms) and whose other paths echo. */
interface Probed extends Upstream {
  status: number
  /** when set, decides each answer's status instead of `status` */
  script: (() => number) | undefined
  delay: number
  /** a delay of Infinity: the health path never answers */
  probes: Probe[]
  /** statuses the health path answered, in order */
  answers: number[]
  /** probe requests open at the upstream now, and the most ever open at once */
  open: number
  maxOpen: number
  /** when each probe arrived and when its exchange ended (performance.now() ms) */
  arrived: number[]
  ended: number[]
  /** requests other than probes */
  traffic: number
  /** traffic requests hang instead of answering */
  hangTraffic: boolean
}

async function startProbed (t: Teardown, name: string, options: { status?: number, delay?: number, healthPath?: string, hangTraffic?: boolean } = {}): Promise<Probed> {
  const healthPath = options.healthPath ?? '/healthz'
  const up = await startUpstream(t, name, (req, res, _body, upstream) => {
    const self = upstream as Probed
    if (req.url === healthPath) {
      self.probes.push({ method: req.method as string, url: req.url, headers: req.headers })
      self.arrived.push(performance.now())
      self.open++
      self.maxOpen = Math.max(self.maxOpen, self.open)
      res.once('close', () => { self.open--; self.ended.push(performance.now()) })
      const answer = (): void => {
        const status = self.script?.() ?? self.status
        self.answers.push(status)
        res.statusCode = status
        res.end('probe')
      }
      if (self.delay === Infinity) return
      if (self.delay > 0) setTimeout(answer, self.delay)
      else answer()
      return
    }
    self.traffic++
    if (self.hangTraffic) return
    res.setHeader('x-upstream', self.name)
    res.end(self.name)
  }) as Probed
  Object.assign(up, { status: options.status ?? 200, script: undefined, delay: options.delay ?? 0, probes: [], answers: [], open: 0, maxOpen: 0, arrived: [], ended: [], traffic: 0, hangTraffic: options.hangTraffic ?? false })
  return up
}

/** Sends `n` requests one after the other; returns who answered (x-upstream, or the status). */
async function send (url: string, n: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {}
  for (let i = 0; i < n; i++) {
    const res = await fetch(url)
    const name = res.headers.get('x-upstream') ?? `status-${res.status}`
    counts[name] = (counts[name] ?? 0) + 1
    await res.arrayBuffer()
  }
  return counts
}

test('HTTP probes use path, method, headers and the base path of the target', async (t) => {
  const up = await startProbed(t, 'u0', { healthPath: '/base/status/ready' })
  const { app } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [`${up.url}/base`],
        healthCheck: { active: { path: '/status/ready', method: 'HEAD', headers: { 'x-probe': 'fastify-upstream', authorization: 'Bearer probe' }, interval: 100 } }
      }
    }
  })
  t.ok(up.probes.length >= 1, 'the first probe ran before the gateway listened')
  t.match(up.probes[0], {
    method: 'HEAD',
    url: '/base/status/ready',
    headers: { 'x-probe': 'fastify-upstream', authorization: 'Bearer probe', host: `127.0.0.1:${up.port}` }
  })
  await until('three probes', () => up.probes.length >= 3)
  for (const probe of up.probes) t.match(probe, { method: 'HEAD', url: '/base/status/ready', headers: { 'x-probe': 'fastify-upstream' } })
  t.equal(up.traffic, 0, 'probes went only to the health path')
  t.equal(app.upstreams.get('pool')?.targets[0].state, 'healthy')
})

test('expectedStatus takes codes and ranges; the default is 200-399', async (t) => {
  const statuses = [204, 299, 418, 300, 302, 500]
  const ups: Probed[] = []
  for (const status of statuses) ups.push(await startProbed(t, `s${status}`, { status }))
  const { hook, events } = recorder()
  const { app, url } = await startGateway(t, {
    upstreams: {
      listed: { targets: ups.map((u) => u.url), healthCheck: { active: { path: '/healthz', expectedStatus: ['200-299', 418], interval: 200 } } },
      defaults: { targets: ups.map((u) => u.url), healthCheck: { active: { path: '/healthz', interval: 200 } } }
    },
    routes: [{ prefix: '/listed', upstream: 'listed' }, { prefix: '/defaults', upstream: 'defaults' }],
    onTargetStateChange: hook
  })
  const states = (pool: string): Record<number, TargetState | undefined> =>
    Object.fromEntries(statuses.map((s, i) => [s, app.upstreams.get(pool)?.targets[i].state]))
  t.same(states('listed'), { 204: 'healthy', 299: 'healthy', 418: 'healthy', 300: 'unhealthy', 302: 'unhealthy', 500: 'unhealthy' })
  t.same(states('defaults'), { 204: 'healthy', 299: 'healthy', 418: 'unhealthy', 300: 'healthy', 302: 'healthy', 500: 'unhealthy' })
  t.equal(events.filter((e) => e.to === 'unhealthy').length, 5, 'one event per target found unhealthy')
  t.same(await send(`${url}/listed/x`, 30), { s204: 10, s299: 10, s418: 10 }, 'traffic only to targets with an expected status')
  t.same(await send(`${url}/defaults/x`, 40), { s204: 10, s299: 10, s300: 10, s302: 10 })
})

test('a tcp probe: a listening port is healthy, a closed one unhealthy, and no bytes are sent', async (t) => {
  let connections = 0
  let bytes = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    connections++
    sockets.add(socket)
    socket.on('data', (chunk) => { bytes += chunk.length })
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const listening = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`
  let serverClosed = false
  const closeServer = (): Promise<void> => {
    if (serverClosed) return Promise.resolve()
    serverClosed = true
    for (const socket of sockets) socket.destroy()
    return new Promise((resolve) => server.close(() => resolve()))
  }
  t.teardown(closeServer)
  const closed = await closedPort()
  const { hook, events } = recorder()
  const { app } = await startGateway(t, {
    upstreams: { pool: { targets: [listening, closed], healthCheck: { active: { type: 'tcp', interval: 50, unhealthyThreshold: 2 } } } },
    onTargetStateChange: hook
  })
  const pool = app.upstreams.get('pool')
  t.equal(pool?.targets[0].state, 'healthy', 'the listening port is healthy')
  t.equal(pool?.targets[1].state, 'unhealthy', 'the closed port is unhealthy')
  t.ok(connections >= 1, 'the listening port was connected to')
  await until('three tcp probes', () => connections >= 3)
  t.equal(bytes, 0, 'a tcp probe only connects')

  // the port stops listening: the next failed probes turn the target unhealthy
  await closeServer()
  await until('the closed server to turn unhealthy', () => pool?.targets[0].state === 'unhealthy')
  t.match(events.find((e) => e.url === listening), { from: 'healthy', to: 'unhealthy', reason: 'active check failed 2 time(s)' })
})

test('a custom check decides; one that throws or outlasts the timeout fails', async (t) => {
  const ups: Probed[] = []
  for (const name of ['yes', 'no', 'throws', 'hangs']) ups.push(await startProbed(t, name))
  const [yes, no, throws, hangs] = ups
  const verdict = new Map<string, boolean>([[yes.url, true], [no.url, false]])
  const seen: string[] = []
  let hangsCalls = 0
  const { hook, events } = recorder()
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: ups.map((u) => u.url),
        healthCheck: {
          active: {
            interval: 50,
            timeout: 150,
            healthyThreshold: 2,
            check: async (target) => {
              seen.push(target.url)
              if (target.url === throws.url) throw new Error('probe crashed')
              if (target.url === hangs.url) {
                hangsCalls++
                await new Promise(() => {})
              }
              return verdict.get(target.url) as boolean
            }
          }
        }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onTargetStateChange: hook
  })
  const pool = app.upstreams.get('pool')
  t.same(pool?.targets.map((v) => v.state), ['healthy', 'unhealthy', 'unhealthy', 'unhealthy'])
  t.same(new Set(seen), new Set(ups.map((u) => u.url)), 'the check received the view of every target')
  t.match(events.find((e) => e.url === throws.url), { from: 'healthy', to: 'unhealthy', reason: 'active check failed 1 time(s)' })
  t.match(events.find((e) => e.url === hangs.url), { from: 'healthy', to: 'unhealthy' })
  t.same(await send(`${url}/x`, 5), { yes: 5 })

  // the check keeps running on the interval; a target it now passes comes back
  const calls = hangsCalls
  await until('more calls of the check on the hanging target', () => hangsCalls >= calls + 2)
  verdict.set(no.url, true)
  await until('the "no" target to pass again', () => pool?.targets[1].state === 'healthy')
  t.match(events.filter((e) => e.url === no.url), [
    { from: 'healthy', to: 'unhealthy' },
    { from: 'unhealthy', to: 'healthy', reason: 'active check passed 2 time(s)' }
  ])
  t.equal(pool?.targets[3].state, 'unhealthy', 'the hanging check still fails')
  for (const up of ups) t.equal(up.probes.length, 0, `${up.name}: a custom check sends no HTTP probe`)
})

test('the first round runs on ready: a target down at start gets no traffic from the very first request', async (t) => {
  const up = await startProbed(t, 'up', { delay: 100 })
  const failing = await startProbed(t, 'failing', { status: 503 })
  const down = await closedPort()
  const { hook, events } = recorder()
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyUpstream, {
    upstreams: {
      pool: {
        targets: [down, failing.url, up.url],
        retry: { attempts: 0 },
        // thresholds of 3 and a long interval: only the first round can have decided
        healthCheck: { active: { path: '/healthz', interval: 60_000, unhealthyThreshold: 3 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onTargetStateChange: hook
  })
  const pool = app.upstreams.get('pool')
  t.same(pool?.targets.map((v) => v.state), ['healthy', 'healthy', 'healthy'], 'no verdict before ready')
  t.equal(up.probes.length, 0, 'no probe before ready')
  await app.ready()
  t.equal(up.answers.length, 1, 'ready waited for the slow probe to be answered')
  t.same(pool?.targets.map((v) => v.state), ['unhealthy', 'unhealthy', 'healthy'], 'the first failed probe counts at once')
  t.equal(events.length, 2, 'one event for each target found down')
  t.match(events.find((e) => e.url === down), { from: 'healthy', to: 'unhealthy', reason: 'active check failed 1 time(s)' })
  t.match(events.find((e) => e.url === failing.url), { from: 'healthy', to: 'unhealthy', reason: 'active check failed 1 time(s)' })

  const first = await app.inject({ url: '/x' })
  t.equal(first.statusCode, 200, 'the very first request succeeds without a retry')
  t.equal(first.headers['x-upstream'], 'up')
  const rest = await Promise.all(Array.from({ length: 9 }, () => app.inject({ url: '/x' })))
  t.same(rest.map((r) => r.headers['x-upstream']), Array(9).fill('up'))
  t.equal(failing.traffic, 0, 'the target whose check fails got no request')
  t.equal(pool?.targets[0].requests, 0, 'the closed port got no request')
})

test('unhealthyThreshold and healthyThreshold consecutive results flip the state', async (t) => {
  const flaky = await startProbed(t, 'flaky')
  const steady = await startProbed(t, 'steady')
  const events: Array<StateEvent & { answers: number[] }> = []
  let mark = 0
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [flaky.url, steady.url],
        healthCheck: { active: { path: '/healthz', interval: 50, unhealthyThreshold: 3, healthyThreshold: 2 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }],
    // what the flaky target had answered since the last flip, at the moment of each event
    onTargetStateChange: (e) => { events.push({ url: e.target.url, from: e.from, to: e.to, reason: e.reason, at: performance.now(), answers: flaky.answers.slice(mark) }) }
  })
  const pool = app.upstreams.get('pool')
  const flip = (status: number): void => { flaky.status = status; mark = flaky.answers.length }

  // failures that are not consecutive never reach the threshold: 500, 500, 200, 500, 500, 200, ...
  let start = flaky.answers.length
  // (ending on a pass, so that the count starts afresh for what follows)
  flaky.script = () => { const n = flaky.answers.length - start; return n >= 9 || n % 3 === 2 ? 200 : 500 }
  await until('nine mixed answers', () => flaky.answers.length - start >= 9)
  flaky.script = undefined
  t.ok(flaky.answers.slice(start).filter((s) => s === 500).length >= 6, 'six failures and more, never three in a row')
  t.equal(events.length, 0, 'no state change while failures are not consecutive')
  t.equal(pool?.targets[0].state, 'healthy')

  flip(500)
  await until('the flaky target to turn unhealthy', () => pool?.targets[0].state === 'unhealthy')
  t.equal(events.length, 1)
  t.match(events[0], { url: flaky.url, from: 'healthy', to: 'unhealthy', reason: 'active check failed 3 time(s)' })
  t.same(events[0].answers, [500, 500, 500], 'exactly unhealthyThreshold failed probes turned it unhealthy')
  t.same(await send(`${url}/x`, 6), { steady: 6 }, 'an unhealthy target gets no traffic')

  // passes that are not consecutive do not bring it back: 200, 500, 200, 500, ...
  start = flaky.answers.length
  // (ending on a failure)
  flaky.script = () => { const n = flaky.answers.length - start; return n < 6 && n % 2 === 0 ? 200 : 500 }
  await until('six alternating answers', () => flaky.answers.length - start >= 6)
  flaky.script = undefined
  t.equal(events.length, 1, 'no state change while passes alternate with failures')
  t.equal(pool?.targets[0].state, 'unhealthy')

  flip(200)
  await until('the flaky target to turn healthy', () => pool?.targets[0].state === 'healthy')
  t.equal(events.length, 2)
  t.match(events[1], { url: flaky.url, from: 'unhealthy', to: 'healthy', reason: 'active check passed 2 time(s)' })
  t.same(events[1].answers, [200, 200], 'exactly healthyThreshold passed probes turned it healthy')
  t.same(await send(`${url}/x`, 6), { flaky: 3, steady: 3 }, 'traffic is balanced again')
})

test('probes of one target never overlap, even when the health endpoint is slower than the interval', async (t) => {
  const slow = await startProbed(t, 'slow', { delay: 200 })
  const hanging = await startProbed(t, 'hanging', { delay: Infinity })
  const { app } = await startGateway(t, {
    upstreams: {
      slow: { targets: [slow.url], healthCheck: { active: { path: '/healthz', interval: 50, timeout: 1000 } } },
      hanging: { targets: [hanging.url], healthCheck: { active: { path: '/healthz', interval: 50, timeout: 120 } } }
    }
  })
  await until('five slow probes', () => slow.answers.length >= 5)
  await until('five timed-out probes', () => hanging.ended.length >= 5)
  t.equal(slow.maxOpen, 1, 'one slow probe at a time')
  t.equal(hanging.maxOpen, 1, 'one hanging probe at a time: a timed-out probe ends before the next starts')
  t.equal(app.upstreams.get('slow')?.targets[0].state, 'healthy', 'a slow probe within the timeout passes')
  t.equal(app.upstreams.get('hanging')?.targets[0].state, 'unhealthy', 'a probe past the timeout fails')
  // the next probe starts an interval after the previous one ended (timers may fire 1-2 ms early)
  for (let i = 1; i < 5; i++) {
    t.ok(slow.arrived[i] - slow.ended[i - 1] >= 45, `slow probe ${i} started ${Math.round(slow.arrived[i] - slow.ended[i - 1])} ms after the previous ended`)
    t.ok(hanging.arrived[i] - hanging.ended[i - 1] >= 45, `hanging probe ${i} started ${Math.round(hanging.arrived[i] - hanging.ended[i - 1])} ms after the previous ended`)
  }
})

test('all targets unhealthy: a fast 503 FST_UPSTREAM_NO_TARGET with Retry-After', async (t) => {
  const ups = [await startProbed(t, 'a', { status: 500, hangTraffic: true }), await startProbed(t, 'b', { status: 500, hangTraffic: true })]
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: ups.map((u) => u.url),
        timeout: { response: 5000 },
        healthCheck: { active: { path: '/healthz', interval: 2000 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  t.same(app.upstreams.get('pool')?.targets.map((v) => v.state), ['unhealthy', 'unhealthy'])
  const started = performance.now()
  const res = await fetch(`${url}/x`)
  const elapsed = performance.now() - started
  t.equal(res.status, 503)
  t.match(await res.json(), { code: 'FST_UPSTREAM_NO_TARGET', statusCode: 503 })
  t.equal(res.headers.get('retry-after'), '2', 'Retry-After: the next probe, in seconds')
  t.ok(elapsed < 1000, `answered at once (${Math.round(elapsed)} ms), not after the upstream's timeout`)
  t.equal(ups[0].traffic + ups[1].traffic, 0, 'no request reached an unhealthy target')
  t.equal(app.upstreams.status().pools.pool.available, 0)
})

test('after close no probe is sent and no timer or socket is left', async (t) => {
  const http1 = await startProbed(t, 'http1')
  const http2 = await startProbed(t, 'http2', { delay: 30 })
  const tcp = await startProbed(t, 'tcp')
  const custom = await startProbed(t, 'custom')
  let checks = 0
  const before = await settledResources()
  const { app, url } = await startGateway(t, {
    upstreams: {
      http: { targets: [http1.url, http2.url], healthCheck: { active: { path: '/healthz', interval: 50 } } },
      tcp: { targets: [tcp.url], healthCheck: { active: { type: 'tcp', interval: 50 } } },
      custom: { targets: [custom.url], healthCheck: { active: { interval: 50, check: async () => { checks++; return true } } } }
    },
    routes: [{ prefix: '/', upstream: 'http' }]
  })
  t.same(await send(`${url}/x`, 4), { http1: 2, http2: 2 })
  await until('several rounds of probes', () => http1.probes.length >= 4 && http2.answers.length >= 4 && checks >= 4)
  t.ok(resources().length > before.length, 'the gateway holds sockets while open')
  await app.close()
  const probes = http1.probes.length + http2.probes.length
  const calls = checks
  await sleep(400) // eight intervals
  t.equal(http1.probes.length + http2.probes.length, probes, 'no HTTP probe after close')
  t.equal(checks, calls, 'no custom check after close')
  await until('the resources from before the gateway started', () => resources().length <= before.length, 2000).catch(() => {})
  t.same(resources(), before, 'the same resources as before the gateway started')
})

test('closing while a custom check hangs leaves no timer behind', async (t) => {
  const up = await startProbed(t, 'u0')
  let calls = 0
  const before = await settledResources()
  const { app } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [up.url],
        // the first check answers; the next ones hang, each for up to the 10 s timeout
        healthCheck: { active: { interval: 50, timeout: 10_000, check: async () => { if (calls++ === 0) return true; return await new Promise<boolean>(() => {}) } } }
      }
    }
  })
  await until('a hanging check', () => calls >= 2)
  const closing = performance.now()
  await app.close()
  await until('the resources from before the gateway started', () => resources().length <= before.length, 2000).catch(() => {})
  t.same(resources(), before, 'the same resources as before the gateway started')
  t.ok(performance.now() - closing < 5000, 'close did not wait for the check\'s timeout')
})

test('a target added to a running pool takes no traffic until its first probe passes', async (t) => {
  const ok = await startProbed(t, 'ok')
  const sick = await startProbed(t, 'sick', { status: 500, delay: 300 })
  const fresh = await startProbed(t, 'fresh', { delay: 300 })
  const { events, hook } = recorder()
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [ok.url], healthCheck: { active: { path: '/healthz', interval: 60_000, timeout: 2000 } }, retry: { attempts: 0 } } },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onTargetStateChange: hook
  })
  const pool = app.upstreams.get('pool')
  if (pool === undefined) throw new Error('no pool')
  t.equal(pool.addTarget(sick.url).state, 'unhealthy', 'a newcomer waits for its first probe')
  t.equal(pool.addTarget(fresh.url).state, 'unhealthy')
  t.same(await send(url, 6), { ok: 6 }, 'no traffic to either while their probes run')
  await until('the fresh target passed its first probe', () => pool.target(fresh.url)?.state === 'healthy')
  t.equal(pool.target(sick.url)?.state, 'unhealthy', 'the sick one stays out')
  const counts = await send(url, 6)
  t.equal(counts.sick, undefined)
  t.ok((counts.fresh ?? 0) > 0, 'the fresh one serves once its probe passed')
  t.match(events.filter((e) => e.url === fresh.url), [
    { from: 'unhealthy', to: 'unhealthy', reason: 'added with weight 1' },
    { from: 'unhealthy', to: 'healthy', reason: /active check passed/ }
  ])
})
