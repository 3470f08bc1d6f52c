// Unit tests of hedged requests (lib/proxy/hedge.ts): the rules (which requests, the
// budget, the second arm's options) and the Hedge's relaying between its arms and the
// handler, driven by hand through fake connections and controllers: no socket, no server.
import { EventEmitter } from 'node:events'
import { Readable } from 'node:stream'
import type { FastifyRequest } from 'fastify'
import { test } from 'tap'
import type { Dispatcher } from 'undici'
import { Hedge, hedgeable, secondOptions } from '../../lib/proxy/hedge'
import { budgetAllows } from '../../lib/proxy/retry'
import { Forwarding, type PoolProxy } from '../../lib/proxy/forwarding'
import type { DispatchOptions } from '../../lib/proxy/tracing'
import { HEDGE_CANCELLED } from '../../lib/proxy/upstream-error'
import type { Pool } from '../../lib/upstream/pool'
import { Target } from '../../lib/upstream/target'

type RetryConfig = Parameters<typeof hedgeable>[0]
type Handler = Dispatcher.DispatchHandler
type Controller = Dispatcher.DispatchController

function config (overrides: Partial<RetryConfig> = {}): RetryConfig {
  return {
    attempts: 2,
    methods: new Set(['GET', 'HEAD', 'PUT']),
    idempotencyKey: 'idempotency-key',
    statusCodes: new Uint8Array(600),
    backoffBase: 0,
    backoffMax: 0,
    budgetPercent: 20,
    budgetMinRetries: 3,
    hedgeDelay: 10_000,
    ...overrides
  }
}

function options (overrides: Partial<DispatchOptions> = {}): DispatchOptions {
  return { origin: 'http://a.test:8080', path: '/x', method: 'GET', headers: { host: 'a.test:8080' }, body: '', ...overrides }
}

test('hedgeable: idempotent methods, or an Idempotency-Key', async (t) => {
  const c = config()
  t.equal(hedgeable(c, options()), true, 'a GET')
  t.equal(hedgeable(c, options({ method: 'PUT', body: '{"a":1}' })), true, 'a PUT with a parsed body')
  t.equal(hedgeable(c, options({ method: 'POST', body: '{}' })), false, 'a POST')
  t.equal(hedgeable(c, options({ method: 'POST', body: '{}', headers: { 'idempotency-key': 'k' } })), true, 'a POST with a key')
  t.equal(hedgeable(config({ idempotencyKey: undefined }), options({ method: 'POST', headers: { 'idempotency-key': 'k' } })), false, 'keys turned off')
  t.equal(hedgeable(c, options({ method: 'POST', headers: ['idempotency-key', 'k'] })), false, 'headers as a list are not read')
})

test('hedgeable: a body that can be sent twice, no upgrade', async (t) => {
  const c = config()
  t.equal(hedgeable(c, options({ body: null })), true, 'no body')
  t.equal(hedgeable(c, options({ body: undefined })), true, 'no body (undefined)')
  t.equal(hedgeable(c, options({ method: 'PUT', body: Buffer.from('x') })), true, 'a Buffer')
  t.equal(hedgeable(c, options({ method: 'PUT', body: Readable.from(['x']) })), false, 'a stream: it cannot be read twice at once')
  t.equal(hedgeable(c, options({ method: 'PUT', body: (async function * () { yield 'x' })() as unknown as DispatchOptions['body'] })), false, 'an async iterable neither')
  t.equal(hedgeable(c, options({ upgrade: 'websocket' })), false, 'an upgrade')
})

test('budgetAllows: the retry budget, hedges counted as retries', async (t) => {
  const c = config({ budgetPercent: 20, budgetMinRetries: 3 })
  t.equal(budgetAllows(c, 0, 2), true, 'under the minimum')
  t.equal(budgetAllows(c, 0, 3), false, 'at the minimum, with little in flight')
  t.equal(budgetAllows(c, 100, 19), true, '20% of 100 in flight')
  t.equal(budgetAllows(c, 100, 20), false)
  t.equal(budgetAllows(config({ budgetPercent: 0, budgetMinRetries: 0 }), 1000, 0), false, 'no budget at all')
})

test('secondOptions: the same request, to the second target', async (t) => {
  const first = new Target({ url: 'http://a.test:8080', weight: 1, backup: false })
  const second = new Target({ url: 'https://b.test', weight: 1, backup: false })
  const original = options({ headers: { host: 'a.test:8080', 'x-a': '1' }, servername: 'a.test' })
  const copy = secondOptions(original, first, second) as DispatchOptions
  t.match(copy, { origin: 'https://b.test', path: '/x', method: 'GET', servername: 'b.test', body: '' })
  t.same(copy.headers, { host: 'b.test', 'x-a': '1' }, "the first target's host becomes the second's")
  t.same(original.headers, { host: 'a.test:8080', 'x-a': '1' }, "the first arm's headers are left alone")
  t.equal(original.servername, 'a.test')

  const fixed = secondOptions(options({ headers: { host: 'api.example' } }), first, second) as DispatchOptions
  t.same(fixed.headers, { host: 'api.example' }, "a Host of the policy's own ('pass', a fixed name) is kept")

  const based = new Target({ url: 'http://a.test:8080/v1', weight: 1, backup: false })
  const other = new Target({ url: 'http://c.test/v2/api', weight: 1, backup: false })
  t.equal((secondOptions(options({ path: '/v1/users?q=1' }), based, other) as DispatchOptions).path, '/v2/api/users?q=1', "the second target's base path")
  t.equal(secondOptions(options({ path: '/elsewhere' }), based, other), undefined, 'a path not under the base path: no hedge')
})

// ---- the Hedge, driven by hand ---------------------------------------------------------

/** A controller as undici hands it out, recording what is asked of it. */
class FakeController implements Controller {
  readonly log: string[]
  readonly name: string
  rawHeaders: Controller['rawHeaders'] = null
  rawTrailers: Controller['rawTrailers'] = null
  private abortedWith: Error | null = null
  private isPaused = false
  /** what undici does on an abort: reports the error to the handler */
  onAbort: ((reason: Error) => void) | undefined = undefined

  constructor (name: string, log: string[]) {
    this.name = name
    this.log = log
  }

  get aborted (): boolean { return this.abortedWith !== null }
  get paused (): boolean { return this.isPaused }
  get reason (): Error | null { return this.abortedWith }
  abort (reason: Error): void {
    if (this.abortedWith !== null) return
    this.abortedWith = reason
    this.log.push(`${this.name} abort ${(reason as { code?: string }).code ?? reason.message}`)
    this.onAbort?.(reason)
  }

  pause (): void { this.isPaused = true; this.log.push(`${this.name} pause`) }
  resume (): void { this.isPaused = false; this.log.push(`${this.name} resume`) }
}

/** A connection pool that keeps what it is given to dispatch. */
class FakeConnection {
  readonly sent: Array<{ options: DispatchOptions, handler: Handler }> = []
  dispatch (options: DispatchOptions, handler: Handler): boolean {
    this.sent.push({ options, handler })
    return true
  }
}

interface Setup {
  hedge: Hedge
  forwarding: Forwarding
  proxy: PoolProxy
  targets: Target[]
  connections: FakeConnection[]
  client: EventEmitter & { destroyed: boolean }
  log: string[]
  /** the Exchange each arm was dispatched with */
  arm: (index: number) => Handler
  /** a started arm's controller (undici's part: its abort reports the error to the arm) */
  start: (index: number) => FakeController
}

function setup (handler: Handler, retry: Partial<RetryConfig> = {}): Setup {
  const log: string[] = []
  const targets = [new Target({ url: 'http://a.test', weight: 1, backup: false }), new Target({ url: 'http://b.test', weight: 1, backup: false })]
  const connections = targets.map((target) => {
    const connection = new FakeConnection()
    target.connection = connection as unknown as Dispatcher
    return connection
  })
  const pool = {
    name: 'p',
    config: { retry: config(retry) },
    detector: undefined,
    get inflight () { return targets.reduce((sum, target) => sum + target.inflight, 0) },
    targetList: targets,
    pick: (_request: unknown, exclude: readonly Target[]) => targets.find((target) => !exclude.includes(target))
  } as unknown as Pool
  const proxy = { headers: undefined as never, retriesInFlight: 0, mirrors: { inflight: 0, sent: 0, dropped: 0, failed: 0 }, hedges: { sent: 0, won: 0 } }
  const forwarding = new Forwarding(pool, proxy, null)
  forwarding.target = targets[0]
  const client = Object.assign(new EventEmitter(), { destroyed: false })
  const request = { raw: { socket: client } } as unknown as FastifyRequest
  const hedge = new Hedge(handler, forwarding, request, options({ origin: 'http://a.test', headers: { host: 'a.test' } }), targets[0])
  const arm = (index: number): Handler => connections[index].sent[0].handler
  const start = (index: number): FakeController => {
    const controller = new FakeController(index === 0 ? 'a' : 'b', log)
    const exchange = arm(index)
    controller.onAbort = (reason) => exchange.onResponseError?.(controller, reason)
    exchange.onRequestStart?.(controller, { arm: index })
    return controller
  }
  return { hedge, forwarding, proxy, targets, connections, client, log, arm, start }
}

/** A handler with the controller API, recording its calls and keeping its controller. */
function modern (log: string[]): Handler & { controller: Controller | undefined } {
  const handler: Handler & { controller: Controller | undefined } = {
    controller: undefined,
    onRequestStart (controller, context) { handler.controller = controller; log.push(`start ${JSON.stringify(context)}`) },
    onResponseStart (_controller, statusCode) { log.push(`headers ${statusCode}`) },
    onResponseData (_controller, chunk) { log.push(`data ${String(chunk)}`) },
    onResponseEnd () { log.push('end') },
    onResponseError (_controller, error) { log.push(`error ${(error as { code?: string }).code ?? error.message}`) }
  }
  return handler
}

test('the second arm wins: the handler gets its calls through the one controller, the first is cancelled', async (t) => {
  const calls: string[] = []
  const handler = modern(calls)
  const s = setup(handler)
  s.hedge.dispatch(s.connections[0] as unknown as Dispatcher)
  t.equal(s.connections[0].sent.length, 1, 'the first arm is sent')
  const a = s.start(0)
  t.same(calls, ['start {"arm":0}'], 'the handler starts with the first arm')
  s.hedge.fire()
  t.equal(s.connections[1].sent.length, 1, 'the second arm is sent to the other target')
  t.match(s.connections[1].sent[0].options, { origin: 'http://b.test', headers: { host: 'b.test' }, servername: 'b.test' })
  t.same(s.proxy.hedges, { sent: 1, won: 0 })
  t.equal(s.proxy.retriesInFlight, 1, 'the hedge holds retry budget')
  const b = s.start(1)
  t.same(calls, ['start {"arm":0}'], 'no second start')

  b.rawHeaders = [Buffer.from('X-B'), Buffer.from('1')]
  s.arm(1).onResponseStart?.(b, 200, { 'x-b': '1' }, 'OK')
  t.same(calls.slice(1), ['headers 200'])
  t.same(s.log, [`a abort ${HEDGE_CANCELLED}`], 'the first arm is cancelled')
  t.equal(a.aborted, true, 'through its controller')
  t.equal(s.targets[0].inflight, 0, 'and out of flight')
  t.equal(s.targets[0].failures, 0, 'with no failure counted')
  t.same(s.proxy.hedges, { sent: 1, won: 1 })
  t.match(s.forwarding.outcome(), {
    target: 'http://b.test',
    status: 200,
    attempts: [{ target: 'http://a.test', status: undefined, error: HEDGE_CANCELLED }, { target: 'http://b.test', status: 200 }]
  })

  const controller = handler.controller as Controller
  t.equal(controller.rawHeaders, b.rawHeaders, "the controller shows the winner's raw headers")
  controller.pause()
  controller.resume()
  t.same(s.log.slice(1), ['b pause', 'b resume'], 'pause and resume go to the winner')
  t.equal(controller.paused, false)
  s.arm(1).onResponseData?.(b, Buffer.from('body'))
  s.arm(1).onResponseEnd?.(b, {})
  t.same(calls.slice(2), ['data body', 'end'])
  t.equal(s.proxy.retriesInFlight, 0, 'the budget is given back at the end')
  t.equal(s.targets[1].inflight, 0)
  s.client.emit('close')
  t.same(s.log.length, 3, 'the client is no longer watched once there is an answer')
})

test('a deprecated handler: translated calls; its abort before any answer cancels both arms', async (t) => {
  const calls: string[] = []
  let abort: ((reason?: Error) => void) | undefined
  const legacy = {
    onConnect (a: (reason?: Error) => void) { abort = a; calls.push('connect') },
    onHeaders (statusCode: number) { calls.push(`headers ${statusCode}`); return true },
    onData () { return true },
    onComplete () { calls.push('complete') },
    onError (error: Error) { calls.push(`error ${(error as { code?: string }).code}`) }
  }
  const s = setup(legacy as unknown as Handler)
  s.hedge.dispatch(s.connections[0] as unknown as Dispatcher)
  s.hedge.fire()
  // the second arm gets its connection first: the handler's start comes from it
  s.start(1)
  s.start(0)
  t.same(calls, ['connect'])
  abort?.()
  t.same(s.log.sort(), [`a abort ${HEDGE_CANCELLED}`, `b abort ${HEDGE_CANCELLED}`], 'both arms cancelled')
  t.same(calls, ['connect', `error ${HEDGE_CANCELLED}`], 'one error reported, once both are over')
  t.equal(s.targets[0].failures + s.targets[1].failures, 0, 'no failure counted')
  t.equal(s.targets[0].inflight + s.targets[1].inflight, 0)
  t.equal(s.proxy.retriesInFlight, 0)
})

test('an arm cancelled while it waits for a connection is aborted when it gets one', async (t) => {
  const calls: string[] = []
  const s = setup(modern(calls))
  s.hedge.dispatch(s.connections[0] as unknown as Dispatcher)
  const a = s.start(0)
  s.hedge.fire()
  // the second arm is queued (no connection yet) when the first answers
  s.arm(0).onResponseStart?.(a, 200, {}, 'OK')
  t.same(s.log, [], 'nothing to abort yet')
  t.equal(s.targets[1].inflight, 1, 'the queued arm is still in flight')
  s.start(1)
  t.same(s.log, [`b abort ${HEDGE_CANCELLED}`], 'aborted as soon as it starts')
  t.equal(s.targets[1].inflight, 0)
  t.equal(s.targets[1].failures, 0)
  t.same(s.proxy.hedges, { sent: 1, won: 0 })
  t.equal(s.proxy.retriesInFlight, 0)
  t.match(s.forwarding.outcome(), { target: 'http://a.test', status: 200, attempts: [{ target: 'http://b.test', error: HEDGE_CANCELLED }, { target: 'http://a.test', status: 200 }] })
})

test('a 1xx decides nothing: dropped while the arms race, passed on from an arm alone', async (t) => {
  const calls: string[] = []
  const s = setup(modern(calls))
  s.hedge.dispatch(s.connections[0] as unknown as Dispatcher)
  const a = s.start(0)
  s.arm(0).onResponseStart?.(a, 103, {}, 'Early Hints')
  t.same(calls.slice(1), ['headers 103'], 'alone: passed on')
  s.hedge.fire()
  const b = s.start(1)
  s.arm(1).onResponseStart?.(b, 103, {}, 'Early Hints')
  t.same(calls.slice(1), ['headers 103'], 'racing: dropped')
  t.equal(s.connections[1].sent.length, 1)
  s.arm(0).onResponseStart?.(a, 200, {}, 'OK')
  t.same(calls.slice(1), ['headers 103', 'headers 200'])
  t.same(s.log, [`b abort ${HEDGE_CANCELLED}`])
})

test('a first arm that fails within dispatch() is reported at once, and nothing is hedged', async (t) => {
  const calls: string[] = []
  const s = setup(modern(calls))
  const connection = {
    dispatch (_options: DispatchOptions, handler: Handler): boolean {
      handler.onResponseError?.(undefined as unknown as Controller, Object.assign(new Error('closed'), { code: 'UND_ERR_CLOSED' }))
      return false
    }
  }
  s.hedge.dispatch(connection as unknown as Dispatcher)
  t.same(calls, ['error UND_ERR_CLOSED'])
  s.hedge.fire()
  t.equal(s.connections[1].sent.length, 0, 'no second arm')
  t.same(s.proxy.hedges, { sent: 0, won: 0 })
})

test('no second arm for a client that has gone, nor past the budget', async (t) => {
  const gone = setup(modern([]))
  gone.hedge.dispatch(gone.connections[0] as unknown as Dispatcher)
  gone.client.destroyed = true
  gone.hedge.fire()
  t.equal(gone.connections[1].sent.length, 0, 'the client has gone')

  const broke = setup(modern([]), { budgetPercent: 0, budgetMinRetries: 0 })
  broke.hedge.dispatch(broke.connections[0] as unknown as Dispatcher)
  broke.hedge.fire()
  t.equal(broke.connections[1].sent.length, 0, 'no budget')
  // (the timers these two set are unref'd; a real answer would clear them)
  gone.arm(0).onResponseError?.(undefined as unknown as Controller, new Error('x'))
  broke.arm(0).onResponseError?.(undefined as unknown as Controller, new Error('x'))
})
