import { performance } from 'node:perf_hooks'
import { test } from 'tap'
import type { TargetState } from '../../lib/index'
import { closedPort, recorder, sleep, startGateway, startUpstream, until, type StateEvent, type Teardown, type Upstream } from '../helpers'

// Passive health checks (outlier ejection), end to end: real traffic through a real
// gateway to real upstream servers on loopback, some of them refusing or failing.

/** An upstream that answers every request with `status()` and its name in x-upstream. */
function startStatus (t: Teardown, name: string, status: () => number): Promise<Upstream> {
  return startUpstream(t, name, (_req, res, _body, upstream) => {
    res.statusCode = status()
    res.setHeader('x-upstream', upstream.name)
    res.end(upstream.name)
  })
}

interface Answer { status: number, upstream: string | null, code: string | undefined, retryAfter: string | null }

async function request (url: string): Promise<Answer> {
  const res = await fetch(url)
  const text = await res.text()
  let code: string | undefined
  try { code = (JSON.parse(text) as { code?: string }).code } catch {}
  return { status: res.status, upstream: res.headers.get('x-upstream'), code, retryAfter: res.headers.get('retry-after') }
}

/** Sends requests one after the other until `done()` holds (at most `timeout` ms); returns the answers. */
async function drive (url: string, what: string, done: () => boolean, timeout = 5000, pause = 0): Promise<Answer[]> {
  const answers: Answer[] = []
  const deadline = Date.now() + timeout
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`)
    answers.push(await request(url))
    if (pause > 0) await sleep(pause)
  }
  return answers
}

test('consecutive refused connections eject a target, which returns after ejectionTime', async (t) => {
  const good = await startUpstream(t, 'good')
  const dead = await closedPort()
  const { hook, events } = recorder()
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [good.url, dead],
        retry: { attempts: 0 },
        healthCheck: { passive: { consecutiveFailures: 3, ejectionTime: 1500 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onTargetStateChange: hook
  })
  const pool = app.upstreams.get('pool')
  const target = pool?.target(dead)

  const answers = await drive(`${url}/x`, 'the ejection', () => target?.state === 'ejected')
  t.same(answers.filter((a) => a.status === 502).map((a) => a.code), Array(3).fill('FST_UPSTREAM_CONNECT_FAILED'), 'exactly consecutiveFailures refused connections')
  t.equal(answers.filter((a) => a.upstream === 'good').length, answers.length - 3, 'the other requests were served')
  t.equal(target?.ejections, 1)
  t.equal(target?.failures, 3)
  t.same(events.map(({ url, from, to, reason }) => ({ url, from, to, reason })), [
    { url: dead, from: 'healthy', to: 'ejected', reason: 'ejected for 1500 ms after 3 consecutive failures' }
  ])
  t.match(app.upstreams.status().pools.pool, { available: 1, targets: [{ state: 'healthy' }, { url: dead, state: 'ejected', ejections: 1 }] })

  const during = await Promise.all(Array.from({ length: 10 }, () => request(`${url}/x`)))
  t.same(during.map((a) => a.upstream), Array(10).fill('good'), 'an ejected target gets no traffic')
  t.equal(target?.state, 'ejected', 'still ejected after those requests')

  await until('the target to return', () => target?.state === 'healthy', 1500 + 5000)
  t.match(events[1], { url: dead, from: 'ejected', to: 'healthy', reason: 'ejection time over' })
  // timers may fire a millisecond or two early against performance.now()
  const lasted = events[1].at - events[0].at
  t.ok(lasted >= 1498, `the ejection lasted ${Math.round(lasted)} ms, at least ejectionTime`)
  const after = await drive(`${url}/x`, 'a request to the returned target', () => (target?.failures ?? 0) > 3)
  t.equal(after.at(-1)?.status, 502, 'the returned target takes requests again')
})

test('a repeated ejection lasts twice as long, up to maxEjectionTime; a quiet spell resets it', async (t) => {
  const dead = await closedPort()
  const { hook, events } = recorder()
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [dead],
        retry: { attempts: 0 },
        healthCheck: { passive: { consecutiveFailures: 2, ejectionTime: 200, maxEjectionTime: 500 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onTargetStateChange: hook
  })
  const target = app.upstreams.get('pool')?.target(dead)
  const ejections = (): StateEvent[] => events.filter((e) => e.to === 'ejected')
  const returns = (): StateEvent[] => events.filter((e) => e.from === 'ejected')

  // keep failing requests coming, so that the target is ejected again as soon as it returns
  await drive(`${url}/x`, 'three ejections and returns', () => returns().length >= 3, 10_000, 5)
  t.same(ejections().slice(0, 3).map((e) => e.reason), [
    'ejected for 200 ms after 2 consecutive failures',
    'ejected for 400 ms after 2 consecutive failures',
    'ejected for 500 ms after 2 consecutive failures'
  ], 'doubled, then capped at maxEjectionTime')
  const durations = [200, 400, 500]
  for (let i = 0; i < 3; i++) {
    const lasted = returns()[i].at - ejections()[i].at
    t.ok(lasted >= durations[i] - 2 && lasted < durations[i] + 1000, `ejection ${i + 1} lasted ${Math.round(lasted)} ms (${durations[i]} ms)`)
    t.equal(returns()[i].reason, 'ejection time over')
  }
  t.equal(target?.ejections, ejections().length)

  // a spell longer than maxEjectionTime without an ejection: the next one is short again
  await until('no ejection in progress', () => target?.state === 'healthy')
  await sleep(500 + 200)
  const count = ejections().length
  await drive(`${url}/x`, 'one more ejection', () => ejections().length > count, 5000)
  t.equal(ejections()[count].reason, 'ejected for 200 ms after 2 consecutive failures', 'back to ejectionTime after a quiet spell')
})

test('maxEjectionPercent caps how much of the pool is ejected, but one target may always be', async (t) => {
  const dead: string[] = []
  for (let i = 0; i < 4; i++) dead.push(await closedPort(`gone${i}`))
  const { app, url } = await startGateway(t, {
    upstreams: {
      half: { targets: dead, retry: { attempts: 0 }, healthCheck: { passive: { consecutiveFailures: 2, ejectionTime: 60_000, maxEjectionPercent: 50 } } },
      none: { targets: dead.slice(0, 2), retry: { attempts: 0 }, healthCheck: { passive: { consecutiveFailures: 2, ejectionTime: 60_000, maxEjectionPercent: 0 } } }
    },
    routes: [{ prefix: '/half', upstream: 'half' }, { prefix: '/none', upstream: 'none' }]
  })
  const states = (pool: string): TargetState[] => app.upstreams.get(pool)?.targets.map((v) => v.state) ?? []
  const count = (pool: string, state: TargetState): number => states(pool).filter((s) => s === state).length

  // every target fails every request: enough requests to eject all of them, were it allowed
  let sent = 0
  await drive(`${url}/half/x`, '40 requests', () => ++sent > 40)
  t.equal(count('half', 'ejected'), 2, `half of the pool ejected, no more: ${states('half').join(', ')}`)
  for (const view of app.upstreams.get('half')?.targets ?? []) {
    if (view.state !== 'ejected') t.ok(view.failures > 2, `${view.url} kept failing (${view.failures} times) and stayed in`)
  }
  t.equal(app.upstreams.status().pools.half.available, 2)

  sent = 0
  await drive(`${url}/none/x`, '20 requests', () => ++sent > 20)
  t.equal(count('none', 'ejected'), 1, `with maxEjectionPercent 0, still one target is ejected: ${states('none').join(', ')}`)
  t.equal(count('none', 'healthy'), 1)
})

test('statusCodes makes chosen answers count as failures; without it answers never eject', async (t) => {
  let mixed = 0
  const e500 = await startStatus(t, 'e500', () => 500)
  const e503 = await startStatus(t, 'e503', () => 503)
  // 500, 500, 200, 500, 500, 200, ...: never three failures in a row
  const flaky = await startStatus(t, 'flaky', () => (mixed++ % 3 === 2 ? 200 : 500))
  const { hook, events } = recorder()
  const passive = { consecutiveFailures: 3, ejectionTime: 60_000, maxEjectionPercent: 100 }
  const { app, url } = await startGateway(t, {
    upstreams: {
      strict: { targets: [e500.url, e503.url], retry: { attempts: 0 }, healthCheck: { passive: { ...passive, statusCodes: [500] } } },
      lenient: { targets: [e500.url], retry: { attempts: 0 }, healthCheck: { passive } },
      flaky: { targets: [flaky.url], retry: { attempts: 0 }, healthCheck: { passive: { ...passive, statusCodes: ['500-599'] } } }
    },
    routes: [{ prefix: '/strict', upstream: 'strict' }, { prefix: '/lenient', upstream: 'lenient' }, { prefix: '/flaky', upstream: 'flaky' }],
    onTargetStateChange: hook
  })
  const strict = app.upstreams.get('strict')

  const answers = await drive(`${url}/strict/x`, 'the 500 target to be ejected', () => strict?.target(e500.url)?.state === 'ejected')
  t.equal(answers.filter((a) => a.upstream === 'e500').length, 3, 'three 500 answers ejected it')
  t.ok(answers.filter((a) => a.upstream === 'e500').every((a) => a.status === 500), 'the 500 answers reached the client')
  t.match(events, [{ url: e500.url, from: 'healthy', to: 'ejected', reason: 'ejected for 60000 ms after 3 consecutive failures' }])
  t.equal(strict?.target(e500.url)?.failures, 3)
  const more = await drive(`${url}/strict/x`, '10 more requests', () => (strict?.target(e503.url)?.requests ?? 0) >= 12)
  t.ok(more.every((a) => a.upstream === 'e503' && a.status === 503), 'the 503 target keeps serving')
  t.equal(strict?.target(e503.url)?.state, 'healthy', '503 is not in statusCodes')
  t.equal(strict?.target(e503.url)?.failures, 0)

  let sent = 0
  const lenient = await drive(`${url}/lenient/x`, '20 requests', () => ++sent > 20)
  t.ok(lenient.every((a) => a.status === 500), 'the lenient pool also got 500 answers')
  t.match(app.upstreams.get('lenient')?.target(e500.url), { state: 'healthy', failures: 0, ejections: 0 }, 'without statusCodes answers are not failures')

  sent = 0
  const flakyAnswers = await drive(`${url}/flaky/x`, '18 requests', () => ++sent > 18)
  t.equal(flakyAnswers.filter((a) => a.status === 500).length, 12)
  t.match(app.upstreams.get('flaky')?.target(flaky.url), { state: 'healthy', failures: 12, ejections: 0 }, 'failures that are not consecutive do not eject')
  t.equal(events.length, 1)
})

test('an ejected target comes back early when an active check passes', async (t) => {
  // traffic gets 500 answers, the health endpoint says 200
  const sick = await startUpstream(t, 'sick', (req, res, _body, upstream) => {
    res.statusCode = req.url === '/healthz' ? 200 : 500
    res.setHeader('x-upstream', upstream.name)
    res.end()
  })
  const good = await startUpstream(t, 'good')
  const { hook, events } = recorder()
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [sick.url, good.url],
        retry: { attempts: 0 },
        healthCheck: {
          active: { path: '/healthz', interval: 200, healthyThreshold: 3 },
          passive: { consecutiveFailures: 2, statusCodes: [500], ejectionTime: 30_000 }
        }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onTargetStateChange: hook
  })
  const target = app.upstreams.get('pool')?.target(sick.url)
  await drive(`${url}/x`, 'the ejection', () => target?.state === 'ejected')
  t.match(events, [{ url: sick.url, from: 'healthy', to: 'ejected', reason: 'ejected for 30000 ms after 2 consecutive failures' }])
  await until('the target to return', () => target?.state === 'healthy', 5000)
  t.match(events[1], { url: sick.url, from: 'ejected', to: 'healthy', reason: 'active check passed' })
  const lasted = events[1].at - events[0].at
  t.ok(lasted < 200 + 2000, `back after ${Math.round(lasted)} ms, at the next probe, not after 30 s`)
  t.equal(events.length, 2)
})

test('Retry-After on the 503 is the time left of the soonest ejection when every target is ejected', async (t) => {
  const dead = await closedPort()
  const { hook, events } = recorder()
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: [dead], retry: { attempts: 0 }, healthCheck: { passive: { consecutiveFailures: 1, ejectionTime: 10_000 } } } },
    routes: [{ prefix: '/', upstream: 'pool' }],
    onTargetStateChange: hook
  })
  const first = await request(`${url}/x`)
  t.equal(first.status, 502)
  t.equal(events.length, 1)
  t.equal(events[0].to, 'ejected')
  const ejectedAt = events[0].at

  /** a 503 and the bounds of Retry-After: the time left when the request was sent and answered, in whole seconds up */
  async function check (): Promise<number> {
    const sent = performance.now()
    const answer = await request(`${url}/x`)
    const answered = performance.now()
    t.equal(answer.status, 503)
    t.equal(answer.code, 'FST_UPSTREAM_NO_TARGET')
    const value = Number(answer.retryAfter)
    const low = Math.ceil((10_000 - (answered - ejectedAt)) / 1000)
    const high = Math.ceil((10_000 - (sent - ejectedAt)) / 1000)
    t.ok(value >= low && value <= high, `Retry-After ${answer.retryAfter} is the time left (${low}-${high} s)`)
    return value
  }
  const soon = await check()
  t.ok(soon >= 9, 'about ten seconds left at first')
  await sleep(2200)
  const later = await check()
  t.ok(later <= soon - 2, `less time left later (${soon} s, then ${later} s)`)
})

test('a failure status whose body then breaks off counts once; so does a 103 followed by a reset', async (t) => {
  // /503: a 503 (a failure status here) whose body is cut off; /103: early hints, then a reset
  const up = await startUpstream(t, 'u0', (req, res) => {
    if (req.url === '/103') {
      res.writeEarlyHints({ link: '</style.css>; rel=preload' })
      setTimeout(() => res.socket?.resetAndDestroy(), 20)
      return
    }
    res.writeHead(503, { 'content-length': '100' })
    res.write('partial')
    setTimeout(() => res.socket?.destroy(), 20)
  })
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [up.url], retry: { attempts: 0 }, healthCheck: { passive: { consecutiveFailures: 5, statusCodes: [503] } } } }
  }, (app) => {
    app.get('/503', (_request, reply) => reply.forward('pool'))
    app.get('/103', (_request, reply) => reply.forward('pool'))
  })
  const target = app.upstreams.get('pool')?.targets[0]
  await fetch(`${url}/503`).then(async (res) => { await res.arrayBuffer() }, () => {}).catch(() => {})
  await until('the broken 503 to end', () => target?.inflight === 0)
  t.equal(target?.failures, 1, 'the 503 with a broken body is one failure')
  const res = await fetch(`${url}/103`)
  t.equal(res.status, 502, 'the reset after early hints is a bad gateway')
  await res.arrayBuffer()
  await until('the reset to end', () => target?.inflight === 0)
  t.equal(target?.failures, 2, 'and the reset after a 103 is one more, not two')
})
