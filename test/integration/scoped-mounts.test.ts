import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { test } from 'tap'
import fastifyUpstream, { type FastifyUpstreamOptions } from '../../lib/index'
import { echo, listen, rawRequest, startUpstream, type Teardown } from '../helpers'

// A mount behaves the same at any depth of Fastify encapsulation: the path a route sees is
// relative to its own scope's prefix. Each behaviour of a mount is checked with the plugin
// registered at the root, inside a prefixed scope, and inside two nested prefixed scopes.

const SCOPES: string[][] = [[], ['/api'], ['/api', '/v2']]

/** A gateway with the plugin registered inside `scopes` (each a prefixed child of the last); `t` closes it. */
async function gatewayIn (t: Teardown, scopes: string[], options: FastifyUpstreamOptions, server: FastifyServerOptions = {}): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify(server)
  const register = async (instance: FastifyInstance, depth: number): Promise<void> => {
    if (depth === scopes.length) {
      await instance.register(fastifyUpstream, options)
      return
    }
    await instance.register(async (child) => { await register(child, depth + 1) }, { prefix: scopes[depth] })
  }
  await register(app, 0)
  return { app, url: await listen(t, app) }
}

for (const scopes of SCOPES) {
  const base = scopes.join('')
  const where = scopes.length === 0 ? 'at the root' : `inside ${scopes.map((s) => `'${s}'`).join(' then ')}`

  test(`${where}: prefixes rewrite, params take their own segment, the query is kept`, async (t) => {
    const up = await startUpstream(t, 'u0')
    const { url } = await gatewayIn(t, scopes, {
      upstreams: { users: { targets: [up.url] } },
      routes: [
        { prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users' },
        { prefix: '/orgs/:org', upstream: 'users', rewritePrefix: '/v2/o/:org' },
        { prefix: '/plain/', upstream: 'users' }
      ]
    })
    const get = async (path: string): Promise<string> => (await echo(fetch(url + base + path))).url
    t.equal(await get('/users/42'), '/v1/users/42')
    t.equal(await get('/users'), '/v1/users')
    t.equal(await get('/users/'), '/v1/users/')
    t.equal(await get('/users/42?expand=1&x=%20y'), '/v1/users/42?expand=1&x=%20y')
    t.equal(await get('/orgs/acme/repos'), '/v2/o/acme/repos', 'the param is the segment after /orgs')
    t.equal(await get('/orgs/acme'), '/v2/o/acme')
    t.equal(await get('/plain/a/b'), '/a/b')
    t.equal(await get('/plain'), '/')
    t.equal((await fetch(`${url}/users/42`)).status, scopes.length === 0 ? 200 : 404, 'nothing is mounted outside the scope')
  })

  test(`${where}: Location headers come back under the scope and the prefix`, async (t) => {
    let location = ''
    const up = await startUpstream(t, 'u0', (_req, res) => {
      res.statusCode = 302
      res.setHeader('location', location)
      res.end()
    })
    const { url } = await gatewayIn(t, scopes, {
      upstreams: { users: { targets: [up.url] } },
      routes: [
        { prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users' },
        { prefix: '/t/:tenant', upstream: 'users', rewritePrefix: '/tenants/:tenant' }
      ]
    })
    const cases: Array<[string, string, string]> = [
      ['/users/1', '/v1/users/x', `${base}/users/x`],
      ['/users/1', `${up.url}/v1/users/3`, `${base}/users/3`],
      ['/users/1', '/elsewhere', '/elsewhere'],
      ['/t/acme/x', '/tenants/acme/y', `${base}/t/acme/y`]
    ]
    for (const [path, sent, expected] of cases) {
      location = sent
      const res = await fetch(url + base + path, { redirect: 'manual' })
      t.equal(res.headers.get('location'), expected, `${sent} -> ${expected}`)
    }
  })

  test(`${where}: climbing out is refused, through the prefix and through a param`, async (t) => {
    const up = await startUpstream(t, 'u0')
    const { url } = await gatewayIn(t, scopes, {
      upstreams: { users: { targets: [up.url] } },
      routes: [{ prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users' }, { prefix: '/orgs/:org', upstream: 'users', rewritePrefix: '/v2/o/:org' }]
    })
    for (const path of ['/users/../admin', '/users/%2e%2e/admin', '/users/..%2fadmin', '/orgs/%2e%2e/x', '/orgs/..', '/users#/../x']) {
      t.match(await rawRequest(url, base + path), /^HTTP\/1\.1 4\d\d/, `${base}${path} is refused`)
    }
    t.equal(up.hits, 0)
  })

  test(`${where}: a root mount serves the scope itself`, async (t) => {
    const up = await startUpstream(t, 'u0')
    const { url } = await gatewayIn(t, scopes, {
      upstreams: { users: { targets: [up.url] } },
      routes: [{ prefix: '/', upstream: 'users', rewritePrefix: '/backend' }]
    })
    const get = async (path: string): Promise<string> => (await echo(fetch(url + path))).url
    t.equal(await get(base + '/a/b?q=1'), '/backend/a/b?q=1')
    // the scope itself, without and with its final slash (at the root there is only `/`)
    if (base !== '') t.equal(await get(base), '/backend')
    t.equal(await get(base + '/'), '/backend/')
  })

  test(`${where}: ignoreTrailingSlash and ignoreDuplicateSlashes`, async (t) => {
    const up = await startUpstream(t, 'u0')
    const { url } = await gatewayIn(t, scopes, {
      upstreams: { users: { targets: [up.url] } },
      routes: [{ prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users' }, { prefix: '/orgs/:org', upstream: 'users', rewritePrefix: '/v2/o/:org' }]
    }, { routerOptions: { ignoreTrailingSlash: true, ignoreDuplicateSlashes: true } })
    const get = async (path: string): Promise<string> => (await echo(fetch(url + path))).url
    t.equal(await get(base + '/users/'), '/v1/users')
    t.equal(await get(base + '/users/a/'), '/v1/users/a')
    t.equal(await get(base + '//orgs//acme//x'), '/v2/o/acme/x')
  })
}

test('a scope prefix with a param: rewritePrefix may use it', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await gatewayIn(t, ['/t/:tenant'], {
    upstreams: { users: { targets: [up.url] } },
    routes: [{ prefix: '/users', upstream: 'users', rewritePrefix: '/tenants/:tenant/users' }]
  })
  t.equal((await echo(fetch(`${url}/t/acme/users/7`))).url, '/tenants/acme/users/7')
})
