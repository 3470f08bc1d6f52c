import { test } from 'tap'
import { echo, rawRequest, startGateway, startUpstream } from '../helpers'

test('a mount rewrites its prefix, keeps the query string and passes params', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, {
    upstreams: { users: { targets: [up.url] } },
    routes: [
      { prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users' },
      { prefix: '/orgs/:org/members', upstream: 'users', rewritePrefix: '/v2/organisations/:org/people' },
      { prefix: '/plain/', upstream: 'users' }
    ]
  })
  const get = async (path: string): Promise<string> => (await echo(fetch(url + path))).url
  t.equal(await get('/users'), '/v1/users')
  t.equal(await get('/users/'), '/v1/users/')
  t.equal(await get('/users/42?expand=1&x=%20y'), '/v1/users/42?expand=1&x=%20y')
  t.equal(await get('/users/a%20b/c'), '/v1/users/a%20b/c')
  t.equal(await get('/orgs/acme/members/7'), '/v2/organisations/acme/people/7')
  t.equal(await get('/orgs/acme/members'), '/v2/organisations/acme/people')
  t.equal(await get('/plain/a/b'), '/a/b', 'no rewritePrefix strips the prefix')
  t.equal(await get('/plain'), '/')
})

test('bodies of any content type pass through unchanged', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, {
    upstreams: { users: { targets: [up.url] } },
    routes: [{ prefix: '/api', upstream: 'users' }]
  })
  const bodies: Array<[string, string]> = [
    ['application/json', '{"a": 1,   "spaced": true}'],
    ['text/plain', 'hello'],
    ['application/x-www-form-urlencoded', 'a=1&b=2'],
    ['application/octet-stream', 'x'.repeat(300_000)],
    ['application/vnd.custom+xml', '<a/>']
  ]
  for (const [type, body] of bodies) {
    const res = await fetch(`${url}/api/echo`, { method: 'PUT', headers: { 'content-type': type }, body })
    const echoed = await echo(res)
    t.equal(echoed.body, body, `${type} body is byte-for-byte the same`)
    t.equal(up.last?.headers['content-type'], type)
  }
})

test('Location headers from the upstream come back under the prefix', async (t) => {
  let location = ''
  const up = await startUpstream(t, 'u0', (_req, res) => {
    res.statusCode = 302
    res.setHeader('location', location)
    res.end()
  })
  const { url } = await startGateway(t, {
    upstreams: { users: { targets: [up.url] } },
    routes: [
      { prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users' },
      { prefix: '/t/:tenant', upstream: 'users', rewritePrefix: '/tenants/:tenant' }
    ]
  })
  const cases: Array<[string, string, string]> = [
    ['/users/1', '/v1/users/2', '/users/2'],
    ['/users/1', '/v1/users', '/users'],
    ['/users/1', '/v1/users?x=1', '/users?x=1'],
    ['/users/1', `${up.url}/v1/users/3`, '/users/3'],
    ['/users/1', '/v1/usersettings', '/v1/usersettings'],
    ['/users/1', '/elsewhere', '/elsewhere'],
    ['/users/1', 'https://example.org/v1/users/1', 'https://example.org/v1/users/1'],
    ['/t/acme/x', '/tenants/acme/y', '/t/acme/y']
  ]
  for (const [path, sent, expected] of cases) {
    location = sent
    const res = await fetch(url + path, { redirect: 'manual' })
    t.equal(res.headers.get('location'), expected, `${sent} -> ${expected}`)
  }
})

test('paths that climb out of the prefix are refused with 400 before any upstream sees them', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, {
    upstreams: { users: { targets: [up.url] } },
    routes: [{ prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users' }]
  })
  const hostile = [
    '/users/../admin', '/users/..', '/users/./x', '/users/%2e%2e/admin', '/users/%2E%2e/admin', '/users/.%2e/admin',
    '/users/..%2fadmin', '/users/a%2f..%2f..%2fadmin', '/users/%5c..%5cadmin', '/users/..\\admin', '/users/%zz'
  ]
  for (const path of hostile) {
    const status = await rawRequest(url, path)
    t.match(status, /^HTTP\/1\.1 4\d\d/, `${path} -> ${status}`)
  }
  t.equal(up.hits, 0, 'no hostile request reached the upstream')
  // a prefix param is a segment of the request too
  const params = await startGateway(t, {
    upstreams: { users: { targets: [up.url] } },
    routes: [{ prefix: '/orgs/:org', upstream: 'users', rewritePrefix: '/v2/orgs/:org' }]
  })
  for (const path of ['/orgs/%2e%2e/x', '/orgs/%2E./x', '/orgs/..', '/orgs/.%2e']) {
    t.match(await rawRequest(params.url, path), /^HTTP\/1\.1 4\d\d/, `${path} is refused`)
  }
  t.equal(up.hits, 0, 'no climbing through a param either')
  t.equal((await fetch(`${url}/users/fine...name`)).status, 200, 'dots inside a segment are fine')
  t.equal(up.hits, 1)
})

test('route options: methods allow-list, hooks and schema validation run before proxying', async (t) => {
  const up = await startUpstream(t, 'u0')
  const seen: string[] = []
  const { url } = await startGateway(t, {
    upstreams: { users: { targets: [up.url] } },
    routes: [
      {
        prefix: '/ro',
        upstream: 'users',
        methods: ['GET'],
        onRequest: async (request: { url: string }) => { seen.push(request.url) },
        preHandler: async (request: { headers: Record<string, unknown> }, reply: { code: (n: number) => { send: (b: unknown) => void } }) => {
          if (request.headers['x-deny'] !== undefined) reply.code(403).send({ denied: true })
        }
      },
      {
        prefix: '/validated',
        upstream: 'users',
        methods: ['POST'],
        schema: { body: { type: 'object', required: ['name'], properties: { name: { type: 'string' } } } }
      }
    ]
  })
  t.equal((await fetch(`${url}/ro/x`)).status, 200)
  t.equal((await fetch(`${url}/ro/x`, { method: 'DELETE' })).status, 404, 'a method outside the list is not routed')
  t.equal((await fetch(`${url}/ro/x`, { headers: { 'x-deny': '1' } })).status, 403)
  t.same(seen, ['/ro/x', '/ro/x'])
  const bad = await fetch(`${url}/validated`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"nom":1}' })
  t.equal(bad.status, 400)
  const good = await fetch(`${url}/validated`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name":"ada"}' })
  t.equal(good.status, 200)
  t.same(JSON.parse((await echo(good)).body), { name: 'ada' })
  t.equal(up.hits, 2, 'the denied and the invalid requests never reached the upstream')
})

test('a target URL with a path and a rewritePrefix of the same path send the same paths', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, {
    upstreams: { based: { targets: [`${up.url}/base`] }, plain: { targets: [up.url] } },
    routes: [
      { prefix: '/a', upstream: 'based' },
      { prefix: '/b', upstream: 'plain', rewritePrefix: '/base' }
    ]
  })
  for (const [rest, expected] of [['', '/base'], ['/', '/base/'], ['/x', '/base/x'], ['?q=1', '/base?q=1'], ['/?q=1', '/base/?q=1']]) {
    t.equal((await echo(fetch(`${url}/a${rest}`))).url, expected, `target path: /a${rest} -> ${expected}`)
    t.equal((await echo(fetch(`${url}/b${rest}`))).url, expected, `rewritePrefix: /b${rest} -> ${expected}`)
  }
})
