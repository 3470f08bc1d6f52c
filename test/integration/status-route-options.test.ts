import type { FastifyReply, FastifyRequest } from 'fastify'
import { test } from 'tap'
import { registerError, startGateway, startUpstream } from '../helpers'

// the route config an application declares for its own routes (as Fastify's types ask)
declare module 'fastify' {
  interface FastifyContextConfig { role?: string }
}

async function auth (request: FastifyRequest, reply: FastifyReply): Promise<void> {
  if (request.headers.authorization !== 'Bearer ops') await reply.code(401).send({ error: 'unauthorized' })
}

test('a misspelt statusRoute hook fails at register, naming the field and the hook meant', async (t) => {
  const up = await startUpstream(t, 'u0')
  const error = await registerError({ upstreams: { api: { targets: [up.url] } }, statusRoute: { url: '/_up', onRequst: auth } })
  t.equal(error.code, 'FST_UPSTREAM_INVALID_OPTION')
  t.match(error.message, 'statusRoute.onRequst: unknown option, did you mean `onRequest`?')
})

test('statusRoute options are checked like the others', async (t) => {
  const cases: Array<[string, unknown, string]> = [
    ['hook not a function', { url: '/_up', onRequest: 'auth' }, 'statusRoute.onRequest: must be a function or an array of functions'],
    ['hook list with a non-function', { url: '/_up', preHandler: [auth, null] }, 'statusRoute.preHandler[1]: must be a function'],
    ['schema is the plugin\'s', { url: '/_up', schema: {} }, 'statusRoute.schema: unknown option'],
    ['handler is the plugin\'s', { url: '/_up', handler: () => 'x' }, 'statusRoute.handler: unknown option'],
    ['url missing', { onRequest: auth }, 'statusRoute.url: is required'],
    ['url not a path', { url: '_up' }, "statusRoute.url: must be a path starting with '/'"],
    ['url not a string', { url: 42 }, "statusRoute.url: must be a path starting with '/'"],
    ['a string without a slash', '_up', "statusRoute: must be a path starting with '/'"],
    ['config not an object', { url: '/_up', config: 'ops' }, 'statusRoute.config: must be an object'],
    ['exposeHeadRoute not a boolean', { url: '/_up', exposeHeadRoute: 'no' }, 'statusRoute.exposeHeadRoute: must be a boolean']
  ]
  for (const [name, statusRoute, message] of cases) {
    const error = await registerError({ statusRoute })
    t.equal(error.code, 'FST_UPSTREAM_INVALID_OPTION', name)
    t.ok(error.message.includes(message), `${name}: "${error.message}" includes "${message}"`)
  }
})

test('onRequest guards both the status and the metrics route', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await startGateway(t, {
    upstreams: { api: { targets: [up.url] } },
    statusRoute: { url: '/_up', onRequest: auth }
  })
  const token = { authorization: 'Bearer ops' }
  for (const path of ['/_up', '/_up/metrics']) {
    t.equal((await fetch(`${url}${path}`)).status, 401, `${path} without a token`)
    t.equal((await fetch(`${url}${path}`, { headers: { authorization: 'Bearer guess' } })).status, 401, `${path} with a wrong token`)
    const res = await fetch(`${url}${path}`, { headers: token })
    t.equal(res.status, 200, `${path} with the token`)
    await res.arrayBuffer()
  }
})

test('hook lists, config and logLevel reach both routes', async (t) => {
  const up = await startUpstream(t, 'u0')
  const seen: string[] = []
  const { url } = await startGateway(t, {
    upstreams: { api: { targets: [up.url] } },
    statusRoute: {
      url: '/_up',
      config: { role: 'ops' },
      logLevel: 'silent',
      preHandler: [
        async (request) => { seen.push(`${request.url} ${String((request.routeOptions.config as { role?: string }).role)}`) },
        async (request, reply) => { if (request.headers['x-role'] !== 'ops') await reply.code(403).send() }
      ]
    }
  })
  t.equal((await fetch(`${url}/_up`)).status, 403)
  t.equal((await fetch(`${url}/_up/metrics`)).status, 403)
  const res = await fetch(`${url}/_up/metrics`, { headers: { 'x-role': 'ops' } })
  t.equal(res.status, 200)
  t.match(await res.text(), /fastify_upstream_requests_total/)
  t.same(seen, ['/_up ops', '/_up/metrics ops', '/_up/metrics ops'])
})
