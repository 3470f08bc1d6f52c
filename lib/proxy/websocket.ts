import { STATUS_CODES, ServerResponse, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { performance } from 'node:perf_hooks'
import type { FastifyInstance, FastifyReply } from 'fastify'
import { countFailure } from '../health/outlier-detector'
import type { Pool } from '../upstream/pool'
import type { OpenStream, Target } from '../upstream/target'
import { BadPathError } from '../errors'
import { unavailable } from './forwarder'
import { poolProxy } from './forwarding'
import { isSafePath, originForm } from './paths'
import { upstreamError, type MappedError } from './upstream-error'

/**
 * WebSocket (and any other Upgrade) through a pool, for the mounts with `websocket: true`.
 * An Upgrade request goes through Fastify's router like any request, so the mount's hooks
 * run first (an `onRequest` that answers 401 refuses the upgrade, and nothing reaches a
 * target); the mount's handler then hands it here. The target is picked by the pool like
 * any request's (balancer, sticky cookie, health, connection limits), connected with the
 * pool's connector (TLS settings, name lookup; always HTTP/1.1, on a connection of its
 * own, also in a pool with `http2`), and sent the handshake with the pool's
 * header policy applied; its answer goes back as it is, and after a 101 the two sockets
 * are piped both ways (backpressure, frames, pings and close frames untouched). An open
 * tunnel counts as in flight on its target, so least-request, `maxConnections` and drains
 * see it; the pool closes it when its target is removed (after `drainTimeout` with
 * `drain`) or the pool closes.
 */

/** What the upgrade listener leaves on the raw request for the mount's handler. */
export const kUpgrade = Symbol('fastify-upstream.upgrade')
export interface UpgradeRequest extends IncomingMessage { [kUpgrade]?: { socket: Duplex, head: Buffer } }

/**
 * Listens for Upgrade requests on the server and routes those under `prefixes` (the
 * websocket mounts) through Fastify; others are left to whoever else listens (a WebSocket
 * plugin of the app's), or, with nobody else, routed too: a handler may `reply.forward`
 * them (see forwardUpgrade), and any other answer ends the connection.
 */
export function listenForUpgrades (fastify: FastifyInstance, prefixes: string[], closeTunnels: () => void): void {
  const server = fastify.server
  const onUpgrade = (req: UpgradeRequest, socket: Duplex, head: Buffer): void => {
    const path = (req.url ?? '/').split('?')[0]
    // a prefix with :params matches what the router says: every upgrade is routed then
    const ours = prefixes.some((prefix) => prefix.includes(':') || prefix === '/' || path === prefix || path.startsWith(prefix + '/'))
    if (!ours && server.listenerCount('upgrade') > 1) return
    req[kUpgrade] = { socket, head }
    socket.on('error', destroyOnError)
    const res = new ServerResponse(req)
    res.shouldKeepAlive = false
    res.assignSocket(socket as never)
    // an answer from Fastify (a hook's 401, a 404) ends the connection
    res.on('finish', () => { if (!isTunnel(socket)) socket.end() })
    fastify.routing(req, res)
  }
  server.on('upgrade', onUpgrade)
  // before the server closes: it waits for every connection, the tunnels' among them
  fastify.addHook('preClose', (done) => {
    server.removeListener('upgrade', onUpgrade)
    closeTunnels()
    done()
  })
}

const kTunnel = Symbol('fastify-upstream.tunnel')
type Marked = Duplex & { [kTunnel]?: true }
function isTunnel (socket: Duplex): boolean {
  return (socket as Marked)[kTunnel] === true
}

function destroyOnError (this: Duplex): void {
  this.destroy()
}

/** The plugin's error for a connection that failed, answered on the client's socket (the reply is hijacked). */
function answerRaw (socket: Duplex, error: MappedError): void {
  const status = error.statusCode
  const reason = STATUS_CODES[status] ?? ''
  const body = JSON.stringify({ statusCode: status, code: error.code, error: reason, message: error.message })
  socket.end(`HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`)
}

/** The handshake request sent to the target: the client's, through the pool's header policy. */
function handshake (req: IncomingMessage, path: string, headers: OutgoingHttpHeaders): string {
  let head = `${req.method ?? 'GET'} ${path} HTTP/1.1\r\n`
  for (const name in headers) {
    const value = headers[name]
    if (value === undefined) continue
    for (const item of Array.isArray(value) ? value : [value]) head += `${name}: ${String(item)}\r\n`
  }
  return head + '\r\n'
}

/** A WebSocket close frame, 1001 "going away", as a server sends it (unmasked). */
const GOING_AWAY = Buffer.from([0x88, 0x02, 0x03, 0xe9])

/** An open tunnel: counted in flight on its target until both sockets are closed. */
class Tunnel implements OpenStream {
  readonly client: Duplex
  upstream: Duplex | undefined = undefined
  private readonly target: Target
  private done = false

  constructor (client: Duplex, target: Target) {
    this.client = client
    this.target = target
    target.start()
    target.openStreams.add(this)
  }

  /** the gateway is closing it (not either side) */
  closing = false

  close (): void {
    this.closing = true
    this.upstream?.unpipe(this.client)
    this.upstream?.destroy()
    if (isTunnel(this.client) && this.client.writable) {
      // 1001 going away, to the client (unmasked, as a server sends it), then the socket ends
      const client = this.client
      client.end(GOING_AWAY)
      const timer = setTimeout(() => client.destroy(), 1000)
      timer.unref()
      client.once('close', () => clearTimeout(timer))
    } else {
      this.client.destroy()
    }
    this.finish()
  }

  finish (): void {
    if (this.done) return
    this.done = true
    this.target.openStreams.delete(this)
    this.target.finish()
  }
}

/**
 * Opens the tunnel of an Upgrade request to a target of `pool` at `path` (with its
 * query). With no target to take it, the answer is a forward's (503, Retry-After).
 */
export function tunnel (reply: FastifyReply, pool: Pool, path: string): void {
  const upgrade = (reply.request.raw as UpgradeRequest)[kUpgrade]
  if (upgrade === undefined) return
  const target = pool.pick(reply.request)
  if (target === undefined) {
    unavailable(reply, pool)
    return
  }
  reply.hijack()
  connect(reply, pool, path, upgrade, target, [])
}

/**
 * One attempt at `target`; a refused connection or a connect timeout tries another
 * target not tried yet (nothing was sent), up to the pool's retry attempts.
 */
function connect (reply: FastifyReply, pool: Pool, path: string, upgrade: { socket: Duplex, head: Buffer }, target: Target, tried: Target[]): void {
  const req = reply.request.raw
  const client = upgrade.socket
  const url = new URL(target.origin)
  // Host is the target's, as reply-from sends it, unless the host policy says otherwise
  const headers = poolProxy(pool).headers.request(reply.request, { ...req.headers, host: url.host }) as OutgoingHttpHeaders
  // hop-by-hop headers the policy strips are the handshake's own: put back the client's
  headers.connection = 'Upgrade'
  headers.upgrade = req.headers.upgrade
  const open = new Tunnel(client, target)
  // HTTP/1.1 whatever the pool's `http2`: the handshake and the frames are written on the socket
  pool.connections.http1Connector({
    hostname: url.hostname.replace(/^\[|\]$/g, ''),
    host: url.host,
    protocol: url.protocol,
    port: url.port !== '' ? url.port : (url.protocol === 'https:' ? '443' : '80'),
    servername: target.servername
  } as never, (error, socket) => {
    if (error !== null || socket == null) {
      open.finish()
      countFailure(target, pool.detector, performance.now())
      if (client.destroyed) return
      tried.push(target)
      // nothing reached the target: another may take it
      const next = tried.length <= pool.config.retry.attempts ? pool.pick(reply.request, tried) : undefined
      if (next !== undefined) {
        connect(reply, pool, path, upgrade, next, tried)
        return
      }
      answerRaw(client, upstreamError(error ?? new Error('no socket')))
      return
    }
    open.upstream = socket
    ;(client as Marked)[kTunnel] = true
    // frames go out as they come (no Nagle delay on small messages)
    ;(client as Partial<Socket>).setNoDelay?.(true)
    socket.on('error', destroyOnError)
    client.removeListener('error', destroyOnError)
    client.on('error', destroyOnError)
    const closed = (): void => {
      // either side ended: so does the other (unless the gateway is closing it, see close)
      if (!open.closing) {
        client.destroy()
        socket.destroy()
      }
      open.finish()
    }
    client.once('close', closed)
    socket.once('close', closed)
    // silence both ways longer than the pool's idle timeout ends the tunnel (as NGINX's
    // proxy_read_timeout does): 1001 to the client; pings count as traffic
    const idle = pool.config.timeout.idle
    const onIdle = (): void => { open.close() }
    ;(client as Partial<Socket>).setTimeout?.(idle, onIdle)
    socket.setTimeout(idle, onIdle)
    // the mount's own root with no rewritePrefix and no base path: `/`, as reply-from sends it
    const sent = target.basePath + path
    socket.write(handshake(req, sent === '' || sent.charCodeAt(0) === 63 ? '/' + sent : sent, headers))
    if (upgrade.head.length > 0) socket.write(upgrade.head)
    // the target's answer, 101 or not, goes back as it is; after a 101, frames both ways
    socket.pipe(client)
    client.pipe(socket)
  })
}

/**
 * `reply.forward` of an Upgrade request: tunnelled to a target of `pool`, at `url` (after a
 * split branch's `prefix`)
 * (path and query) or the request's own, under the same path rule as any forward.
 */
export function forwardUpgrade (reply: FastifyReply, pool: Pool, url: string | undefined, prefix = ''): FastifyReply {
  const own = url ?? originForm(reply.request.raw.url as string) ?? ''
  const path = own === '' ? '' : prefix + own
  const query = path.indexOf('?')
  if (path === '' || !isSafePath(query === -1 ? path : path.slice(0, query))) return reply.send(new BadPathError())
  tunnel(reply, pool, path)
  return reply
}
