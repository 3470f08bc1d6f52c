import Fastify, { type FastifyInstance, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import { test } from 'tap'
import fastifyUpstream, { type RouteOptions } from '../../lib/index'
import { listen, rawExchange, type Teardown } from '../helpers'

// The path a mount sends upstream is the path Fastify's router matched, under every router
// option: what a route's hooks check is what the target gets. Each request carries its
// case number in `x-case`; the mounts' onRequest hooks record what the router gave them,
// and a Fastify upstream records what it received (parsing the query the same way).

interface Routed { mount: string, params: Record<string, string>, query: unknown }
interface Received { url: string, query: unknown }

async function upstreamApp (t: Teardown): Promise<{ app: FastifyInstance, url: string, seen: Map<string, Received> }> {
  const seen = new Map<string, Received>()
  const app = Fastify()
  app.all('/*', async (request) => {
    seen.set(String(request.headers['x-case']), { url: request.raw.url as string, query: request.query })
    return { url: request.raw.url }
  })
  return { app, url: await listen(t, app), seen }
}

const REWRITES: Record<string, string> = { public: '/v1', admin: '/v1/admin', orgs: '/tenants/:org', root: '' }

function mounts (routed: Map<string, Routed>, extra: Partial<RouteOptions> = {}): RouteOptions[] {
  const record = (mount: string) => async (request: FastifyRequest) => {
    routed.set(String(request.headers['x-case']), { mount, params: { ...request.params as Record<string, string> }, query: request.query })
  }
  const requireToken = async (request: FastifyRequest, reply: { code: (n: number) => { send: (b: unknown) => void } }) => {
    if (request.headers.authorization !== 'token') reply.code(401).send({ denied: true })
  }
  return [
    { prefix: '/api', upstream: 'b', rewritePrefix: REWRITES.public, onRequest: record('public'), ...extra },
    { prefix: '/api/admin', upstream: 'b', rewritePrefix: REWRITES.admin, onRequest: [record('admin'), requireToken], ...extra },
    { prefix: '/orgs/:org', upstream: 'b', rewritePrefix: REWRITES.orgs, onRequest: record('orgs'), ...extra },
    { prefix: '/', upstream: 'b', rewritePrefix: REWRITES.root, onRequest: record('root'), ...extra }
  ]
}

async function gateway (t: Teardown, serverOptions: FastifyServerOptions, target: string, routed: Map<string, Routed>, extra?: Partial<RouteOptions>): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify(serverOptions)
  await app.register(fastifyUpstream, { upstreams: { b: { targets: [target], retry: { attempts: 0 } } }, routes: mounts(routed, extra) })
  return { app, url: await listen(t, app) }
}

/** What the router matched, as a decoded upstream path: the mount's rewritePrefix with the router's params, then its `*`. */
function expectedPath (routed: Routed): string {
  const base = REWRITES[routed.mount].replace(/:([a-z]+)/g, (_m, name: string) => routed.params[name])
  const wildcard = routed.params['*']
  return (base + (wildcard === undefined ? '' : '/' + wildcard)) || '/'
}

const HEADS = ['/api', '/api/admin', '/API/admin', '/api//admin', '//api/admin', '/api/admin/', '/orgs/acme', '//orgs/mine', '/orgs/%61cme', '/orgs/ac%20me', '']
const TAILS = [
  '/secret', '', '/', '//x', '/a;b/c', ';x=1/secret', '#/admin/secret', '#frag', '/x?q=1', '/x?q=1#f', ';jsessionid=1?x=2',
  '/%41', '/a%3Fb', '/a%25b', '/a/b/', '?a=%20&b=c', '/x%23y', '/%2e%2e/x', '/admin;/secret', '//127.0.0.1:1/x'
]
const CORPUS = [...new Set(HEADS.flatMap((head) => TAILS.map((tail) => head + tail)).filter((path) => path.startsWith('/')))]

const ROUTERS: Array<[string, FastifyServerOptions]> = [
  ['default', {}],
  ['ignoreDuplicateSlashes', { routerOptions: { ignoreDuplicateSlashes: true } }],
  ['ignoreTrailingSlash', { routerOptions: { ignoreTrailingSlash: true } }],
  ['caseSensitive: false', { routerOptions: { caseSensitive: false } } as FastifyServerOptions],
  ['useSemicolonDelimiter', { routerOptions: { useSemicolonDelimiter: true } } as FastifyServerOptions],
  ['all four', { routerOptions: { ignoreDuplicateSlashes: true, ignoreTrailingSlash: true, caseSensitive: false, useSemicolonDelimiter: true } } as FastifyServerOptions]
]

test('differential: under every router option the target gets exactly the path and query the router matched', async (t) => {
  const up = await upstreamApp(t)
  for (const [name, options] of ROUTERS) {
    const routed = new Map<string, Routed>()
    const { app, url } = await gateway(t, options, up.url, routed)
    up.seen.clear()
    let proxied = 0
    let refused = 0
    for (const [i, path] of CORPUS.entries()) {
      const key = `${name}:${i}`
      const { status } = await rawExchange(url, path, { 'x-case': key })
      const received = up.seen.get(key)
      const seenBy = routed.get(key)
      if (received === undefined) {
        t.not(status, 200, `${name} ${path}: ${status} without reaching the target`)
        if (status === 400) refused++
        continue
      }
      proxied++
      t.equal(status, 200, `${name} ${path} was proxied`)
      if (seenBy === undefined) {
        t.fail(`${name} ${path} reached the target without passing a mount's hooks`)
        continue
      }
      t.not(seenBy.mount, 'admin', `${name} ${path}: the admin mount let an unauthenticated request through`)
      const sentPath = received.url.split('?')[0]
      t.equal(decodeURIComponent(sentPath), expectedPath(seenBy), `${name} ${path}: ${seenBy.mount} sent ${received.url}`)
      t.same(received.query, seenBy.query, `${name} ${path}: the target parses the query the hooks saw`)
      t.notOk(sentPath.startsWith('//'), `${name} ${path}: no network-path reference upstream`)
    }
    t.ok(proxied > CORPUS.length / 3, `${name}: ${proxied} of ${CORPUS.length} proxied, ${refused} refused with 400`)
    // and what is plainly fine is never refused
    for (const path of ['/', '/x', '/api', '/api/', '/api/x?q=1', '/orgs/acme', '/orgs/acme/x/', '/a%20b/c']) {
      t.equal((await rawExchange(url, path)).status, 200, `${name}: ${path} is proxied`)
    }
    await app.close()
  }
})

test('a fragment cannot carry a path past a more specific mount (the #-bypass)', async (t) => {
  const up = await upstreamApp(t)
  for (const [name, options] of ROUTERS) {
    const routed = new Map<string, Routed>()
    const { app, url } = await gateway(t, options, up.url, routed)
    t.equal((await rawExchange(url, '/api/admin/secret', { 'x-case': `${name}:none` })).status, 401, `${name}: the admin mount refuses without a token`)
    t.equal((await rawExchange(url, '/api/admin/secret', { authorization: 'token', 'x-case': `${name}:token` })).status, 200, `${name}: and serves with one`)
    for (const path of ['/api#/admin/secret', '/api/#/admin/secret', '/api?x#/admin/secret', '/#/api/admin/secret']) {
      t.equal((await rawExchange(url, path, { 'x-case': `${name}:${path}` })).status, 400, `${name}: ${path} is refused`)
    }
    await app.close()
  }
  t.notOk([...up.seen.values()].some((r) => r.url.startsWith('/v1/admin') && r.url !== '/v1/admin/secret'), 'only the authorised request reached /v1/admin')
  t.equal([...up.seen.values()].filter((r) => r.url === '/v1/admin/secret').length, ROUTERS.length, 'once per router configuration')
})

test('useSemicolonDelimiter: what follows `;` is the query, for hooks and target alike', async (t) => {
  const up = await upstreamApp(t)
  const routed = new Map<string, Routed>()
  const { url } = await gateway(t, { routerOptions: { useSemicolonDelimiter: true } } as FastifyServerOptions, up.url, routed)
  const res = await rawExchange(url, '/api;/admin/secret', { 'x-case': 'semi' })
  t.equal(res.status, 200)
  t.equal(routed.get('semi')?.mount, 'public', 'the router matched /api')
  t.equal(up.seen.get('semi')?.url, '/v1?/admin/secret', 'the target gets /v1 and the rest as the query, not /v1/admin/secret')
})

test('params come from the path the router matched (ignoreDuplicateSlashes)', async (t) => {
  const up = await upstreamApp(t)
  const routed = new Map<string, Routed>()
  const { url } = await gateway(t, { routerOptions: { ignoreDuplicateSlashes: true } }, up.url, routed)
  const res = await rawExchange(url, '//orgs/mine/x', { 'x-case': 'dup' })
  t.equal(res.status, 200)
  t.same(routed.get('dup')?.params, { org: 'mine', '*': 'x' }, 'the hook saw org = mine')
  t.equal(up.seen.get('dup')?.url, '/tenants/mine/x', 'and the target got the same org')
  // the older top-level router options are read too
  const legacy = Fastify({ ignoreDuplicateSlashes: true, logger: false } as FastifyServerOptions)
  await legacy.register(fastifyUpstream, { upstreams: { b: { targets: [up.url] } }, routes: [{ prefix: '/orgs/:org', upstream: 'b', rewritePrefix: '/tenants/:org' }] })
  const legacyUrl = await listen(t, legacy)
  await rawExchange(legacyUrl, '//orgs/mine//y', { 'x-case': 'legacy' })
  t.equal(up.seen.get('legacy')?.url, '/tenants/mine/y')
})

test('a root mount never sends a network-path reference (//host:port/x)', async (t) => {
  const up = await upstreamApp(t)
  const routed = new Map<string, Routed>()
  const { url } = await gateway(t, {}, up.url, routed)
  for (const path of ['//127.0.0.1:1/x', '//evil.test/x', '///x']) {
    t.equal((await rawExchange(url, path, { 'x-case': path })).status, 400, `${path} is refused`)
    t.notOk(up.seen.has(path), `${path} never reached the target`)
  }
  t.equal((await rawExchange(url, '/x//y', { 'x-case': 'inner' })).status, 200, 'an empty segment further on is passed as it came')
  t.equal(up.seen.get('inner')?.url, '/x//y')
})

test('strictPaths: nothing a normalising target would read as a more specific mount', async (t) => {
  // a target that merges slashes, drops `;parameters` and ignores case, as many servers do
  const normalise = (url: string): string => url.split('?')[0].toLowerCase().replace(/;[^/]*/g, '').replace(/\/{2,}/g, '/')
  const tricks = ['/api//admin/secret', '/api/admin;x=1/secret', '/api/ADMIN/secret', '/api/Admin/secret', '/api/;/admin/secret', '/api/admin;/secret']
  const reachedAdmin = async (options: FastifyServerOptions, extra: Partial<RouteOptions>): Promise<string[]> => {
    const up = await upstreamApp(t)
    const routed = new Map<string, Routed>()
    const { app, url } = await gateway(t, options, up.url, routed, extra)
    for (const path of tricks) await rawExchange(url, path, { 'x-case': path })
    await app.close()
    await up.app.close()
    return tricks.filter((path) => normalise(up.seen.get(path)?.url ?? '').startsWith('/v1/admin'))
  }
  const loose = await reachedAdmin({}, {})
  t.ok(loose.length >= 3, `without strictPaths a normalising target serves the admin path to ${loose.join(', ')}`)
  t.same(await reachedAdmin({ routerOptions: { caseSensitive: false } } as FastifyServerOptions, { strictPaths: true }), [],
    'strictPaths with a case-insensitive router: none gets past the admin hook')
  t.same(await reachedAdmin({ routerOptions: { caseSensitive: false, ignoreDuplicateSlashes: true } } as FastifyServerOptions, { strictPaths: true }), [],
    'and with the router merging slashes')
})

test('reply.forward without a url sends the path the router matched too', async (t) => {
  const up = await upstreamApp(t)
  const app = Fastify({ routerOptions: { useSemicolonDelimiter: true, ignoreDuplicateSlashes: true } } as FastifyServerOptions)
  await app.register(fastifyUpstream, { upstreams: { b: { targets: [up.url] } } })
  app.get('/p/*', (_request, reply) => reply.forward('b'))
  const url = await listen(t, app)
  t.equal((await rawExchange(url, '/p//a;x=1', { 'x-case': 'semi' })).status, 200)
  t.equal(up.seen.get('semi')?.url, '/p/a?x=1', 'slashes merged, the `;` query sent as a query')
  t.equal((await rawExchange(url, '/p/a?y=2', { 'x-case': 'query' })).status, 200)
  t.equal(up.seen.get('query')?.url, '/p/a?y=2')
  t.equal((await rawExchange(url, '/p/x#/../admin', { 'x-case': 'fragment' })).status, 400, 'a fragment is refused')
  t.notOk(up.seen.has('fragment'))
})
