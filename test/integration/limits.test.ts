import { performance } from 'node:perf_hooks'
import type http from 'node:http'
import { test } from 'tap'
import { sleep, startGateway, startUpstream, until, type Teardown, type Upstream } from '../helpers'

// Connection limits, end to end: real upstream servers on loopback that hold each request
// until the test lets it go, and a real gateway in front of them.

/**
 * An upstream that holds every request until `release()`; `open` counts the held ones.
 * `t` closes it; a test releases it in a teardown of its own, registered after the
 * gateway's so that it runs first: the gateway's close waits for the held requests.
 */
interface Held extends Upstream {
  held: http.ServerResponse[]
  open: number
  maxOpen: number
  release: () => void
}

async function startHeld (t: Teardown, name: string): Promise<Held> {
  const up = await startUpstream(t, name, (_req, res, _body, upstream) => {
    const self = upstream as Held
    self.open++
    self.maxOpen = Math.max(self.maxOpen, self.open)
    res.once('close', () => { self.open-- })
    self.held.push(res)
  }) as Held
  up.held = []
  up.open = 0
  up.maxOpen = 0
  up.release = () => {
    for (const res of up.held.splice(0)) {
      res.setHeader('x-upstream', up.name)
      res.end(up.name)
    }
  }
  return up
}

interface Answer { status: number, upstream: string | null, code: string | undefined, retryAfter: string | null, at: number }

async function request (url: string, headers?: Record<string, string>): Promise<Answer> {
  const res = await fetch(url, { headers })
  const text = await res.text()
  let code: string | undefined
  try { code = (JSON.parse(text) as { code?: string }).code } catch {}
  return { status: res.status, upstream: res.headers.get('x-upstream'), code, retryAfter: res.headers.get('retry-after'), at: performance.now() }
}

test('maxConnections 1 and maxPending 0: a second concurrent request to a busy single target is a 503 at once', async (t) => {
  const slow = await startHeld(t, 'slow')
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [slow.url], maxConnections: 1, maxPending: 0, retry: { attempts: 0 } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  t.teardown(slow.release)
  const target = app.upstreams.get('pool')?.targets[0]

  const first = request(`${url}/one`)
  await until('the first request to reach the target', () => slow.hits === 1)
  t.equal(target?.inflight, 1, 'one request in flight')
  const sent = performance.now()
  const second = await request(`${url}/two`)
  t.equal(second.status, 503, 'the second request is refused')
  t.equal(second.code, 'FST_UPSTREAM_OVERLOADED')
  t.equal(second.retryAfter, '1', 'with Retry-After')
  t.ok(second.at - sent < 1000, `answered at once (${Math.round(second.at - sent)} ms)`)
  t.equal(slow.hits, 1, 'the second request never reached the target')
  t.equal(target?.inflight, 1, 'and was not counted in flight')

  slow.release()
  const done = await first
  t.equal(done.status, 200, 'the first request completes')
  t.ok(done.at > second.at, 'after the 503 was sent')
  await until('the target to be idle', () => target?.inflight === 0)
  const third = request(`${url}/three`)
  await until('the third request to reach the target', () => slow.hits === 2)
  slow.release()
  t.equal((await third).status, 200, 'with the connection free again, requests go through')
  t.equal(slow.maxOpen, 1, 'never more than one request open at the target')
})

test('with two targets, a request the balancer would send to a full target goes to the other', async (t) => {
  // two pairs of servers (two pools sharing a target would share its connection pool)
  const ups = [await startHeld(t, 'slow'), await startHeld(t, 'other'), await startHeld(t, 'slow'), await startHeld(t, 'other')]
  const [slow, other, freeSlow, freeOther] = ups
  // the balancer strongly prefers the slow target: it would pick it for the second request too
  const targets = (a: Held, b: Held) => [{ url: a.url, weight: 100 }, b.url]
  const { app, url } = await startGateway(t, {
    upstreams: {
      limited: { targets: targets(slow, other), maxConnections: 1, maxPending: 0, retry: { attempts: 0 } },
      unlimited: { targets: targets(freeSlow, freeOther), retry: { attempts: 0 } }
    },
    routes: [{ prefix: '/limited', upstream: 'limited' }, { prefix: '/unlimited', upstream: 'unlimited' }]
  })
  t.teardown(() => { for (const up of ups) up.release() })

  // without limits, both concurrent requests go to the preferred target
  const free = [request(`${url}/unlimited/a`)]
  await until('the first request', () => freeSlow.hits === 1)
  free.push(request(`${url}/unlimited/b`))
  await until('the second request', () => freeSlow.hits + freeOther.hits === 2)
  t.equal(freeSlow.hits, 2, 'without limits the balancer sends both to the preferred target')
  freeSlow.release()
  t.same((await Promise.all(free)).map((a) => a.upstream), ['slow', 'slow'], 'both answered by the preferred target')

  const limited = app.upstreams.get('limited')
  const first = request(`${url}/limited/a`)
  await until('the first request', () => slow.hits === 1)
  const second = request(`${url}/limited/b`)
  await until('the second request', () => other.hits === 1)
  t.equal(slow.hits, 1, 'the full target got no second request')
  t.same(limited?.targets.map((v) => v.inflight), [1, 1], 'one request in flight on each')
  // both full now: a third request is refused
  const third = await request(`${url}/limited/c`)
  t.match(third, { status: 503, code: 'FST_UPSTREAM_OVERLOADED', retryAfter: '1' }, 'both full: 503')
  slow.release()
  other.release()
  t.same([(await first).upstream, (await second).upstream], ['slow', 'other'], 'both answered')
  t.equal(slow.maxOpen, 1, 'never more than one request open at the limited target')
})

test('consistent hashing: a key whose target is full goes to another target while it is', async (t) => {
  const ups = [await startHeld(t, 'a'), await startHeld(t, 'b')]
  const { app, url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: ups.map((u) => u.url),
        balancer: { type: 'consistent-hash', key: 'header:x-user' },
        maxConnections: 1,
        retry: { attempts: 0 }
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  t.teardown(() => { for (const up of ups) up.release() })
  const hits = (): number => ups[0].hits + ups[1].hits
  const alice = { 'x-user': 'alice' }

  const first = request(`${url}/x`, alice)
  await until('the first request', () => hits() === 1)
  const home = ups[0].hits === 1 ? ups[0] : ups[1]
  const away = home === ups[0] ? ups[1] : ups[0]
  const second = request(`${url}/x`, alice)
  await until('the second request', () => hits() === 2)
  t.equal(away.hits, 1, 'the same key went to the other target while its own was full')
  t.match(await request(`${url}/x`, alice), { status: 503, code: 'FST_UPSTREAM_OVERLOADED' }, 'both full: 503')
  home.release()
  away.release()
  t.same([(await first).upstream, (await second).upstream], [home.name, away.name], 'both answered')
  await until('both targets to be idle', () => app.upstreams.get('pool')?.targets.every((v) => v.inflight === 0) === true)
  const again = request(`${url}/x`, alice)
  await until('the next request', () => hits() === 3)
  home.release()
  t.equal((await again).upstream, home.name, 'with room again, the key goes back to its own target')
})

test('maxPending lets that many requests wait for a connection before the target is full', async (t) => {
  const slow = await startHeld(t, 'slow')
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [slow.url], maxConnections: 1, maxPending: 1, retry: { attempts: 0 } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  t.teardown(slow.release)
  const target = app.upstreams.get('pool')?.targets[0]

  const first = request(`${url}/one`)
  await until('the first request to reach the target', () => slow.hits === 1)
  const second = request(`${url}/two`)
  await until('the second request to wait', () => target?.inflight === 2)
  await sleep(50)
  t.equal(slow.hits, 1, 'the waiting request is not sent: one connection only')
  const third = await request(`${url}/three`)
  t.match(third, { status: 503, code: 'FST_UPSTREAM_OVERLOADED' }, 'one in flight and one waiting: full')
  slow.release()
  t.equal((await first).status, 200, 'the first request completes')
  await until('the waiting request to reach the target', () => slow.hits === 2)
  slow.release()
  t.equal((await second).status, 200, 'the waiting request went through')
  t.equal(slow.maxOpen, 1, 'never more than maxConnections open at the target')
})
