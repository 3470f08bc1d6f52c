import replyFrom from '@fastify/reply-from'
import Fastify, { type FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import fastifyUpstream from '../../lib/index'
import { echo, listen, startUpstream, type Upstream } from '../helpers'

// The plugin beside an application's own @fastify/reply-from, in every order and scope:
// both work, each with its own targets. A second fastify-upstream fails at ready() with
// an error of the plugin's own that says what to do.

/** Checks that reply.forward reaches `pooled` and the app's own reply.from reaches `own`. */
async function bothWork (t: Test, url: string, own: Upstream, pooled: Upstream, ownPath = '/own/x'): Promise<void> {
  const forwarded = await echo(fetch(`${url}/pooled/x`))
  t.equal(forwarded.upstream, pooled.name, 'reply.forward goes to the pool')
  const fromOwn = await echo(fetch(url + ownPath))
  t.equal(fromOwn.upstream, own.name, "the app's reply.from goes to its own base")
}

type Orders = Array<[string, (app: FastifyInstance, own: Upstream, pooled: Upstream) => Promise<string>]>

const ORDERS: Orders = [
  ['reply-from first, same scope', async (app, own, pooled) => {
    await app.register(replyFrom, { base: own.url })
    await app.register(fastifyUpstream, { upstreams: { p: { targets: [pooled.url] } } })
    app.get('/own/*', (_request, reply) => reply.from('/own/x'))
    app.get('/pooled/*', (_request, reply) => reply.forward('p'))
    return '/own/x'
  }],
  ['reply-from after, same scope', async (app, own, pooled) => {
    await app.register(fastifyUpstream, { upstreams: { p: { targets: [pooled.url] } } })
    await app.register(replyFrom, { base: own.url })
    app.get('/own/*', (_request, reply) => reply.from('/own/x'))
    app.get('/pooled/*', (_request, reply) => reply.forward('p'))
    return '/own/x'
  }],
  ['reply-from in a child scope', async (app, own, pooled) => {
    await app.register(fastifyUpstream, { upstreams: { p: { targets: [pooled.url] } } })
    await app.register(async (child) => {
      await child.register(replyFrom, { base: own.url })
      child.get('/own/*', (_request, reply) => reply.from('/own/x'))
      // the plugin's reply.forward still works where reply.from is someone else's
      child.get('/pooled/*', (_request, reply) => reply.forward('p'))
    })
    return '/own/x'
  }],
  ['fastify-upstream in a child scope, reply-from at the root', async (app, own, pooled) => {
    await app.register(replyFrom, { base: own.url })
    app.get('/own/*', (_request, reply) => reply.from('/own/x'))
    await app.register(async (child) => {
      await child.register(fastifyUpstream, { upstreams: { p: { targets: [pooled.url] } } })
      child.get('/pooled/*', (_request, reply) => reply.forward('p'))
    })
    return '/own/x'
  }]
]

for (const [name, setUp] of ORDERS) {
  test(`beside @fastify/reply-from: ${name}`, async (t) => {
    const own = await startUpstream(t, 'own')
    const pooled = await startUpstream(t, 'pooled')
    const app = Fastify()
    const ownPath = await setUp(app, own, pooled)
    await bothWork(t, await listen(t, app), own, pooled, ownPath)
  })
}

test('fastify-upstream registered twice fails at ready() with FST_UPSTREAM_ALREADY_REGISTERED, in the same scope or below', async (t) => {
  const same = Fastify()
  await same.register(fastifyUpstream, { upstreams: {} })
  await t.rejects(async () => { await same.register(fastifyUpstream, { upstreams: {} }) }, { code: 'FST_UPSTREAM_ALREADY_REGISTERED', message: /app\.upstreams\.add/ })
  await same.close()
  const below = Fastify()
  await below.register(fastifyUpstream, { upstreams: {} })
  below.register(async (child) => { await child.register(fastifyUpstream, { upstreams: { other: { targets: [] } } }) })
  await t.rejects(async () => { await below.ready() }, { code: 'FST_UPSTREAM_ALREADY_REGISTERED' })
  await below.close()
  // siblings are separate applications of the plugin: each scope has its own
  const siblings = Fastify()
  const a = await startUpstream(t, 'a')
  const b = await startUpstream(t, 'b')
  siblings.register(async (child) => {
    await child.register(fastifyUpstream, { upstreams: { p: { targets: [a.url] } } })
    child.get('/a', (_request, reply) => reply.forward('p'))
  })
  siblings.register(async (child) => {
    await child.register(fastifyUpstream, { upstreams: { p: { targets: [b.url] } } })
    child.get('/b', (_request, reply) => reply.forward('p'))
  })
  const url = await listen(t, siblings)
  t.equal((await echo(fetch(`${url}/a`))).upstream, 'a')
  t.equal((await echo(fetch(`${url}/b`))).upstream, 'b')
})
