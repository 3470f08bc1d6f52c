import http from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyUpstream, { type FastifyUpstreamOptions } from '../lib/index'

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

export async function startUpstream (name: string, handler: UpstreamHandler = defaultHandler, port = 0): Promise<Upstream> {
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
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  upstream.server = server
  upstream.port = (server.address() as AddressInfo).port
  upstream.url = `http://127.0.0.1:${upstream.port}`
  upstream.close = () => new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  })
  return upstream
}

export async function startUpstreams (count: number, handler?: UpstreamHandler): Promise<Upstream[]> {
  const list: Upstream[] = []
  for (let i = 0; i < count; i++) list.push(await startUpstream(`u${i}`, handler))
  return list
}

/** A Fastify app with the plugin registered, listening on loopback. */
export async function startGateway (options: FastifyUpstreamOptions, setup?: (app: FastifyInstance) => void): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify()
  await app.register(fastifyUpstream, options)
  setup?.(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}` }
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
