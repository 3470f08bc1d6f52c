import http from 'node:http'
import net from 'node:net'
import { Writable } from 'node:stream'
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import { posix } from 'node:path'
import { performance } from 'node:perf_hooks'
import { Agent, request } from 'undici'
import fastifyUpstream, { type FastifyUpstreamOptions, type TargetState } from '../lib/index'

/** A real HTTP server on loopback that answers with its own name. */
export interface Upstream {
  name: string
  url: string
  port: number
  server: http.Server
  /** requests this server received */
  hits: number
  /** the last request's method, url and headers */
  last: { method: string, url: string, headers: http.IncomingHttpHeaders, body: string } | undefined
  close: () => Promise<void>
}

export type UpstreamHandler = (req: http.IncomingMessage, res: http.ServerResponse, body: string, upstream: Upstream) => void

function defaultHandler (req: http.IncomingMessage, res: http.ServerResponse, body: string, upstream: Upstream): void {
  res.setHeader('content-type', 'application/json')
  res.setHeader('x-upstream', upstream.name)
  res.end(JSON.stringify({ upstream: upstream.name, method: req.method, url: req.url, body }))
}

/**
 * What the helpers need of tap's test object: somewhere to register cleanup. tap runs a
 * test's teardowns last-registered first, each awaited, so a gateway started after its
 * upstreams closes before them (its close waits for requests still in flight).
 */
export interface Teardown { teardown: (fn: () => unknown) => void }

/** Starts an upstream that `t` closes when the test ends (closing it sooner is fine). */
export async function startUpstream (t: Teardown, name: string, handler?: UpstreamHandler, port?: number, host?: string): Promise<Upstream> {
  const upstream = await listenUpstream(name, handler, port, host)
  t.teardown(upstream.close)
  return upstream
}

async function listenUpstream (name: string, handler: UpstreamHandler = defaultHandler, port = 0, host = '127.0.0.1'): Promise<Upstream> {
  const upstream = { name, hits: 0, last: undefined } as unknown as Upstream
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      upstream.hits++
      const body = Buffer.concat(chunks).toString()
      upstream.last = { method: req.method as string, url: req.url as string, headers: req.headers, body }
      handler(req, res, body, upstream)
    })
  })
  await new Promise<void>((resolve) => server.listen(port, host, resolve))
  upstream.server = server
  upstream.port = (server.address() as AddressInfo).port
  upstream.url = `http://${host}:${upstream.port}`
  // once: tests close an upstream mid-test (a target going down) and the teardown closes it again
  let closing: Promise<void> | undefined
  upstream.close = () => (closing ??= new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))
  return upstream
}

/** Starts upstreams `u0`, `u1`... that `t` closes when the test ends. */
export async function startUpstreams (t: Teardown, count: number, handler?: UpstreamHandler): Promise<Upstream[]> {
  const list: Upstream[] = []
  for (let i = 0; i < count; i++) list.push(await startUpstream(t, `u${i}`, handler))
  return list
}

/** A Fastify app with the plugin registered, listening on loopback; `t` closes it when the test ends. */
export async function startGateway (t: Teardown, options: FastifyUpstreamOptions, setup?: (app: FastifyInstance) => void): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify()
  // registered before anything can fail, so a gateway that never got to listen is closed too
  t.teardown(() => app.close())
  await app.register(fastifyUpstream, options)
  setup?.(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}` }
}

/**
 * Listens on loopback and closes `app` when the test ends: for the apps a test builds
 * itself (Fastify options, scopes, hooks before the plugin). Resolves with its URL.
 */
export async function listen (t: Teardown, app: FastifyInstance): Promise<string> {
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
}

/** Sends `total` GET requests with `concurrency` clients; returns the x-upstream header counts. */
export async function load (url: string, total: number, concurrency: number, init?: RequestInit): Promise<Record<string, number>> {
  const counts: Record<string, number> = {}
  let sent = 0
  async function client (): Promise<void> {
    while (sent < total) {
      sent++
      const res = await fetch(url, init)
      const name = res.headers.get('x-upstream') ?? `status-${res.status}`
      counts[name] = (counts[name] ?? 0) + 1
      await res.arrayBuffer()
    }
  }
  await Promise.all(Array.from({ length: concurrency }, client))
  return counts
}

/** What the default upstream handler answers. */
export interface Echo { upstream: string, method: string, url: string, body: string }

export async function echo (res: Response | Promise<Response>): Promise<Echo> {
  return await (await res).json() as Echo
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `check` every few ms until it holds; fails the test with `what` after `timeout` ms. */
export async function until (what: string, check: () => boolean, timeout = 5000): Promise<void> {
  const deadline = Date.now() + timeout
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`)
    await sleep(5)
  }
}

/** Like `until`, but answers whether `check` came to hold in time instead of failing. */
export async function within (check: () => boolean, timeout = 5000): Promise<boolean> {
  const deadline = Date.now() + timeout
  while (!check()) {
    if (Date.now() > deadline) return false
    await sleep(5)
  }
  return true
}

/** A URL where nothing listens (a server was there and is closed): connections are refused. */
export async function closedPort (name = 'gone'): Promise<string> {
  const gone = await listenUpstream(name)
  await gone.close()
  return gone.url
}

/**
 * Sends `total` GET requests from `concurrency` clients, each a keep-alive connection of
 * its own; returns how many each upstream answered (by `x-upstream`). Uses undici's
 * `request`, which costs about half the CPU of `fetch`: client, gateway and upstreams
 * share one event loop here, and the less time the client takes, the less queueing
 * delay the gateway mistakes for upstream latency on a busy machine. Pushes each
 * request's time (ms, to the end of its body) onto `latencies` when given.
 */
export async function drive (url: string, total: number, concurrency: number, latencies?: number[]): Promise<Record<string, number>> {
  const agent = new Agent({ connections: concurrency })
  const counts: Record<string, number> = {}
  let sent = 0
  async function client (): Promise<void> {
    while (sent < total) {
      sent++
      const start = performance.now()
      const res = await request(url, { dispatcher: agent })
      const name = String(res.headers['x-upstream'] ?? `status-${res.statusCode}`)
      counts[name] = (counts[name] ?? 0) + 1
      await res.body.dump()
      latencies?.push(performance.now() - start)
    }
  }
  try {
    await Promise.all(Array.from({ length: concurrency }, client))
  } finally {
    await agent.close()
  }
  return counts
}

/** Answers like the helpers' default upstream, after `delay` ms. */
export function delayed (delay: number): UpstreamHandler {
  return (_req: http.IncomingMessage, res: http.ServerResponse, _body: string, upstream: Upstream): void => {
    setTimeout(() => {
      res.setHeader('x-upstream', upstream.name)
      res.end(upstream.name)
    }, delay)
  }
}

/** A state event as the health tests record it. */
export interface StateEvent { url: string, from: TargetState, to: TargetState | 'removed', reason: string, at: number }

export function recorder (): { events: StateEvent[], hook: FastifyUpstreamOptions['onTargetStateChange'] } {
  const events: StateEvent[] = []
  return {
    events,
    hook: (event) => { events.push({ url: event.target.url, from: event.from, to: event.to, reason: event.reason, at: performance.now() }) }
  }
}

/** Sends a GET as raw bytes (no client-side normalisation of the path); resolves with the status line. */
export async function rawRequest (url: string, path: string): Promise<string> {
  const { port } = new URL(url)
  return await new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), '127.0.0.1', () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
    })
    let data = ''
    socket.setTimeout(5000, () => socket.destroy(new Error('timeout')))
    socket.on('data', (chunk) => { data += chunk.toString() })
    socket.on('end', () => resolve(data.split('\r\n')[0]))
    socket.on('error', reject)
  })
}

/**
 * Sends one request as raw bytes (the target exactly as given, no client-side
 * normalisation) with extra header lines; resolves with the status code and body.
 */
export async function rawExchange (url: string, target: string, headers: Record<string, string> = {}, method = 'GET'): Promise<{ status: number, body: string }> {
  const { port } = new URL(url)
  const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join('')
  return await new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), '127.0.0.1', () => {
      socket.write(`${method} ${target} HTTP/1.1\r\nHost: x\r\n${lines}Connection: close\r\n\r\n`)
    })
    const chunks: Buffer[] = []
    socket.setTimeout(5000, () => socket.destroy(new Error(`timeout: ${target}`)))
    socket.on('data', (chunk: Buffer) => chunks.push(chunk))
    socket.on('end', () => {
      const text = Buffer.concat(chunks).toString('latin1')
      const split = text.indexOf('\r\n\r\n')
      const head = text.slice(0, split)
      let body = text.slice(split + 4)
      // a chunked body: join its chunks
      if (/\r\ntransfer-encoding: chunked/i.test(head)) {
        let joined = ''
        let at = 0
        for (;;) {
          const eol = body.indexOf('\r\n', at)
          const size = parseInt(body.slice(at, eol), 16)
          if (!(size > 0)) break
          joined += body.slice(eol + 2, eol + 2 + size)
          at = eol + 2 + size + 2
        }
        body = joined
      }
      resolve({ status: Number(head.split(' ')[1]), body })
    })
    socket.on('error', reject)
  })
}

/**
 * How lenient targets may read a path: as sent, then decoded again and again (six times),
 * each also in NFKC, with a backslash as `/`, `;parameters` dropped, runs of `/` merged and dot
 * segments resolved. A path is safe below a prefix when every reading stays under it.
 */
export function readings (path: string): string[] {
  const out: string[] = []
  let text = path
  for (let round = 0; round <= 6; round++) {
    for (const form of [text, text.normalize('NFKC')]) {
      out.push(posix.normalize(form.replace(/\\/g, '/').replace(/;[^/]*/g, '').split(/[?#]/)[0]))
    }
    text = text.replace(/(?:%[0-9a-fA-F]{2})+/g, (escapes) => Buffer.from(escapes.replace(/%/g, ''), 'hex').toString('utf8'))
  }
  return out
}

/** The error registering the plugin with `options` fails with (the test fails when it does not). */
export async function registerError (options: unknown): Promise<Error & { code?: string }> {
  const app = Fastify()
  try {
    await app.register(fastifyUpstream, options as FastifyUpstreamOptions)
    await app.ready()
  } catch (error) {
    return error as Error & { code?: string }
  }
  await app.close()
  throw new Error('register did not throw')
}

/** The process's active resources (what keeps it alive), sorted. */
export function resources (): string[] {
  return process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap' && r !== 'FSReqCallback').sort()
}

/** The process's active resources once handles closed by earlier tests are gone (two equal samples 100 ms apart). */
export async function settledResources (): Promise<string[]> {
  let last = resources()
  for (let i = 0; i < 20; i++) {
    await sleep(100)
    const now = resources()
    if (now.join() === last.join()) return now
    last = now
  }
  return last
}

/** One line of a Fastify (pino) log. */
export interface LogLine { level: number, msg: string, pool?: string }

/** A stream for `Fastify({ logger: { stream } })` that keeps every log line, parsed. */
export function logCapture (): { lines: LogLine[], stream: Writable } {
  const lines: LogLine[] = []
  const stream = new Writable({ write (chunk, _encoding, done) { lines.push(JSON.parse(chunk.toString())); done() } })
  return { lines, stream }
}
