// The WebSocket cases of @fastify/http-proxy's own suite that fit a mount (basic proxy, several mounts, hooks, path and query kept), as a compatibility check.
import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { test } from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { startGateway, type Teardown } from '../helpers'

interface Origin { url: string, connections: http.IncomingMessage[], messages: Array<[string, boolean]> }

/** An echo origin recording each handshake and each message (and whether it was binary). */
async function origin (t: Teardown): Promise<Origin> {
  const server = http.createServer()
  const wss = new WebSocketServer({ server })
  const result: Origin = { url: '', connections: [], messages: [] }
  wss.on('connection', (ws, request) => {
    result.connections.push(request)
    ws.on('message', (message, binary) => {
      result.messages.push([message.toString(), binary])
      ws.send(message, { binary })
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { for (const ws of wss.clients) ws.terminate(); wss.close(); server.closeAllConnections(); server.close(() => resolve()) }))
  result.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return result
}

async function client (t: Teardown, url: string, protocols?: string[], options?: WebSocket.ClientOptions): Promise<WebSocket> {
  const ws = new WebSocket(url, protocols, options)
  t.teardown(() => { ws.terminate() })
  await once(ws, 'open')
  return ws
}

test('basic websocket proxy: subprotocol and cookie reach the origin, text and binary echo, the app\'s close ends the socket', async (t) => {
  const up = await origin(t)
  const { app, url } = await startGateway(t, {
    upstreams: { ws: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'ws', websocket: true }]
  })
  const ws = await client(t, url.replace('http', 'ws'), ['foo-subprotocol'], { headers: { cookie: 'session=42' } })
  t.equal(ws.protocol, 'foo-subprotocol')
  t.equal(up.connections[0].headers.cookie, 'session=42')
  ws.send('hello', { binary: false })
  const [reply0, binary0] = await once(ws, 'message') as [Buffer, boolean]
  t.same([reply0.toString(), binary0], ['hello', false])
  ws.send(Buffer.from('fastify'), { binary: true })
  const [reply1, binary1] = await once(ws, 'message') as [Buffer, boolean]
  t.same([reply1.toString(), binary1], ['fastify', true])
  t.same(up.messages, [['hello', false], ['fastify', true]])
  await Promise.all([once(ws, 'close'), app.close()])
})

test('multiple websocket mounts, nested prefixes: each reaches its own pool', async (t) => {
  const names = ['/A', '/A/B', '/C/D', '/C']
  const origins = await Promise.all(names.map(async () => await origin(t)))
  const { url } = await startGateway(t, {
    upstreams: Object.fromEntries(names.map((_name, i) => [`p${i}`, { targets: [origins[i].url] }])),
    routes: names.map((name, i) => ({ prefix: name, upstream: `p${i}`, websocket: true }))
  })
  for (const [i, name] of names.entries()) {
    const ws = await client(t, url.replace('http', 'ws') + name)
    ws.send(`hello ${name}`)
    const [reply] = await once(ws, 'message') as [Buffer]
    t.equal(reply.toString(), `hello ${name}`)
    t.same(origins[i].messages, [[`hello ${name}`, false]], `${name} reached its own origin only`)
    ws.close()
  }
})

test('websocket proxy triggers the route hooks', async (t) => {
  const up = await origin(t)
  const seen: string[] = []
  const { url } = await startGateway(t, {
    upstreams: { ws: { targets: [up.url] } },
    routes: [{
      prefix: '/',
      upstream: 'ws',
      websocket: true,
      onRequest: async () => { seen.push('onRequest') },
      preValidation: async () => { seen.push('preValidation') },
      preHandler: async () => { seen.push('preHandler') }
    }]
  })
  const ws = await client(t, url.replace('http', 'ws'))
  ws.send('hi')
  await once(ws, 'message')
  t.same(seen, ['onRequest', 'preValidation', 'preHandler'])
})

test('the pathname and the query string are kept', async (t) => {
  const up = await origin(t)
  const { url } = await startGateway(t, {
    upstreams: { ws: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'ws', websocket: true }]
  })
  const ws = await client(t, url.replace('http', 'ws') + '/keep/path?q=1&x=%20y')
  ws.send('hello')
  await once(ws, 'message')
  t.equal(up.connections[0].url, '/keep/path?q=1&x=%20y')
})
