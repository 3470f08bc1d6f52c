import type http from 'node:http'
import net from 'node:net'
import type { Duplex } from 'node:stream'
import { test } from 'tap'
import { Pool, type Dispatcher } from 'undici'
import { Exchange } from '../../lib/proxy/exchange'
import { Forwarding } from '../../lib/proxy/forwarding'
import type { Pool as UpstreamPool } from '../../lib/upstream/pool'
import { Target } from '../../lib/upstream/target'
import { sleep, startGateway, startUpstream, until, type Teardown, type Upstream } from '../helpers'

// The Exchange that accounts for every request sent to a target: driven by undici through
// its controller API, passing each call on to the handler it wraps (reply-from's, which
// speaks the deprecated API under undici 7, or one that speaks the controller API).

const CONTROLLER_API = ['onRequestStart', 'onResponseStart', 'onResponseData', 'onResponseEnd', 'onResponseError', 'onRequestUpgrade'] as const
const DEPRECATED_API = ['onConnect', 'onHeaders', 'onData', 'onComplete', 'onError', 'onUpgrade', 'onBodySent']

type Methods = Record<string, (...args: unknown[]) => unknown>

/** What the tests read of the target. */
interface TargetFigures { inflight: number, failures: number, state: string, requests: number }

/** A gateway with one pool of one target (no retries) and `paths` forwarded to it. */
async function gateway (t: Teardown, up: Upstream, passive: Record<string, unknown>, paths: string[]): Promise<{ url: string, target: () => TargetFigures }> {
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [up.url], retry: { attempts: 0 }, healthCheck: { passive } } }
  }, (app) => {
    for (const path of paths) app.get(path, (_request, reply) => reply.forward('pool'))
  })
  const target = (): TargetFigures => {
    const view = app.upstreams.get('pool')?.targets[0]
    if (view === undefined) throw new Error('no target')
    return view
  }
  return { url, target }
}

/** Sends a GET as raw bytes; `onData` sees every chunk that arrives. Resolves with all bytes. */
function rawGet (url: string, path: string, onData?: (chunk: Buffer, socket: net.Socket) => void): { socket: net.Socket, done: Promise<Buffer> } {
  const { port } = new URL(url)
  const socket = net.connect(Number(port), '127.0.0.1', () => {
    socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
  })
  const chunks: Buffer[] = []
  const done = new Promise<Buffer>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => { chunks.push(chunk); onData?.(chunk, socket) })
    socket.on('end', () => resolve(Buffer.concat(chunks)))
    socket.on('close', () => resolve(Buffer.concat(chunks)))
    socket.on('error', reject)
  })
  return { socket, done }
}

test('the Exchange speaks the controller API only, and undici drives it through it', async (t) => {
  const proto = Exchange.prototype as unknown as Methods
  for (const name of CONTROLLER_API) t.type(proto[name], 'function', `it has ${name}`)
  for (const name of DEPRECATED_API) t.equal(proto[name], undefined, `it has no ${name}`)

  const calls: Record<string, number> = {}
  for (const name of CONTROLLER_API) {
    const original = proto[name]
    calls[name] = 0
    proto[name] = function (this: unknown, ...args: unknown[]) {
      calls[name]++
      return original.apply(this, args)
    }
    t.teardown(() => { proto[name] = original })
  }
  const up = await startUpstream(t, 'u0')
  const { url, target } = await gateway(t, up, {}, ['/x'])
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 200)
  t.equal(((await res.json()) as { upstream: string }).upstream, 'u0', 'the answer came through')
  await until('the exchange to end', () => target().inflight === 0)
  t.equal(calls.onRequestStart, 1, 'onRequestStart once')
  t.equal(calls.onResponseStart, 1, 'onResponseStart once')
  t.ok(calls.onResponseData >= 1, `onResponseData (${calls.onResponseData} times)`)
  t.equal(calls.onResponseEnd, 1, 'onResponseEnd once')
  t.equal(calls.onResponseError, 0, 'no error')
})

test('in-flight goes back to 0 after a success, and the success resets the failure streak', async (t) => {
  const up = await startUpstream(t, 'u0', (req, res) => {
    if (req.url === '/reset') {
      res.writeHead(200, { 'content-length': '100000' })
      res.write('x'.repeat(1000), () => { res.socket?.resetAndDestroy() })
      return
    }
    res.end('fine')
  })
  const { url, target } = await gateway(t, up, { consecutiveFailures: 2 }, ['/ok', '/reset'])
  const res = await fetch(`${url}/ok`)
  t.equal(await res.text(), 'fine')
  await until('the success to end', () => target().inflight === 0)
  t.equal(target().requests, 1)
  t.equal(target().failures, 0)

  // a reset mid-body, a success, a reset: the success in between keeps the target in
  for (const path of ['/reset', '/ok', '/reset']) {
    await fetch(`${url}${path}`).then(async (r) => { await r.arrayBuffer() }, () => {}).catch(() => {})
    await until(`${path} to end`, () => target().inflight === 0)
  }
  t.equal(target().failures, 2, 'each reset mid-body is one failure')
  t.equal(target().state, 'healthy', 'the success between them reset the streak')
})

test('in-flight goes back to 0 after a reset mid-body, counted once', async (t) => {
  const up = await startUpstream(t, 'u0', (_req, res) => {
    res.writeHead(200, { 'content-length': '100000' })
    res.write('x'.repeat(1000), () => { res.socket?.resetAndDestroy() })
  })
  const { url, target } = await gateway(t, up, { consecutiveFailures: 5 }, ['/x'])
  const outcome = await fetch(`${url}/x`).then(async (r) => { await r.arrayBuffer(); return 'complete' }, () => 'broken').catch(() => 'broken')
  t.equal(outcome, 'broken', 'the client sees the body break off')
  await until('the exchange to end', () => target().inflight === 0)
  t.equal(target().failures, 1)
})

test('in-flight goes back to 0 after the client aborts, which is no failure of the target', async (t) => {
  let closed = false
  const up = await startUpstream(t, 'u0', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    const timer = setInterval(() => res.write('tick\n'), 10)
    res.on('close', () => { clearInterval(timer); closed = true })
  })
  const { url, target } = await gateway(t, up, { consecutiveFailures: 1 }, ['/x'])
  const { done } = rawGet(url, '/x', (chunk, socket) => { if (chunk.includes('tick')) socket.destroy() })
  await done
  await until('the exchange to end', () => target().inflight === 0)
  await until('the upstream response to be dropped', () => closed)
  t.equal(target().failures, 0, 'a dropped answer is not counted against the target')
  t.equal(target().state, 'healthy')
})

test('in-flight goes back to 0 after a 103 Early Hints then a 200, counted as a success', async (t) => {
  const up = await startUpstream(t, 'u0', (req, res) => {
    if (req.url === '/fail') {
      res.statusCode = 503
      res.end('no')
      return
    }
    res.writeEarlyHints({ link: '</style.css>; rel=preload' })
    setTimeout(() => res.end('after hints'), 20)
  })
  const { url, target } = await gateway(t, up, { consecutiveFailures: 2, statusCodes: [503] }, ['/hints', '/fail'])
  await (await fetch(`${url}/fail`)).arrayBuffer()
  const res = await fetch(`${url}/hints`)
  t.equal(res.status, 200, 'the answer is the 200, not the 103')
  t.equal(await res.text(), 'after hints')
  await until('the exchange to end', () => target().inflight === 0)
  await (await fetch(`${url}/fail`)).arrayBuffer()
  await until('the second failure to end', () => target().inflight === 0)
  t.equal(target().failures, 2)
  t.equal(target().state, 'healthy', 'the 200 after the hints reset the failure streak')
})

test('in-flight goes back to 0 after a failure status, counted once and not as a success', async (t) => {
  const up = await startUpstream(t, 'u0', (_req, res) => {
    res.statusCode = 503
    res.end('x'.repeat(50_000))
  })
  const { url, target } = await gateway(t, up, { consecutiveFailures: 2, statusCodes: [503] }, ['/x'])
  const first = await fetch(`${url}/x`)
  t.equal(first.status, 503, 'the status is passed on')
  t.equal((await first.text()).length, 50_000)
  await until('the exchange to end', () => target().inflight === 0)
  t.equal(target().failures, 1, 'counted once, at headers')
  t.equal(target().state, 'healthy')
  await (await fetch(`${url}/x`)).arrayBuffer()
  await until('the second exchange to end', () => target().inflight === 0)
  t.equal(target().failures, 2)
  t.equal(target().state, 'ejected', 'the complete body of a failure status did not reset the streak')
})

const TOTAL = 128 * 1024 * 1024

/** Sends TOTAL bytes as fast as the connection takes them; `written` counts what was handed over. */
function flood (progress: { written: number, finished: boolean }): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  return (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(TOTAL) })
    const chunk = Buffer.alloc(64 * 1024, 120)
    const pump = (): void => {
      while (progress.written < TOTAL) {
        progress.written += chunk.length
        if (!res.write(chunk)) {
          res.once('drain', pump)
          return
        }
      }
      res.end(() => { progress.finished = true })
    }
    pump()
  }
}

/** Resolves once `read()` has not changed for `quiet` ms (at most `timeout` ms). */
async function settled (read: () => number, quiet = 300, timeout = 10_000): Promise<number> {
  const deadline = Date.now() + timeout
  let last = read()
  let since = Date.now()
  while (Date.now() < deadline) {
    await sleep(50)
    const now = read()
    if (now !== last) {
      last = now
      since = Date.now()
    } else if (Date.now() - since >= quiet) {
      return now
    }
  }
  throw new Error('the upstream never stopped writing')
}

test('a large body keeps backpressure: the gateway stops reading the upstream while the client does not read', async (t) => {
  const progress = { written: 0, finished: false }
  const up = await startUpstream(t, 'u0', flood(progress))
  const { url, target } = await gateway(t, up, {}, ['/big'])
  let received = 0
  let paused = false
  const { socket, done } = rawGet(url, '/big', (chunk, socket) => {
    received += chunk.length
    if (!paused) {
      paused = true
      socket.pause()
    }
  })
  const stalled = await settled(() => progress.written)
  t.comment(`the upstream handed over ${(stalled / 1048576).toFixed(1)} MiB of ${TOTAL / 1048576} MiB while the client read nothing`)
  t.ok(stalled < TOTAL / 4, 'the upstream was held back')
  t.notOk(progress.finished, 'and did not finish')
  t.equal(target().inflight, 1, 'the exchange is still under way')
  socket.resume()
  const all = await done
  const body = all.length - (all.indexOf('\r\n\r\n') + 4)
  t.equal(body, TOTAL, `the client got the whole body (${received} bytes with the head)`)
  await until('the exchange to end', () => target().inflight === 0)
  t.equal(target().failures, 0)
})

/** Records the calls a handler speaking the controller API gets. */
interface Recorded { calls: string[], status: number, headers: Dispatcher.DispatchController['rawHeaders'], body: number, error: Error | undefined }

function controllerHandler (recorded: Recorded, onData?: (controller: Dispatcher.DispatchController, chunk: Buffer) => void): Dispatcher.DispatchHandler {
  return {
    onRequestStart () { recorded.calls.push('start') },
    onResponseStart (_controller, statusCode, headers) {
      recorded.calls.push(`headers ${statusCode}`)
      recorded.status = statusCode
      recorded.headers = headers
    },
    onResponseData (controller, chunk) {
      recorded.body += chunk.length
      onData?.(controller, chunk)
    },
    onResponseEnd () { recorded.calls.push('end') },
    onResponseError (_controller, error) {
      recorded.calls.push('error')
      recorded.error = error
    },
    onRequestUpgrade (_controller, statusCode, headers, socket) {
      recorded.calls.push(`upgrade ${statusCode}`)
      recorded.headers = headers
      socket.destroy()
    }
  }
}

function newTarget (url: string): Target {
  return new Target({ url, weight: 1, backup: false })
}

/** An attempt of a request routed to a pool without passive checks: the exchange puts it in `target`'s in-flight count. */
function attempt (handler: Dispatcher.DispatchHandler, target: Target): Exchange {
  const forwarding = new Forwarding({ name: 'test', detector: undefined } as unknown as UpstreamPool, { headers: undefined as never, retriesInFlight: 0, mirrors: { inflight: 0, sent: 0, dropped: 0, failed: 0 }, hedges: { sent: 0, won: 0 } }, null)
  forwarding.target = target
  return new Exchange(handler, forwarding)
}

test('a handler speaking the controller API gets every call as it came, pause and resume included', async (t) => {
  const progress = { written: 0, finished: false }
  const up = await startUpstream(t, 'u0', flood(progress))
  const pool = new Pool(up.url)
  t.teardown(() => pool.close())
  const target = newTarget(up.url)
  const recorded: Recorded = { calls: [], status: 0, headers: null, body: 0, error: undefined }
  let controller: Dispatcher.DispatchController | undefined
  const ended = new Promise<void>((resolve) => {
    const handler = controllerHandler(recorded, (c) => { if (controller === undefined) { controller = c; c.pause() } })
    const onResponseEnd = handler.onResponseEnd as NonNullable<Dispatcher.DispatchHandler['onResponseEnd']>
    handler.onResponseEnd = (c, trailers) => { onResponseEnd(c, trailers); resolve() }
    pool.dispatch({ origin: up.url, path: '/big', method: 'GET' }, attempt(handler, target))
  })
  await until('the first chunk', () => controller !== undefined)
  const stalled = await settled(() => progress.written)
  t.ok(stalled < TOTAL / 4, `pausing the controller held the upstream back (${(stalled / 1048576).toFixed(1)} MiB)`)
  t.equal(target.inflight, 1)
  controller?.resume()
  await ended
  t.same(recorded.calls, ['start', 'headers 200', 'end'])
  t.equal(recorded.body, TOTAL)
  t.equal((recorded.headers as Record<string, string>)['content-length'], String(TOTAL), 'the parsed headers are passed on')
  t.equal(target.inflight, 0)
})

test('an upgrade ends the exchange, for either kind of handler', async (t) => {
  const up = await startUpstream(t, 'u0')
  up.server.on('upgrade', (_req: http.IncomingMessage, socket: Duplex) => {
    socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-test\r\nConnection: Upgrade\r\nX-Seen: yes\r\n\r\n')
  })
  const pool = new Pool(up.url)
  t.teardown(() => pool.close())

  const modern = newTarget(up.url)
  const recorded: Recorded = { calls: [], status: 0, headers: null, body: 0, error: undefined }
  pool.dispatch({ origin: up.url, path: '/', method: 'GET', upgrade: 'x-test' }, attempt(controllerHandler(recorded), modern))
  await until('the upgrade', () => recorded.calls.includes('upgrade 101'))
  t.equal((recorded.headers as Record<string, string>)['x-seen'], 'yes')
  t.equal(modern.inflight, 0, 'a handler with the controller API: the exchange is over')

  const legacy = newTarget(up.url)
  let raw: Array<Buffer | string> = []
  const handler = {
    onConnect () {},
    onHeaders () { return true },
    onData () { return true },
    onComplete () {},
    onError () {},
    onUpgrade (_statusCode: number, headers: Array<Buffer | string>, socket: Duplex) {
      raw = headers
      socket.destroy()
    }
  }
  pool.dispatch({ origin: up.url, path: '/', method: 'GET', upgrade: 'x-test' }, attempt(handler as Dispatcher.DispatchHandler, legacy))
  await until('the upgrade', () => raw.length > 0)
  t.ok(raw.map(String).includes('X-Seen'), 'a deprecated handler gets the raw headers')
  t.equal(legacy.inflight, 0, 'a deprecated handler: the exchange is over')
})

/** A controller as undici hands it out, recording what is asked of it. */
function fakeController (log: string[], raw: Dispatcher.DispatchController['rawHeaders'] = undefined): Dispatcher.DispatchController {
  let paused = false
  return {
    get aborted () { return false },
    get paused () { return paused },
    get reason () { return null },
    rawHeaders: raw,
    abort (reason) { log.push(`abort ${reason?.message}`) },
    pause () { paused = true; log.push('pause') },
    resume () { paused = false; log.push('resume') }
  }
}

test('a deprecated handler gets each call translated: abort, resume, false to pause, raw headers', (t) => {
  const target = newTarget('http://127.0.0.1:1')
  const log: string[] = []
  let abort: ((reason?: Error) => void) | undefined
  let resume: (() => void) | undefined
  let heard: unknown[] = []
  let trailers: unknown
  const handler = {
    onConnect (a: (reason?: Error) => void) { abort = a },
    onHeaders (statusCode: number, headers: Buffer[], r: () => void, statusText: string) {
      resume = r
      heard = [statusCode, headers.map(String), statusText]
      return statusCode >= 200
    },
    onData (chunk: Buffer) { return chunk.length < 3 },
    onComplete (t: unknown) { trailers = t },
    onError (error: Error) { log.push(`error ${error.message}`) }
  }
  const exchange = attempt(handler as Dispatcher.DispatchHandler, target)
  const controller = fakeController(log)
  exchange.onRequestStart(controller, {})
  abort?.(new Error('stop'))
  t.same(log, ['abort stop'], 'abort works detached, as the deprecated handlers call it')

  log.length = 0
  exchange.onResponseStart(controller, 103, { link: '<a>' }, 'Early Hints')
  t.same(log, ['pause'], 'false from onHeaders pauses')
  // no raw list on this controller: rebuilt from the parsed headers, one pair per value
  exchange.onResponseStart(controller, 200, { a: ['1', '2'], b: '3' }, 'OK')
  t.same(heard, [200, ['a', '1', 'a', '2', 'b', '3'], 'OK'])
  resume?.()
  t.same(log, ['pause', 'resume'], 'resume works detached')

  log.length = 0
  exchange.onResponseData(controller, Buffer.from('ab'))
  t.same(log, [], 'true from onData reads on')
  exchange.onResponseData(controller, Buffer.from('abc'))
  t.same(log, ['pause'], 'false from onData pauses')

  t.equal(target.inflight, 1)
  exchange.onResponseEnd(controller, { 'x-t': 'v' })
  t.same((trailers as Buffer[]).map(String), ['x-t', 'v'], 'trailers as a raw list')
  t.equal(target.inflight, 0, 'the end takes the request out of the in-flight count')
  // undici reports an error too when the handler throws in onComplete
  exchange.onResponseError(controller, new Error('late'))
  t.equal(target.inflight, 0, 'a second report of the end is ignored')
  t.equal(target.failures, 0)
  t.same(log.slice(-1), ['error late'], 'and still passed on')
  t.end()
})

test('the raw headers undici keeps on the controller are passed on as they are', (t) => {
  const target = newTarget('http://127.0.0.1:1')
  const raw = [Buffer.from('X-Case'), Buffer.from('Kept')]
  let heard: unknown
  const handler = { onConnect () {}, onHeaders (_s: number, headers: Buffer[]) { heard = headers; return true }, onError () {} }
  const exchange = attempt(handler as Dispatcher.DispatchHandler, target)
  exchange.onResponseStart(fakeController([], raw), 200, { 'x-case': 'Kept' }, 'OK')
  t.equal(heard, raw, 'the same list, names in their case')
  t.end()
})
