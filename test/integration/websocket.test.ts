// WebSocket through a mount with websocket: true, against real ws servers and clients on loopback.
import { once } from 'node:events'
import http from 'node:http'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import { test } from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { closedPort, startGateway, until, type Teardown } from '../helpers'
import { ca, skip, upstreamCert } from '../private-ca'

interface Echo { url: string, port: number, name: string, server: http.Server, sockets: Set<WebSocket>, handshakes: http.IncomingMessage[] }

/** A WebSocket target that echoes every message, prefixed with nothing; `name` is sent on open. */
async function echoTarget (t: Teardown, name: string, options: ConstructorParameters<typeof WebSocketServer>[0] = {}): Promise<Echo> {
  const server = http.createServer((_req, res) => { res.setHeader('set-cookie', 'x=1'); res.end(name) })
  const wss = new WebSocketServer({ server, ...options })
  const sockets = new Set<WebSocket>()
  const handshakes: http.IncomingMessage[] = []
  wss.on('connection', (ws, req) => {
    sockets.add(ws)
    handshakes.push(req)
    ws.on('close', () => sockets.delete(ws))
    ws.send(`hello from ${name}`)
    ws.on('message', (data, binary) => { ws.send(data, { binary }) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const ws of sockets) ws.terminate()
    wss.close()
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  const port = (server.address() as AddressInfo).port
  return { url: `http://127.0.0.1:${port}`, port, name, server, sockets, handshakes }
}

/** Opens a client to `url`; resolves with it and its first message (the target's hello). */
async function open (t: Teardown, url: string, protocols?: string[], options: WebSocket.ClientOptions = {}): Promise<{ ws: WebSocket, hello: string }> {
  const ws = new WebSocket(url, protocols, options)
  t.teardown(() => { ws.terminate() })
  const [hello] = await once(ws, 'message') as [Buffer]
  return { ws, hello: hello.toString() }
}

function wsUrl (url: string, path: string): string {
  return url.replace(/^http/, 'ws') + path
}

test('messages both ways: text, binary, large and fragmented; the path is rewritten and the query kept', async (t) => {
  const target = await echoTarget(t, 'a')
  const { url } = await startGateway(t, {
    upstreams: { chat: { targets: [target.url] } },
    routes: [{ prefix: '/ws', upstream: 'chat', rewritePrefix: '/socket', websocket: true }]
  })
  const { ws, hello } = await open(t, wsUrl(url, '/ws/room?x=1'))
  t.equal(hello, 'hello from a')
  t.equal(target.handshakes[0].url, '/socket/room?x=1', 'the handshake reached the rewritten path with its query')
  t.equal(target.handshakes[0].headers['x-forwarded-for'], '127.0.0.1', 'the header policy applied to the handshake')
  t.equal(target.handshakes[0].headers.host, new URL(target.url).host, 'Host is the target\'s')
  ws.send('text')
  t.equal(String((await once(ws, 'message'))[0]), 'text')
  ws.send(Buffer.from([0, 1, 2, 255]))
  const [binary, isBinary] = await once(ws, 'message') as [Buffer, boolean]
  t.same([...binary], [0, 1, 2, 255])
  t.ok(isBinary)
  const large = Buffer.alloc(3 * 1024 * 1024, 7)
  ws.send(large, { fin: false })
  ws.send(large, { fin: true })
  const [echoed] = await once(ws, 'message') as [Buffer]
  t.equal(echoed.length, 2 * large.length, 'a large fragmented message arrives whole')
  ws.ping('are you there')
  const [pong] = await once(ws, 'pong') as [Buffer]
  t.equal(pong.toString(), 'are you there', 'a ping went through and its pong came back')
  ws.close(4000, 'done')
  const [code] = await once(ws, 'close') as [number]
  t.equal(code, 4000, 'the close code went to the target and back')
  // the plain HTTP requests of the mount still proxy
  t.equal(await (await fetch(`${url}/ws/plain`)).text(), 'a')
})

test('subprotocols and permessage-deflate are negotiated end to end', async (t) => {
  const target = await echoTarget(t, 'a', { perMessageDeflate: true, handleProtocols: (protocols) => protocols.has('v2') ? 'v2' : false })
  const { url } = await startGateway(t, {
    upstreams: { chat: { targets: [target.url] } },
    routes: [{ prefix: '/ws', upstream: 'chat', websocket: true }]
  })
  const { ws } = await open(t, wsUrl(url, '/ws'), ['v1', 'v2'], { perMessageDeflate: true })
  t.equal(ws.protocol, 'v2')
  t.match(ws.extensions, /permessage-deflate/)
  ws.send('x'.repeat(10_000))
  t.equal(String((await once(ws, 'message'))[0]).length, 10_000)
})

test("the mount's hooks run first: a refused upgrade gets their answer and reaches no target", async (t) => {
  const target = await echoTarget(t, 'a')
  const { url } = await startGateway(t, {
    upstreams: { chat: { targets: [target.url] } },
    routes: [{
      prefix: '/ws',
      upstream: 'chat',
      websocket: true,
      onRequest: async (request, reply) => { if (request.headers.authorization !== 'Bearer ok') await reply.code(401).send({ error: 'no' }) }
    }]
  })
  const refused = new WebSocket(wsUrl(url, '/ws'))
  refused.on('error', () => {})
  const [, res] = await once(refused, 'unexpected-response') as [unknown, http.IncomingMessage]
  t.equal(res.statusCode, 401)
  refused.terminate()
  t.equal(target.handshakes.length, 0, 'nothing reached the target')
  const { hello } = await open(t, wsUrl(url, '/ws'), undefined, { headers: { authorization: 'Bearer ok' } })
  t.equal(hello, 'hello from a')
})

test('a refused connection goes to another target; a path that climbs is refused', async (t) => {
  const dead = await closedPort()
  const target = await echoTarget(t, 'alive')
  const { url } = await startGateway(t, {
    upstreams: { chat: { targets: [dead, target.url], balancer: 'round-robin' } },
    routes: [{ prefix: '/ws', upstream: 'chat', websocket: true }]
  })
  for (let i = 0; i < 4; i++) t.equal((await open(t, wsUrl(url, '/ws'))).hello, 'hello from alive')
  const climbing = new WebSocket(wsUrl(url, '/ws/a%2f..%2fadmin'))
  climbing.on('error', () => {})
  const [, res] = await once(climbing, 'unexpected-response') as [unknown, http.IncomingMessage]
  t.equal(res.statusCode, 400)
  climbing.terminate()
})

test('a target that closes, a client that vanishes: the other side ends too, and the in-flight count goes back', async (t) => {
  const target = await echoTarget(t, 'a')
  const { app, url } = await startGateway(t, {
    upstreams: { chat: { targets: [target.url] } },
    routes: [{ prefix: '/ws', upstream: 'chat', websocket: true }],
    statusRoute: '/s'
  })
  const view = (): number => app.upstreams.get('chat')?.targets[0].inflight ?? -1
  const first = await open(t, wsUrl(url, '/ws'))
  t.equal(view(), 1, 'an open socket counts in flight')
  t.equal(app.upstreams.status().pools.chat.targets[0].websockets, 1, 'and in the status')
  t.match(await (await fetch(`${url}/s/metrics`)).text(), /fastify_upstream_websockets\{pool="chat",target="[^"]+"\} 1/, 'and the metrics')
  for (const ws of target.sockets) ws.close(4001, 'bye')
  const [code, reason] = await once(first.ws, 'close') as [number, Buffer]
  t.equal(code, 4001)
  t.equal(reason.toString(), 'bye')
  await until('in flight back to 0', () => view() === 0)
  const second = await open(t, wsUrl(url, '/ws'))
  await until('the target sees it', () => target.sockets.size === 1)
  second.ws.terminate()
  await until('the target socket closed too', () => target.sockets.size === 0)
  await until('in flight back to 0 again', () => view() === 0)
})

test('sockets are balanced over the targets, and a sticky cookie set over HTTP holds for the upgrade', async (t) => {
  const targets = [await echoTarget(t, 'a'), await echoTarget(t, 'b'), await echoTarget(t, 'c')]
  const { app, url } = await startGateway(t, {
    upstreams: { chat: { targets: targets.map((x) => x.url), balancer: 'round-robin', sticky: { cookie: { name: 'route' } } } },
    routes: [{ prefix: '/ws', upstream: 'chat', websocket: true }]
  })
  const counts: Record<string, number> = {}
  for (let i = 0; i < 12; i++) {
    const { hello } = await open(t, wsUrl(url, '/ws'))
    counts[hello] = (counts[hello] ?? 0) + 1
  }
  t.same(counts, { 'hello from a': 4, 'hello from b': 4, 'hello from c': 4 })
  const page = await fetch(`${url}/ws/page`)
  const served = await page.text()
  const cookie = page.headers.getSetCookie().find((c) => c.startsWith('route='))?.split(';')[0] as string
  for (let i = 0; i < 4; i++) {
    t.equal((await open(t, wsUrl(url, '/ws'), undefined, { headers: { cookie } })).hello, `hello from ${served}`)
  }
  // the cookie of a removed target: the balancer picks another
  await app.upstreams.get('chat')?.removeTarget(targets.find((x) => x.name === served)?.url as string)
  t.not((await open(t, wsUrl(url, '/ws'), undefined, { headers: { cookie } })).hello, `hello from ${served}`)
})

test('removeTarget with drain keeps a socket open until drainTimeout, then closes it (1001); app.close() closes the rest', async (t) => {
  const targets = [await echoTarget(t, 'a'), await echoTarget(t, 'b')]
  const { app, url } = await startGateway(t, {
    upstreams: { chat: { targets: targets.map((x) => x.url), balancer: 'round-robin', drainTimeout: 300 } },
    routes: [{ prefix: '/ws', upstream: 'chat', websocket: true }]
  })
  const onA = await open(t, wsUrl(url, '/ws'))
  const onB = await open(t, wsUrl(url, '/ws'))
  t.equal(onA.hello, 'hello from a')
  const started = Date.now()
  const removing = app.upstreams.get('chat')?.removeTarget(targets[0].url, { drain: true })
  onA.ws.send('still here')
  t.equal(String((await once(onA.ws, 'message'))[0]), 'still here', 'the draining target\'s socket still works')
  const [code] = await once(onA.ws, 'close') as [number]
  t.equal(code, 1001, 'closed as going away')
  t.ok(Date.now() - started >= 250, 'after drainTimeout')
  await removing
  const closing = once(onB.ws, 'close')
  await app.close()
  const [closeCode] = await closing as [number]
  t.equal(closeCode, 1001, 'app.close() closed the open socket')
})

test("the target's refusal of the upgrade goes back to the client as it is", async (t) => {
  const server = http.createServer((_req, res) => { res.end('plain') })
  server.on('upgrade', (_req, socket) => {
    socket.end('HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 7\r\nx-reason: policy\r\nconnection: close\r\n\r\nnot you')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  const { app, url } = await startGateway(t, {
    upstreams: { chat: { targets: [`http://127.0.0.1:${(server.address() as AddressInfo).port}`] } },
    routes: [{ prefix: '/ws', upstream: 'chat', websocket: true }]
  })
  const ws = new WebSocket(wsUrl(url, '/ws'))
  ws.on('error', () => {})
  const [, res] = await once(ws, 'unexpected-response') as [unknown, http.IncomingMessage]
  t.equal(res.statusCode, 403)
  t.equal(res.headers['x-reason'], 'policy')
  let body = ''
  for await (const chunk of res) body += String(chunk)
  t.equal(body, 'not you')
  ws.terminate()
  await until('in flight back to 0', () => app.upstreams.get('chat')?.targets[0].inflight === 0)
})

test('a wss target is reached with the pool TLS settings; an untrusted one gets 502, never a handshake', { skip }, async (t) => {
  const server = https.createServer(upstreamCert)
  const wss = new WebSocketServer({ server })
  let handshakes = 0
  wss.on('connection', (ws) => { handshakes++; ws.send('secure hello') })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { for (const ws of wss.clients) ws.terminate(); wss.close(); server.closeAllConnections(); server.close(() => resolve()) }))
  const target = `https://127.0.0.1:${(server.address() as AddressInfo).port}`
  const trusted = await startGateway(t, {
    upstreams: { chat: { targets: [target], tls: { ca } } },
    routes: [{ prefix: '/ws', upstream: 'chat', websocket: true }]
  })
  t.equal((await open(t, wsUrl(trusted.url, '/ws'))).hello, 'secure hello')
  const untrusted = await startGateway(t, {
    upstreams: { chat: { targets: [target] } },
    routes: [{ prefix: '/ws', upstream: 'chat', websocket: true }]
  })
  const ws = new WebSocket(wsUrl(untrusted.url, '/ws'))
  ws.on('error', () => {})
  const [, res] = await once(ws, 'unexpected-response') as [unknown, http.IncomingMessage]
  t.equal(res.statusCode, 502)
  ws.terminate()
  t.equal(handshakes, 1, 'only the trusted gateway got through')
})

test("a tunnel silent past the pool's timeout.idle is closed with 1001; traffic keeps it open", async (t) => {
  const target = await echoTarget(t, 'a')
  const { url } = await startGateway(t, {
    upstreams: { chat: { targets: [target.url], timeout: { idle: 300 } } },
    routes: [{ prefix: '/ws', upstream: 'chat', websocket: true }]
  })
  const { ws } = await open(t, wsUrl(url, '/ws'))
  const started = Date.now()
  // a message every 100 ms for 600 ms: never 300 ms of silence
  for (let i = 0; i < 6; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    ws.send(`m${i}`)
    await once(ws, 'message')
  }
  t.equal(ws.readyState, WebSocket.OPEN, 'still open after 600 ms of traffic')
  const [code] = await once(ws, 'close') as [number]
  t.equal(code, 1001)
  t.ok(Date.now() - started >= 850, 'closed once silent for the idle timeout')
})

test('a drain under load: the draining target\'s sockets keep working until drainTimeout, new ones go elsewhere', async (t) => {
  const targets = [await echoTarget(t, 'a'), await echoTarget(t, 'b')]
  const { app, url } = await startGateway(t, {
    upstreams: { chat: { targets: targets.map((x) => x.url), balancer: 'round-robin', drainTimeout: 600 } },
    routes: [{ prefix: '/ws', upstream: 'chat', websocket: true }]
  })
  const opened = await Promise.all(Array.from({ length: 10 }, async () => await open(t, wsUrl(url, '/ws'))))
  const onA = opened.filter((o) => o.hello === 'hello from a').map((o) => o.ws)
  t.equal(onA.length, 5)
  const removing = app.upstreams.get('chat')?.removeTarget(targets[0].url, { drain: true })
  // every socket on the draining target exchanges messages for 400 ms
  let echoed = 0
  await Promise.all(onA.map(async (ws) => {
    for (let i = 0; i < 8; i++) {
      ws.send(`m${i}`)
      await once(ws, 'message')
      echoed++
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }))
  t.equal(echoed, 40, 'all answered while draining')
  for (let i = 0; i < 4; i++) t.equal((await open(t, wsUrl(url, '/ws'))).hello, 'hello from b', 'a new socket goes to the other target')
  const codes = await Promise.all(onA.map(async (ws) => (await once(ws, 'close') as [number])[0]))
  t.same(codes, [1001, 1001, 1001, 1001, 1001], 'closed with 1001 at drainTimeout')
  await removing
})

test('reply.forward tunnels an Upgrade request from a handler of the app\'s own; other routes answer it as usual', async (t) => {
  const target = await echoTarget(t, 'a')
  const { url } = await startGateway(t, {
    upstreams: { chat: { targets: [target.url] } }
  }, (app) => {
    app.get('/live/:room', (request, reply) => reply.forward('chat', { url: `/rooms/${(request.params as { room: string }).room}` }))
    app.get('/plain', async () => 'plain answer')
  })
  const { ws, hello } = await open(t, wsUrl(url, '/live/7'))
  t.equal(hello, 'hello from a')
  t.equal(target.handshakes[0].url, '/rooms/7')
  ws.send('x')
  t.equal(String((await once(ws, 'message'))[0]), 'x')
  const other = new WebSocket(wsUrl(url, '/plain'))
  other.on('error', () => {})
  const [, res] = await once(other, 'unexpected-response') as [unknown, http.IncomingMessage]
  t.equal(res.statusCode, 200, 'a route that does not forward answers as it would any request')
  other.terminate()
  t.equal((await fetch(`${url}/plain`)).status, 200, 'and plain requests are untouched')
})

test('with no target to take it, an upgrade gets the answer a forward gets: 503 FST_UPSTREAM_NO_TARGET', async (t) => {
  const target = await echoTarget(t, 'a')
  const { app, url } = await startGateway(t, {
    upstreams: { chat: { targets: [target.url] } },
    routes: [{ prefix: '/ws', upstream: 'chat', websocket: true }]
  })
  app.upstreams.get('chat')?.setState(target.url, 'disabled')
  const ws = new WebSocket(wsUrl(url, '/ws'))
  ws.on('error', () => {})
  const [, res] = await once(ws, 'unexpected-response') as [unknown, http.IncomingMessage]
  let body = ''
  for await (const chunk of res) body += String(chunk)
  t.equal(res.statusCode, 503)
  t.match(JSON.parse(body), { code: 'FST_UPSTREAM_NO_TARGET' })
  ws.terminate()
  t.equal(target.handshakes.length, 0)
})
