import { test } from 'tap'
import Fastify from 'fastify'
import fastifyUpstream from '../../lib/index'
import { registerError } from '../helpers'
import { internalPool } from '../../lib/upstream/pool'

const cases: Array<[string, unknown, string]> = [
  ['target URL not http(s)', { upstreams: { users: { targets: ['http://127.0.0.1:1', 'ftp://x'] } } }, 'upstreams.users.targets[1]: must be an http(s) URL'],
  ['target URL not a URL', { upstreams: { users: { targets: ['nope'] } } }, 'upstreams.users.targets[0]: must be an http(s) URL'],
  ['target URL with credentials', { upstreams: { users: { targets: ['http://a:b@127.0.0.1:1'] } } }, 'upstreams.users.targets[0]: must be an http(s) URL'],
  ['object target URL', { upstreams: { users: { targets: [{ url: 'x' }] } } }, 'upstreams.users.targets[0].url: must be an http(s) URL'],
  ['target without url', { upstreams: { users: { targets: [{ weight: 2 }] } } }, 'upstreams.users.targets[0].url: is required'],
  ['weight zero', { upstreams: { users: { targets: [{ url: 'http://127.0.0.1:1', weight: 0 }] } } }, 'upstreams.users.targets[0].weight: must be an integer from 1 to 1000'],
  ['weight fraction', { upstreams: { users: { targets: [{ url: 'http://127.0.0.1:1', weight: 1.5 }] } } }, 'upstreams.users.targets[0].weight: must be an integer'],
  ['backup not boolean', { upstreams: { users: { targets: [{ url: 'http://127.0.0.1:1', backup: 'yes' }] } } }, 'upstreams.users.targets[0].backup: must be a boolean'],
  ['unknown target field', { upstreams: { users: { targets: [{ url: 'http://127.0.0.1:1', wieght: 2 }] } } }, 'upstreams.users.targets[0].wieght: unknown option, did you mean `weight`?'],
  ['target of wrong type', { upstreams: { users: { targets: [42] } } }, 'upstreams.users.targets[0]: must be an http(s) URL string or an object'],
  ['duplicate target', { upstreams: { users: { targets: ['http://127.0.0.1:1', 'http://127.0.0.1:1/'] } } }, 'upstreams.users.targets[1].url: duplicate target'],
  ['targets missing', { upstreams: { users: {} } }, 'upstreams.users.targets: is required (unless discovery is given)'],
  ['targets missing, discovery of wrong shape', { upstreams: { users: { discovery: { type: 'dns' } } } }, 'upstreams.users.discovery.hostname: is required'],
  ['targets not an array', { upstreams: { users: { targets: 'http://127.0.0.1:1' } } }, 'upstreams.users.targets: must be an array of targets'],
  ['unknown pool option', { upstreams: { users: { targets: [], balancr: 'random' } } }, 'upstreams.users.balancr: unknown option, did you mean `balancer`?'],
  ['unknown balancer', { upstreams: { users: { targets: [], balancer: 'fastest' } } }, 'upstreams.users.balancer: must be one of'],
  ['unknown balancer type', { upstreams: { users: { targets: [], balancer: { type: 'fastest' } } } }, 'upstreams.users.balancer: must be a balancer name'],
  ['balancer option of wrong type', { upstreams: { users: { targets: [], balancer: { type: 'least-request', choices: 1 } } } }, 'upstreams.users.balancer.choices: must be an integer from 2 to 8'],
  ['least-request slowRatio below 1', { upstreams: { users: { targets: [], balancer: { type: 'least-request', slowRatio: 0.5 } } } }, 'upstreams.users.balancer.slowRatio: must be 0 (off) or a number >= 1'],
  ['unknown balancer option', { upstreams: { users: { targets: [], balancer: { type: 'random', key: 'ip' } } } }, 'upstreams.users.balancer.key: unknown option'],
  ['bad hash key', { upstreams: { users: { targets: [], balancer: { type: 'consistent-hash', key: 'body' } } } }, "upstreams.users.balancer.key: must be 'ip'"],
  ['table size not prime', { upstreams: { users: { targets: [], balancer: { type: 'consistent-hash', tableSize: 100 } } } }, 'upstreams.users.balancer.tableSize: must be a prime'],
  ['ewma decay negative', { upstreams: { users: { targets: [], balancer: { type: 'ewma', decay: -1 } } } }, 'upstreams.users.balancer.decay: must be a positive number'],
  ['timeout not a number', { upstreams: { users: { targets: [], timeout: { connect: 'soon' } } } }, 'upstreams.users.timeout.connect: must be a positive integer'],
  ['unknown timeout', { upstreams: { users: { targets: [], timeout: { read: 1 } } } }, 'upstreams.users.timeout.read: unknown option'],
  ['maxConnections zero', { upstreams: { users: { targets: [], maxConnections: 0 } } }, 'upstreams.users.maxConnections: must be an integer from 1 to 65535'],
  ['responseBuffer negative', { upstreams: { users: { targets: [], responseBuffer: -1 } } }, 'upstreams.users.responseBuffer: must be an integer from 0 to 16777216 (bytes)'],
  ['responseBuffer too large', { upstreams: { users: { targets: [], responseBuffer: 2 ** 30 } } }, 'upstreams.users.responseBuffer: must be an integer from 0 to 16777216 (bytes)'],
  ['responseBuffer not a number', { upstreams: { users: { targets: [], responseBuffer: '64k' } } }, 'upstreams.users.responseBuffer: must be an integer'],
  ['bad pool name', { upstreams: { 'a b': { targets: [] } } }, 'upstreams.a b: a pool name must be'],
  ['upstreams not an object', { upstreams: [] }, 'upstreams: must be an object of pools'],
  ['unknown top-level option', { upstream: {} }, 'upstream: unknown option, did you mean `upstreams`?'],
  ['statusRoute option misspelt', { statusRoute: { url: '/_up', onRequst: () => {} } }, 'statusRoute.onRequst: unknown option, did you mean `onRequest`?'],
  ['statusRoute hook not a function', { statusRoute: { url: '/_up', onRequest: 'auth' } }, 'statusRoute.onRequest: must be a function or an array of functions'],
  ['metrics option unknown', { metrics: { registy: {} } }, 'metrics.registy: unknown option, did you mean `registry`?'],
  ['mirror without pool', { upstreams: { users: { targets: [], mirror: { percent: 5 } } } }, 'upstreams.users.mirror.pool: is required'],
  ['mirror percent above 100', { upstreams: { users: { targets: [], mirror: { pool: 'x', percent: 101 } } } }, 'upstreams.users.mirror.percent: must be a percentage from 0 to 100'],
  ['mirror body negative', { upstreams: { users: { targets: [], mirror: { pool: 'x', body: -1 } } } }, 'upstreams.users.mirror.body: must be an integer from 0 to 16777216 (bytes)'],
  ['mirror maxConcurrent zero', { upstreams: { users: { targets: [], mirror: { pool: 'x', maxConcurrent: 0 } } } }, 'upstreams.users.mirror.maxConcurrent: must be an integer from 1 to 100000'],
  ['mirror timeout zero', { upstreams: { users: { targets: [], mirror: { pool: 'x', timeout: 0 } } } }, 'upstreams.users.mirror.timeout: must be a positive integer (milliseconds)'],
  ['mirror header not a token', { upstreams: { users: { targets: [], mirror: { pool: 'x', header: 'x mirror' } } } }, 'upstreams.users.mirror.header: must be a header name'],
  ['mirror option misspelt', { upstreams: { users: { targets: [], mirror: { pool: 'x', percnt: 5 } } } }, 'upstreams.users.mirror.percnt: unknown option, did you mean `percent`?'],
  ['route mirror without pool', { upstreams: { users: { targets: [] } }, routes: [{ prefix: '/u', upstream: 'users', mirror: {} }] }, 'routes[0].mirror.pool: is required'],
  ['hedge as a number', { upstreams: { users: { targets: [], retry: { hedge: 50 } } } }, 'upstreams.users.retry.hedge: must be an object { delay }'],
  ['hedge delay zero', { upstreams: { users: { targets: [], retry: { hedge: { delay: 0 } } } } }, 'upstreams.users.retry.hedge.delay: must be a positive integer (milliseconds)'],
  ['hedge without delay', { upstreams: { users: { targets: [], retry: { hedge: {} } } } }, 'upstreams.users.retry.hedge.delay: is required'],
  ['splits not an object', { splits: [] }, 'splits: must be an object of splits'],
  ['route naming an unknown pool', { upstreams: { users: { targets: [] } }, routes: [{ prefix: '/u', upstream: 'orders' }] }, 'routes[0].upstream: unknown pool or split "orders"'],
  ['route prefix without slash', { upstreams: { users: { targets: [] } }, routes: [{ prefix: 'u', upstream: 'users' }] }, "routes[0].prefix: must be a path starting with '/'"],
  ['route without upstream', { upstreams: { users: { targets: [] } }, routes: [{ prefix: '/u' }] }, 'routes[0].upstream: is required'],
  ['route method unknown', { upstreams: { users: { targets: [] } }, routes: [{ prefix: '/u', upstream: 'users', methods: ['FETCH'] }] }, 'routes[0].methods[0]: must be one of'],
  ['route handlerTimeout zero', { upstreams: { users: { targets: [] } }, routes: [{ prefix: '/u', upstream: 'users', handlerTimeout: 0 }] }, 'routes[0].handlerTimeout: must be an integer >= 1 (milliseconds)'],
  ['route bodyTimeout zero', { upstreams: { users: { targets: [] } }, routes: [{ prefix: '/u', upstream: 'users', bodyTimeout: 0 }] }, 'routes[0].bodyTimeout: must be an integer >= 1 (milliseconds)'],
  ['route strictPaths not a boolean', { upstreams: { users: { targets: [] } }, routes: [{ prefix: '/u', upstream: 'users', strictPaths: 'yes' }] }, 'routes[0].strictPaths: must be a boolean'],
  ['route option unknown', { upstreams: { users: { targets: [] } }, routes: [{ prefix: '/u', upstream: 'users', prehandler: () => {} }] }, 'routes[0].prehandler: unknown option, did you mean `preHandler`?'],
  ['rewritePrefix with unknown param', { upstreams: { users: { targets: [] } }, routes: [{ prefix: '/u/:id', upstream: 'users', rewritePrefix: '/v1/:userId' }] }, 'routes[0].rewritePrefix: :userId is not a parameter of the prefix'],
  ['hook not a function', { upstreams: {}, onSelect: 'log' }, 'onSelect: Expected function']
]

for (const [name, options, message] of cases) {
  test(`invalid option: ${name}`, async (t) => {
    const error = await registerError(options)
    t.equal(error.code, 'FST_UPSTREAM_INVALID_OPTION')
    t.ok(error.message.includes(message), `"${error.message}" includes "${message}"`)
  })
}

test('an unknown option far from every known one gets no suggestion', async (t) => {
  const error = await registerError({ upstreams: { users: { targets: [], colour: 'blue' } } })
  t.match(error.message, /upstreams\.users\.colour: unknown option$/)
})

test('a server keeps working after a failed register elsewhere', async (t) => {
  const error = await registerError({ upstreams: { users: { targets: ['nope'] } } })
  t.equal(error.code, 'FST_UPSTREAM_INVALID_OPTION')
  const app = Fastify()
  await app.register(fastifyUpstream, { upstreams: { users: { targets: ['http://127.0.0.1:1'] } } })
  await app.ready()
  t.equal(app.upstreams.get('users')?.targets[0].url, 'http://127.0.0.1:1')
  await app.close()
})

test('options may be omitted and defaults apply', async (t) => {
  const app = Fastify()
  await app.register(fastifyUpstream)
  await app.ready()
  t.equal(app.upstreams.size, 0)
  const pool = app.upstreams.add('users', { targets: ['http://127.0.0.1:1/', { url: 'http://127.0.0.1:2', weight: 5, backup: true }] })
  t.same(pool.targets.map((t) => [t.url, t.weight, t.backup, t.state]), [
    ['http://127.0.0.1:1', 1, false, 'healthy'],
    ['http://127.0.0.1:2', 5, true, 'healthy']
  ])
  const config = internalPool(pool)?.config
  t.same(config?.timeout, { connect: 5000, response: 30000, idle: 60000 })
  t.equal(config?.responseBuffer, 65536)
  t.equal(pool.status().balancer, 'round-robin')
  await app.close()
})
