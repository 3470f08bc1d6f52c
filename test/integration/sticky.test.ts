// Sticky sessions by a gateway cookie (pool option sticky.cookie): set, followed, re-set when stale, with every balancer.
import { test } from 'tap'
import type { BalancerOptions } from '../../lib/index'
import { echo, registerError, startGateway, startUpstream, startUpstreams } from '../helpers'

/** The `name=value` part of the sticky cookie in a response, and its attributes. */
function stickyCookie (res: Response, name = 'route'): { pair: string, value: string, attributes: string } | undefined {
  const cookie = res.headers.getSetCookie().find((c) => c.startsWith(`${name}=`))
  if (cookie === undefined) return undefined
  const [pair, ...attributes] = cookie.split('; ')
  return { pair, value: pair.slice(name.length + 1), attributes: attributes.join('; ') }
}

const BALANCERS: BalancerOptions[] = ['round-robin', 'random', 'least-request', 'ewma', { type: 'consistent-hash', key: 'header:x-user' }]

for (const balancer of BALANCERS) {
  test(`the first answer sets the cookie, later requests with it go to the same target (${JSON.stringify(balancer)})`, async (t) => {
    const ups = await startUpstreams(t, 3)
    const { url } = await startGateway(t, {
      upstreams: { pool: { targets: ups.map((u) => u.url), balancer, sticky: { cookie: { name: 'route' } } } },
      routes: [{ prefix: '/', upstream: 'pool' }]
    })
    const first = await fetch(`${url}/a`, { headers: { 'x-user': 'u1' } })
    const served = (await echo(first)).upstream
    const cookie = stickyCookie(first)
    if (cookie === undefined) throw new Error('no sticky cookie')
    t.equal(cookie.attributes, 'Path=/; HttpOnly; SameSite=Lax', 'the default attributes')
    // an opaque hash: none of the targets' addresses or ports in it (a hash may hold any digits)
    t.notOk(ups.some((u) => cookie.value.includes(String(u.port))) || /127\.0|http/.test(cookie.value), 'the value names no address')
    for (let i = 0; i < 12; i++) {
      const res = await fetch(`${url}/b${i}`, { headers: { cookie: `other=1; ${cookie.pair}`, 'x-user': `u${i}` } })
      t.equal((await echo(res)).upstream, served, `request ${i} went to the cookie's target`)
      t.equal(stickyCookie(res), undefined, 'and the cookie is not set again')
    }
  })
}

test('a forged, stale or unusable cookie is ignored: the balancer picks and the cookie is set anew', async (t) => {
  const ups = await startUpstreams(t, 3)
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: ups.map((u) => u.url), balancer: 'round-robin', sticky: { cookie: { name: 'route' } } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const forged = await fetch(`${url}/x`, { headers: { cookie: 'route=AAAAAAAAAAAAAAAAAAAAAA' } })
  t.equal(forged.status, 200)
  const reset = stickyCookie(forged)
  t.ok(reset !== undefined && reset.value !== 'AAAAAAAAAAAAAAAAAAAAAA', 'a forged value is replaced')
  // the cookie's target is disabled: another takes the request, and the cookie follows it
  const first = await fetch(`${url}/x`)
  const served = (await echo(first)).upstream
  const cookie = stickyCookie(first)?.pair as string
  const pool = app.upstreams.get('pool')
  const target = ups.find((u) => u.name === served)?.url as string
  pool?.setState(target, 'disabled')
  const moved = await fetch(`${url}/x`, { headers: { cookie } })
  const movedTo = (await echo(moved)).upstream
  t.not(movedTo, served, 'a disabled target is not used')
  const next = stickyCookie(moved)?.pair as string
  t.ok(next !== undefined && next !== cookie, 'the cookie names the new target')
  for (let i = 0; i < 4; i++) t.equal((await echo(await fetch(`${url}/x`, { headers: { cookie: next } }))).upstream, movedTo)
  // back in rotation, it gets its old cookie's requests again
  pool?.setState(target, 'enabled')
  t.equal((await echo(await fetch(`${url}/x`, { headers: { cookie } }))).upstream, served)
  // removed: its cookie is stale
  await pool?.removeTarget(target)
  const stale = await fetch(`${url}/x`, { headers: { cookie } })
  t.not((await echo(stale)).upstream, served)
  t.ok(stickyCookie(stale) !== undefined, 'set anew')
})

test('the cookie attributes, reply.forward, and the target\'s own cookies kept beside it', async (t) => {
  const up = await startUpstream(t, 'u0', (_req, res) => {
    res.setHeader('set-cookie', ['session=abc; Path=/', 'theme=dark'])
    res.end('ok')
  })
  const { url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [up.url],
        sticky: { cookie: { name: 'gw', path: '/app', domain: 'example.test', maxAge: 3600, httpOnly: false, secure: true, sameSite: 'Strict' } }
      }
    }
  }, (app) => { app.get('/app/x', (_request, reply) => reply.forward('pool', { url: '/x' })) })
  const res = await fetch(`${url}/app/x`)
  t.equal(await res.text(), 'ok')
  t.same(res.headers.getSetCookie().sort(), [
    'gw=' + (stickyCookie(res, 'gw')?.value ?? '') + '; Path=/app; Domain=example.test; Max-Age=3600; Secure; SameSite=Strict',
    'session=abc; Path=/',
    'theme=dark'
  ].sort())
})

test('sticky options are checked at register, naming the field', async (t) => {
  t.match(await registerError({ upstreams: { a: { targets: [], sticky: { cookie: { name: 'x y' } } } } }), { message: /upstreams\.a\.sticky\.cookie\.name: must be a cookie name/ })
  t.match(await registerError({ upstreams: { a: { targets: [], sticky: { cookie: { name: 'r', sameSite: 'None' } } } } }), { message: /upstreams\.a\.sticky\.cookie\.secure: must be true with sameSite 'None'/ })
  t.match(await registerError({ upstreams: { a: { targets: [], sticky: { cookie: { name: 'r', path: 'app' } } } } }), { message: /sticky\.cookie\.path: must be a path/ })
  t.match(await registerError({ upstreams: { a: { targets: [], sticky: { cookie: { name: 'r', maxAge: -1 } } } } }), { message: /sticky\.cookie\.maxAge/ })
  t.match(await registerError({ upstreams: { a: { targets: [], sticky: {} } } }), { message: /sticky\.cookie: is required/ })
})
