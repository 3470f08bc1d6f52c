import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import { Registry } from 'prom-client'
import { expectAssignable, expectError, expectType } from 'tsd'
import fastifyUpstream, {
  fastifyUpstream as named,
  type Balancer,
  type BalancerTarget,
  type FastifyUpstreamOptions,
  type PoolStatus,
  type RegistryStatus,
  type SelectRequest,
  type TargetState,
  type TargetView,
  type UpstreamPool,
  type SplitChangeEvent,
  type SplitStatus,
  type TrafficSplit,
  type TargetRegistration,
  registerTarget
} from '..'

expectType<typeof fastifyUpstream>(named)

const app = Fastify()
app.register(fastifyUpstream, {
  upstreams: {
    users: {
      targets: [
        { url: 'http://127.0.0.1:3001', weight: 3 },
        'http://127.0.0.1:3002',
        { url: 'http://127.0.0.1:3009', backup: true }
      ],
      balancer: 'least-request',
      healthCheck: {
        active: { path: '/healthz', interval: 5000, timeout: 1000, healthyThreshold: 2, unhealthyThreshold: 3, expectedStatus: [200, '300-399'] },
        passive: { consecutiveFailures: 5, ejectionTime: 30000, maxEjectionPercent: 50 }
      },
      retry: { attempts: 2, statusCodes: [502, 503, 504], idempotencyKey: 'idempotency-key', backoff: { base: 25, max: 250 }, budget: { percent: 20, minRetries: 3 } },
      timeout: { connect: 2000, response: 30000 },
      slowStart: { window: 30000 },
      panicThreshold: 50,
      responseBuffer: 16384,
      maxConnections: 100
    },
    custom: {
      targets: [],
      healthCheck: { active: { check: async (target) => target.url.startsWith('http') } }
    },
    sessions: {
      targets: ['http://127.0.0.1:4001'],
      balancer: { type: 'consistent-hash', key: 'header:x-user' }
    },
    keyed: {
      targets: [],
      balancer: { type: 'consistent-hash', key: (request) => request.headers['x-tenant'] as string | undefined }
    }
  },
  routes: [{ prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users', methods: ['GET', 'POST'], strictPaths: true, bodyTimeout: 10000 }],
  onSelect: (event) => {
    expectType<TargetView>(event.target)
    expectType<number>(event.attempt)
    expectType<FastifyRequest>(event.request)
  },
  onProxyError: (event) => { expectType<FastifyRequest>(event.request) },
  onTargetStateChange: (event) => { expectType<TargetState>(event.from); expectType<TargetState | 'removed'>(event.to) },
  onRetry: (event) => { expectType<number>(event.attempt) }
})
expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [], healthCheck: { active: { type: 'udp' } } } } }))
expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [], http2: 'h2c', healthCheck: { active: { type: 'grpc', service: 1 } } } } }))

// a gRPC gateway: an HTTP/2 app, a pool of h2c gRPC servers checked by the gRPC health protocol
const grpcApp = Fastify({ http2: true })
grpcApp.register(fastifyUpstream, {
  upstreams: { greeter: { targets: ['http://127.0.0.1:50051'], http2: 'h2c', healthCheck: { active: { type: 'grpc', service: 'helloworld.Greeter' } } } },
  routes: [{ prefix: '/helloworld.Greeter', upstream: 'greeter', rewritePrefix: '/helloworld.Greeter' }]
})

// a custom balancer implements the same interface as the built-ins
class First implements Balancer {
  private list: readonly BalancerTarget[] = []
  update (targets: readonly BalancerTarget[]): void { this.list = targets }
  pick (_request: SelectRequest): BalancerTarget | undefined { return this.list[0] }
}
expectAssignable<FastifyUpstreamOptions>({ upstreams: { a: { targets: [], balancer: new First() } } })
expectAssignable<FastifyUpstreamOptions>({ upstreams: { a: { targets: [], balancer: () => new First() } } })

expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [], balancer: 'fastest' } } }))
expectAssignable<FastifyUpstreamOptions>({ upstreams: { a: { targets: [], retry: { idempotencyKey: false } } } })

// HTTP/2 to the targets
expectAssignable<FastifyUpstreamOptions>({ upstreams: { a: { targets: [], http2: 'h2c', http2Settings: { maxConcurrentStreams: 50, pingInterval: 0 } } } })
expectAssignable<FastifyUpstreamOptions>({ upstreams: { a: { targets: [], http2: true }, b: { targets: [], http2: false } } })
expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [], http2: 'h2' } } }))
expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [], http2: true, http2Settings: { maxStreams: 10 } } } }))
expectAssignable<FastifyUpstreamOptions>({ upstreams: { a: { targets: [], sticky: { cookie: { name: 'route', maxAge: 60, sameSite: 'Strict' } } } } })
expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [], sticky: { cookie: { name: 'route', sameSite: 'lax' } } } } }))
expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [], retry: { idempotencyKey: true } } } }))
expectAssignable<FastifyUpstreamOptions>({ upstreams: { a: { targets: [], balancer: { type: 'least-request', choices: 3, slowRatio: 0 } } } })
expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [], balancer: { type: 'least-request', slowRatio: 'high' } } } }))
expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [{ weight: 2 }] } } }))
expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [], responseBuffer: '64k' } } }))
expectError(app.register(fastifyUpstream, { routes: [{ prefix: '/x' }] }))
expectError(app.register(fastifyUpstream, { routes: [{ prefix: '/x', upstream: 'u', strictPaths: 'yes' }] }))
expectError(app.register(fastifyUpstream, { routes: [{ prefix: '/x', upstream: 'u', bodyTimeout: '1s' }] }))
// a mount's Fastify options are typed as Fastify types them
app.register(fastifyUpstream, {
  upstreams: { u: { targets: [] } },
  routes: [{
    prefix: '/x',
    upstream: 'u',
    onRequest: async (request, reply) => { expectType<FastifyRequest>(request); expectType<FastifyReply>(reply) },
    preHandler: [async (request) => { expectType<FastifyRequest>(request) }],
    schema: { querystring: { type: 'object' } },
    config: {},
    prefixTrailingSlash: 'no-slash',
    validatorCompiler: () => () => true,
    replyOptions: { rewriteHeaders: (headers) => headers, onError: (reply, { error }) => { reply.send(error) } }
  }]
})
expectError(app.register(fastifyUpstream, { routes: [{ prefix: '/x', upstream: 'u', schema: 42 }] }))
expectError(app.register(fastifyUpstream, { routes: [{ prefix: '/x', upstream: 'u', onRequest: 'auth' }] }))
expectError(app.register(fastifyUpstream, { routes: [{ prefix: '/x', upstream: 'u', replyOptions: { urll: '/v1' } }] }))
expectError(app.register(fastifyUpstream, { routes: [{ prefix: '/x', upstream: 'u', replyOptions: { retriesCount: 3 } }] }))

// a discovery pool needs no targets; a pool needs one or the other
expectAssignable<FastifyUpstreamOptions>({ upstreams: { a: { discovery: { resolve: async () => ['http://127.0.0.1:3001'] } } } })
expectAssignable<FastifyUpstreamOptions>({ upstreams: { a: { discovery: { type: 'dns', hostname: 'api.internal', port: 8080 } } } })
expectError(app.register(fastifyUpstream, { upstreams: { a: {} } }))

// statusRoute takes Fastify's own route hooks and options
app.register(fastifyUpstream, {
  statusRoute: {
    url: '/_upstreams',
    onRequest: async (request, reply) => {
      expectType<FastifyRequest>(request)
      expectType<FastifyReply>(reply)
    },
    preHandler: [(_request, _reply, done) => { done() }],
    config: { ops: true },
    logLevel: 'warn'
  }
})
expectError(app.register(fastifyUpstream, { statusRoute: { url: '/_upstreams', onRequst: async () => {} } }))
expectError(app.register(fastifyUpstream, { statusRoute: { url: '/_upstreams', onRequest: 'auth' } }))
expectError(app.register(fastifyUpstream, { statusRoute: { url: '/_upstreams', onRequest: (request: string) => request } }))
expectError(app.register(fastifyUpstream, { statusRoute: { url: '/_upstreams', schema: {} } }))
expectError(app.register(fastifyUpstream, { statusRoute: { url: 42 } }))
// metrics into your own registry, with or without a status route
expectAssignable<FastifyUpstreamOptions>({ metrics: { registry: new Registry(), prefix: 'gw_' } })

// decorators
const pool = app.upstreams.get('users')
expectType<UpstreamPool | undefined>(pool)
expectType<boolean>(app.upstreams.has('users'))
expectType<RegistryStatus>(app.upstreams.status())
if (pool !== undefined) {
  expectType<string>(pool.name)
  expectType<readonly TargetView[]>(pool.targets)
  expectType<TargetState>(pool.targets[0].state)
  expectType<number>(pool.targets[0].inflight)
  expectType<TargetView | undefined>(pool.select({ headers: {}, url: '/' }))
  expectType<TargetView>(pool.addTarget('http://127.0.0.1:3003'))
  expectType<Promise<void>>(pool.removeTarget('http://127.0.0.1:3003', { drain: true }))
  expectType<void>(pool.setWeight('http://127.0.0.1:3001', 5))
  expectType<void>(pool.setState('http://127.0.0.1:3001', 'disabled'))
  expectError(pool.setState('http://127.0.0.1:3001', 'healthy'))
  expectType<PoolStatus>(pool.status())
  // only what the README documents: the internals are out of reach
  expectError(pool.panic = true)
  expectError(pool.retriesInFlight)
  expectError(pool.targets[0].inflight = -1)
  expectError(pool.transition())
  expectError(pool.refresh())
  expectError(pool.start())
  expectError(pool.close())
  expectError(pool.pick({ headers: {}, url: '/' }))
  expectError(pool.isFull())
  expectError(pool.config)
  expectError(pool.connections)
  expectError(pool.detector)
  expectError(pool.headers)
  expectError(pool.targetList)
}
for (const each of app.upstreams) expectType<UpstreamPool>(each)
expectError(app.upstreams.start())
expectError(app.upstreams.close())
expectType<number>(app.upstreams.size)
expectType<IterableIterator<string>>(app.upstreams.keys())

app.get('/me', (_request, reply) => {
  expectType<FastifyReply>(reply.forward('users', { url: '/v1/users/me', rewriteRequestHeaders: (_req, headers) => headers }))
  return reply.forward('users')
})
expectError(app.get('/x', (_request, reply) => reply.forward()))
expectError(app.get('/x', (_request, reply) => reply.forward('users', { urll: '/v1/x' })))
expectError(app.get('/x', (_request, reply) => reply.forward('users', { getUpstream: () => 'http://elsewhere' })))

// what the upstream did for a request, for access logs
app.addHook('onResponse', async (request) => {
  const upstream = request.upstream
  if (upstream === null) return
  expectType<string>(upstream.pool)
  expectType<string | undefined>(upstream.target)
  expectType<number | undefined>(upstream.status)
  expectType<string>(upstream.attempts[0].target)
  expectType<number | undefined>(upstream.attempts[0].status)
  expectType<string | undefined>(upstream.attempts[0].error)
  expectType<number | undefined>(upstream.attempts[0].time)
  expectError(upstream.attempts.push(upstream.attempts[0]))
})
expectError(app.addHook('onResponse', async (request) => { request.upstream = null }))

// traffic policies: splits (named, and a mount's own), mirrors, hedging
app.register(fastifyUpstream, {
  upstreams: {
    v1: { targets: ['http://127.0.0.1:3001'], retry: { hedge: { delay: 50 } }, mirror: { pool: 'shadow', percent: 10 } },
    v2: { targets: ['http://127.0.0.1:3002'] },
    shadow: { targets: ['http://127.0.0.1:3003'] }
  },
  splits: {
    checkout: {
      branches: [
        { pool: 'v2', match: [{ header: 'x-canary', equals: '1' }, { method: ['GET', 'HEAD'] }], headers: { set: { 'x-version': '2' } } },
        { pool: 'v2', match: (request) => request.headers['user-agent'] === 'robot' },
        { pool: 'v2', match: { cookie: 'beta', regex: /^yes$/ }, rewritePrefix: '/next' },
        { pool: 'v1', weight: 95 },
        { pool: 'v2', weight: 5 }
      ],
      key: 'cookie:uid',
      fallback: false
    }
  },
  routes: [
    { prefix: '/checkout', upstream: 'checkout', mirror: { pool: 'shadow', body: 0, maxConcurrent: 10, timeout: 1000, header: 'x-shadow' } },
    { prefix: '/api', upstream: [{ pool: 'v1', weight: 9 }, { pool: 'v2', weight: 1 }] },
    { prefix: '/beta', upstream: { branches: [{ pool: 'v2' }], key: (request) => request.ip } }
  ],
  onSplitChange: (event) => { expectType<SplitChangeEvent>(event) }
})
expectError(app.register(fastifyUpstream, { splits: { s: { branches: [{ pool: 'v1', weight: '5' }] } } }))
expectError(app.register(fastifyUpstream, { splits: { s: { branches: [{ pool: 'v1', match: { header: 'x', like: 'y' } }] } } }))
expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [], mirror: { percent: 10 } } } }))
expectError(app.register(fastifyUpstream, { upstreams: { a: { targets: [], retry: { hedge: 50 } } } }))
const split = app.upstreams.split('checkout')
expectType<TrafficSplit | undefined>(split)
if (split !== undefined) {
  expectType<void>(split.setWeights({ v1: 90, v2: 10 }))
  expectType<Record<string, number>>(split.weights())
  expectType<SplitStatus>(split.status())
  expectError(split.setWeights({ v1: '90' }))
}
expectType<SplitStatus>(app.upstreams.status().splits.checkout)

// pools and targets from etcd, and a target that registers itself
app.register(fastifyUpstream, {
  etcd: { endpoints: ['http://127.0.0.1:2379'], prefix: '/gateway/pools/', username: 'gateway', password: 'secret', tls: { ca: 'PEM' }, timeout: 1000, startTimeout: 3000 },
  upstreams: { api: { discovery: { type: 'etcd', endpoints: ['http://127.0.0.1:2379'], prefix: '/services/api/' } } },
  routes: [{ prefix: '/orders', upstream: 'orders' }]
})
expectError(app.register(fastifyUpstream, { etcd: { prefix: '/p/' } }))
expectError(app.register(fastifyUpstream, { upstreams: { a: { discovery: { type: 'etcd', endpoints: ['http://127.0.0.1:2379'] } } } }))
expectType<Promise<TargetRegistration>>(registerTarget({ endpoints: ['http://127.0.0.1:2379'], prefix: '/services/api/', url: 'http://127.0.0.1:3001', ttl: 10, weight: 2 }))
expectError(registerTarget({ prefix: '/s/', url: 'http://127.0.0.1:3001' }))
registerTarget({ endpoints: ['http://127.0.0.1:2379'], prefix: '/s/', url: 'http://127.0.0.1:3001' }).then(async (registration) => {
  expectType<string>(registration.key)
  expectType<Promise<void>>(registration.close())
}).catch(() => {})
