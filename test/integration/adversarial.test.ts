import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { test, type Test } from 'tap'
import { startGateway, type Teardown } from '../helpers'

// Hostile HTTP/1.1 requests, written as raw bytes on a fresh TCP socket each, to a real
// gateway (mount /users -> /v1/users) in front of a real upstream that records every
// request and every byte it receives. Each attack must be answered with a 4xx (or, where
// Node drops it, a closed connection with no answer), must not reach the upstream at all,
// and must leave the gateway serving: a normal GET /users/1 afterwards gets its 200.

interface Received { method: string, url: string, headers: http.IncomingHttpHeaders, body: string }

interface Recorder {
  /** host:port, what the gateway must send as Host */
  host: string
  port: number
  url: string
  requests: Received[]
  /** every byte the upstream read, on every connection, as latin1 */
  bytes: () => string
}

/** An upstream that records everything and answers 200 `ok` (with `headers`, if any); `t` closes it. */
async function startRecorder (t: Teardown, headers: Record<string, string> = {}): Promise<Recorder> {
  const requests: Received[] = []
  const chunks: Buffer[] = []
  const server = http.createServer((req, res) => {
    // recorded on arrival, before the body: an aborted request counts too
    const entry: Received = { method: req.method as string, url: req.url as string, headers: req.headers, body: '' }
    requests.push(entry)
    req.setEncoding('latin1')
    req.on('data', (chunk: string) => { entry.body += chunk })
    req.on('end', () => {
      res.setHeader('content-type', 'text/plain')
      for (const [name, value] of Object.entries(headers)) res.setHeader(name, value)
      res.end('ok')
    })
  })
  // a 'data' listener takes the socket off the HTTP parser's fast path: every byte is seen
  server.on('connection', (socket: net.Socket) => { socket.on('data', (chunk: Buffer) => chunks.push(chunk)) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))
  return {
    host: `127.0.0.1:${port}`,
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    bytes: () => Buffer.concat(chunks).toString('latin1')
  }
}

interface Answer {
  text: string
  /** status code of every response in the answer, in order */
  statuses: number[]
  /** how the exchange ended: the server closed the connection, or our timeout did */
  end: 'closed' | 'timeout'
}

const STATUS = /^HTTP\/1\.[01] (\d{3})/gm

/**
 * Writes `data` (latin1, byte for byte) on a fresh socket and reads until the server
 * closes it; a socket still open after `timeout` ms is destroyed and reported.
 */
function exchange (sockets: Set<net.Socket>, port: number, data: string, timeout = 3000): Promise<Answer> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(Buffer.from(data, 'latin1')))
    sockets.add(socket)
    const chunks: Buffer[] = []
    let end: Answer['end'] = 'closed'
    socket.setTimeout(timeout, () => {
      end = 'timeout'
      socket.destroy()
    })
    socket.on('data', (chunk: Buffer) => chunks.push(chunk))
    // the server may reset a connection it refuses while we still write: the answer counts
    socket.on('error', () => {})
    socket.on('close', () => {
      sockets.delete(socket)
      const text = Buffer.concat(chunks).toString('latin1')
      resolve({ text, statuses: [...text.matchAll(STATUS)].map((m) => Number(m[1])), end })
    })
  })
}

/**
 * The sockets `exchange` opens, destroyed when the test ends. Made after the gateway
 * starts, so they go first: the gateway's close would wait for a request left half-sent.
 */
function clientSockets (t: Teardown): Set<net.Socket> {
  const sockets = new Set<net.Socket>()
  t.teardown(() => { for (const socket of sockets) socket.destroy() })
  return sockets
}

interface Setup {
  up: Recorder
  /** the gateway's port and Host header line */
  port: number
  host: string
  send: (data: string) => Promise<Answer>
}

async function setup (t: Test): Promise<Setup> {
  const up = await startRecorder(t)
  const { url } = await startGateway(t, {
    upstreams: { users: { targets: [up.url] } },
    routes: [{ prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users' }]
  })
  const sockets = clientSockets(t)
  const port = Number(new URL(url).port)
  return { up, port, host: `Host: 127.0.0.1:${port}\r\n`, send: (data) => exchange(sockets, port, data) }
}

/** A normal GET /users/1 gets its 200, and the upstream sees exactly that request. */
async function stillServes (t: Test, s: Setup, after: string): Promise<void> {
  const before = s.up.requests.length
  const answer = await s.send(`GET /users/1 HTTP/1.1\r\n${s.host}Connection: close\r\n\r\n`)
  t.same(answer.statuses, [200], `after ${after}: a normal GET /users/1 still gets 200`)
  t.equal(s.up.requests.length, before + 1, `after ${after}: the normal request reached the upstream once`)
  t.equal(s.up.requests.at(-1)?.url, '/v1/users/1')
}

/**
 * Sends one attack and checks: the answer is exactly `status` (or, for 'closed', no byte
 * at all before the server closed the connection), the upstream received nothing (no
 * request, not one byte), and the gateway still serves.
 */
async function refused (t: Test, s: Setup, name: string, data: string, status: number | 'closed'): Promise<void> {
  const requests = s.up.requests.length
  const bytes = s.up.bytes().length
  const answer = await s.send(data)
  if (status === 'closed') {
    t.equal(answer.text, '', `${name}: no answer at all`)
  } else {
    const detail = answer.text.slice(answer.text.indexOf('\r\n\r\n') + 4, 200)
    t.same(answer.statuses, [status], `${name}: answered ${answer.statuses.join(', ') || 'nothing'} ${detail}`)
  }
  t.equal(answer.end, 'closed', `${name}: the server closed the connection`)
  t.equal(s.up.requests.length, requests, `${name}: no request reached the upstream`)
  t.equal(s.up.bytes().length, bytes, `${name}: not one byte reached the upstream`)
  await stillServes(t, s, name)
}

/** Every request the upstream saw was a normal GET /users/1, with the target's Host. */
function onlyNormalRequests (t: Test, s: Setup): void {
  const odd = s.up.requests.filter((r) => r.method !== 'GET' || r.url !== '/v1/users/1' || r.headers.host !== s.up.host)
  t.same(odd, [], 'the upstream received nothing but the normal requests')
}

test('request smuggling: CL+TE, TE+CL, TE obfuscations and conflicting Content-Length are refused, the hidden request never reaches the upstream', async (t) => {
  const s = await setup(t)
  const hidden = `GET /users/smuggled HTTP/1.1\r\n${s.host}\r\n`
  const chunk = (body: string): string => `${body.length.toString(16)}\r\n${body}\r\n`
  const clte = `0\r\n\r\n${hidden}`
  const tecl = `${chunk(hidden)}0\r\n\r\n`
  const post = `POST /users/1 HTTP/1.1\r\n${s.host}`
  const attacks: Array<[string, string]> = [
    ['CL+TE (Content-Length first)', `${post}Content-Length: ${clte.length}\r\nTransfer-Encoding: chunked\r\n\r\n${clte}`],
    ['TE+CL (Transfer-Encoding first)', `${post}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n${tecl}`],
    ['CL + TE: xchunked', `${post}Content-Length: ${clte.length}\r\nTransfer-Encoding: xchunked\r\n\r\n${clte}`],
    ['CL + TE with a space before the colon', `${post}Content-Length: ${clte.length}\r\nTransfer-Encoding : chunked\r\n\r\n${clte}`],
    ['TE: chunked, identity (chunked not last)', `${post}Transfer-Encoding: chunked, identity\r\n\r\n${tecl}`],
    ['two TE headers, chunked then identity', `${post}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n${tecl}`],
    ['two different Content-Length headers', `${post}Content-Length: 5\r\nContent-Length: ${5 + hidden.length}\r\n\r\nhello${hidden}`],
    ['Content-Length as a list: 5, N', `${post}Content-Length: 5, ${5 + hidden.length}\r\n\r\nhello${hidden}`],
    ['two equal Content-Length headers', `${post}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello${hidden}`],
    ['Content-Length with a sign', `${post}Content-Length: +5\r\n\r\nhello${hidden}`]
  ]
  for (const [name, data] of attacks) await refused(t, s, name, data, 400)

  // a request pipelined behind one that asked to close is refused by Node with a 400,
  // which resets the connection: the framed request's own answer may be lost with it (it
  // is in flight), and it may or may not have reached the upstream; if it did, with
  // exactly its own body
  for (let i = 0; i < 5; i++) {
    const before = s.up.requests.length
    const answer = await s.send(`${post}Content-Length: 5\r\nConnection: close\r\n\r\nhello${hidden}`)
    t.equal(answer.statuses.at(-1), 400, `pipelined behind Connection: close: refused (${answer.statuses.join(', ')})`)
    t.ok(answer.statuses.every((status) => status === 200 || status === 400), 'nothing but the 200 and the 400')
    t.equal(answer.end, 'closed')
    const arrived = s.up.requests.slice(before).map(({ method, url, body }) => ({ method, url, body }))
    t.ok(arrived.length <= 1, 'at most the framed request reached the upstream')
    if (arrived.length === 1) t.same(arrived[0], { method: 'POST', url: '/v1/users/1', body: 'hello' }, 'with exactly its own body')
    await stillServes(t, s, 'a request pipelined behind Connection: close')
  }

  t.notMatch(s.up.bytes(), /smuggled/, 'no hidden request, not even as body bytes, reached the upstream')
  const odd = s.up.requests.filter((r) => r.method !== 'GET' || r.url !== '/v1/users/1')
  t.same(odd.filter((r) => r.method !== 'POST' || r.body !== 'hello'), [], 'nothing else reached it')
})

test('malformed header blocks are refused: obs-fold, bare CR or LF, NUL, bad names, more than 16 KiB', async (t) => {
  const s = await setup(t)
  const get = `GET /users/1 HTTP/1.1\r\n${s.host}`
  const attacks: Array<[string, string, number]> = [
    ['obs-fold with a space', `${get}X-A: a\r\n b\r\nConnection: close\r\n\r\n`, 400],
    ['obs-fold with a tab', `${get}X-A: a\r\n\tX-Evil: b\r\nConnection: close\r\n\r\n`, 400],
    ['CR alone inside a value', `${get}X-A: a\rX-Evil: b\r\nConnection: close\r\n\r\n`, 400],
    ['LF alone inside a value', `${get}X-A: a\nX-Evil: b\r\nConnection: close\r\n\r\n`, 400],
    ['LF alone as line ending', 'GET /users/1 HTTP/1.1\nHost: x\nConnection: close\n\n', 400],
    ['NUL in a value', `${get}X-A: a\0b\r\nConnection: close\r\n\r\n`, 400],
    ['NUL in a name', `${get}X-\0A: b\r\nConnection: close\r\n\r\n`, 400],
    ['space before the colon', `${get}X-A : b\r\nConnection: close\r\n\r\n`, 400],
    ['empty header name', `${get}: b\r\nConnection: close\r\n\r\n`, 400],
    ['non-token name', `${get}X-(A): b\r\nConnection: close\r\n\r\n`, 400],
    ['non-ASCII name', `${get}X-\xe9: b\r\nConnection: close\r\n\r\n`, 400],
    ['one 17 KiB header (over Node\'s 16 KiB)', `${get}X-Big: ${'a'.repeat(17 * 1024)}\r\nConnection: close\r\n\r\n`, 431],
    ['300 headers, 18 KiB in all', `${get}${Array.from({ length: 300 }, (_, i) => `X-H${i}: ${'v'.repeat(50)}\r\n`).join('')}Connection: close\r\n\r\n`, 431],
    ['a 17 KiB request target', `GET /users/${'a'.repeat(17 * 1024)} HTTP/1.1\r\n${s.host}Connection: close\r\n\r\n`, 431],
    ['no Host header', 'GET /users/1 HTTP/1.1\r\nConnection: close\r\n\r\n', 400]
  ]
  for (const [name, data, status] of attacks) await refused(t, s, name, data, status)
  onlyNormalRequests(t, s)
})

test('traversal in every encoding is refused with 400 before any upstream sees it', async (t) => {
  const s = await setup(t)
  const paths = [
    '/users/..', '/users/../admin', '/users/x/../../admin', '/users/./x', '/users/.', '/users//..//admin',
    '/users/%2e%2e/admin', '/users/%2E%2e/admin', '/users/%2e%2E', '/users/.%2e/admin', '/users/%2e./admin', '/users/%2e/x',
    '/users/a%2fb', '/users/a%2Fb', '/users/..%2fadmin', '/users/%2e%2e%2fadmin', '/users/a%2f..%2f..%2fadmin',
    '/users/a%5cb', '/users/%5c..%5cadmin', '/users/..%5cadmin', '/users/%2e%2e%5cadmin', '/users/%2E%2E%5Cadmin',
    '/users/..\\admin', '/users/\\..\\admin', '/users/a\\b',
    '/users/%252e%252e/admin', '/users/%252E%252E%252Fadmin', '/users/a%252fb', '/users/a%255cb', '/users/a%2500b',
    '/users/a%00b', '/users/%00/../admin', '/users/..;/admin', '/users/%2e%2e;/admin', '/users/%2e%2e%3f',
    '/users/%zz', '/users/%', '/users/%c0%ae%c0%ae/admin', '/users/1?x=%zz', '/users?%ff'
  ]
  for (const path of paths) {
    await refused(t, s, path, `GET ${path} HTTP/1.1\r\n${s.host}Connection: close\r\n\r\n`, 400)
  }
  // not routed at all: the encoded slash is not a separator to the router
  await refused(t, s, '/users%2f..%2fadmin', `GET /users%2f..%2fadmin HTTP/1.1\r\n${s.host}Connection: close\r\n\r\n`, 404)
  onlyNormalRequests(t, s)
})

test('invalid methods, versions and request lines are refused', async (t) => {
  const s = await setup(t)
  const tail = `\r\n${s.host}Connection: close\r\n\r\n`
  const attacks: Array<[string, string, number | 'closed']> = [
    ['method G@T', `G@T /users/1 HTTP/1.1${tail}`, 400],
    ['lowercase method get', `get /users/1 HTTP/1.1${tail}`, 400],
    ['empty method', ` /users/1 HTTP/1.1${tail}`, 400],
    ['method TRACE (not mounted)', `TRACE /users/1 HTTP/1.1${tail}`, 404],
    ['version HTTP/9.9', `GET /users/1 HTTP/9.9${tail}`, 400],
    ['version HTTP/1.2', `GET /users/1 HTTP/1.2${tail}`, 400],
    ['lowercase version http/1.1', `GET /users/1 http/1.1${tail}`, 400],
    ['a word after the version', `GET /users/1 HTTP/1.1 extra${tail}`, 400],
    ['a space in the path', `GET /users/a b HTTP/1.1${tail}`, 400],
    ['a space after a dot segment', `GET /users/../ admin HTTP/1.1${tail}`, 400],
    ['a tab in the path', `GET /users/a\tb HTTP/1.1${tail}`, 400],
    ['raw non-ASCII in the path', `GET /users/\xc3\xa9 HTTP/1.1${tail}`, 400],
    ['a target without a leading slash', `GET users/1 HTTP/1.1${tail}`, 400],
    ['asterisk-form on GET', `GET * HTTP/1.1${tail}`, 404],
    // Node has no 'connect' listener here: it closes the socket without a word
    ['CONNECT to the upstream', `CONNECT ${s.up.host} HTTP/1.1\r\nHost: ${s.up.host}\r\n\r\n`, 'closed']
  ]
  for (const [name, data, status] of attacks) await refused(t, s, name, data, status)
  onlyNormalRequests(t, s)
})

test('request lines Node accepts leniently are routed as the path they name, and nothing else', async (t) => {
  const s = await setup(t)
  // Node's parser takes these; each must reach the upstream as GET /v1/users/1 with the
  // target's Host, as the normal request does
  const lenient: Array<[string, string]> = [
    ['no version (HTTP/0.9 style)', `GET /users/1\r\n${s.host}Connection: close\r\n\r\n`],
    ['version HTTP/2.0 on HTTP/1', `GET /users/1 HTTP/2.0\r\n${s.host}Connection: close\r\n\r\n`],
    ['two spaces after the method', `GET  /users/1 HTTP/1.1\r\n${s.host}Connection: close\r\n\r\n`],
    ['HTTP/1.0', `GET /users/1 HTTP/1.0\r\n${s.host}\r\n`]
  ]
  for (const [name, data] of lenient) {
    const before = s.up.requests.length
    const answer = await s.send(data)
    t.same(answer.statuses, [200], `${name}: 200`)
    t.equal(s.up.requests.length, before + 1, `${name}: one request upstream`)
    t.equal(s.up.requests.at(-1)?.url, '/v1/users/1', `${name}: the routed path`)
    t.equal(s.up.requests.at(-1)?.headers.host, s.up.host, `${name}: the target's Host`)
  }
  onlyNormalRequests(t, s)
})

test('absolute-form targets: routed by their path only, never by their authority', async (t) => {
  const s = await setup(t)
  /** sends `target`, expects 200 and the upstream to get `expected`, with no trace of `authority` */
  async function routed (target: string, expected: string, authority: string, host = s.host): Promise<void> {
    const before = s.up.requests.length
    const bytes = s.up.bytes().length
    const answer = await s.send(`GET ${target} HTTP/1.1\r\n${host}Connection: close\r\n\r\n`)
    t.same(answer.statuses, [200], `${target}: 200`)
    t.equal(s.up.requests.length, before + 1, `${target}: one request upstream`)
    const got = s.up.requests.at(-1) as Received
    t.equal(got.url, expected, `${target}: sent upstream as ${expected}`)
    t.equal(got.headers.host, s.up.host, `${target}: with the target's Host`)
    t.notOk(got.url.split('?')[0].split('/').some((segment) => segment === '.' || segment === '..'), 'no dot segment')
    const head = s.up.bytes().slice(bytes).split('\r\n\r\n')[0]
    t.notOk(head.split('\r\n')[0].includes(authority), `${target}: the authority ${authority} is not in the upstream request line`)
    if (host === s.host) t.notOk(head.includes(authority), `${target}: nor anywhere in what the upstream received`)
  }
  await routed('http://evil.example/users/1', '/v1/users/1', 'evil.example')
  await routed('https://evil.example/users/1', '/v1/users/1', 'evil.example')
  await routed('HTTP://EVIL.EXAMPLE/users/1', '/v1/users/1', 'EVIL.EXAMPLE')
  await routed('http://user@evil.example/users/1', '/v1/users/1', 'evil.example')
  await routed('http://evil.example/users?x=1', '/v1/users?x=1', 'evil.example')
  await routed('http://evil.example/users/1', '/v1/users/1', 'evil.example', 'Host: evil.example\r\n')
  await routed(`http://${s.up.host}/users/1`, '/v1/users/1', `//${s.up.host}`)
  await routed(`http://${s.up.host}/users/1`, '/v1/users/1', `//${s.up.host}`, `Host: ${s.up.host}\r\n`)

  const close = `\r\n${s.host}Connection: close\r\n\r\n`
  // the upstream's own paths are not reachable by naming it
  await refused(t, s, 'absolute-form at the upstream\'s /v1/admin', `GET http://${s.up.host}/v1/admin HTTP/1.1${close}`, 404)
  await refused(t, s, 'absolute-form at the upstream\'s /v1/users/1', `GET http://${s.up.host}/v1/users/1 HTTP/1.1${close}`, 404)
  await refused(t, s, 'absolute-form with ../', `GET http://evil.example/users/../admin HTTP/1.1${close}`, 400)
  await refused(t, s, 'absolute-form with %2e%2e', `GET http://evil.example/users/%2e%2e/admin HTTP/1.1${close}`, 400)
  await refused(t, s, 'absolute-form with a fragment', `GET http://evil.example/users#/1 HTTP/1.1${close}`, 400)
  await refused(t, s, 'absolute-form with an empty authority', `GET http:///users/1 HTTP/1.1${close}`, 400)
  await refused(t, s, 'absolute-form, port out of range', `GET http://evil.example:99999/users/1 HTTP/1.1${close}`, 400)
  await refused(t, s, 'absolute-form, query before the path', `GET http://evil.example?/users/1 HTTP/1.1${close}`, 404)
  await refused(t, s, 'absolute-form, ftp scheme', `GET ftp://evil.example/users/1 HTTP/1.1${close}`, 400)
  await refused(t, s, 'network-path form //evil.example/users/1', `GET //evil.example/users/1 HTTP/1.1${close}`, 404)
  const bad = s.up.requests.filter((r) => r.headers.host !== s.up.host || !/^\/v1\/users(\/|\?|$)/.test(r.url))
  t.same(bad, [], 'every request upstream stayed under /v1/users with the target\'s Host')
})

test('absolute-form targets cannot choose the value of a prefix parameter', async (t) => {
  // the upstream redirects within the tenant: the client must see it under the prefix
  const up = await startRecorder(t, { location: '/tenants/acme/y' })
  const params: unknown[] = []
  const { url } = await startGateway(t, {
    upstreams: { t: { targets: [up.url] } },
    routes: [{
      prefix: '/t/:tenant',
      upstream: 't',
      rewritePrefix: '/tenants/:tenant',
      // what an authorisation hook would check
      preHandler: async (request: { params: unknown }) => { params.push(request.params) }
    }]
  })
  const sockets = clientSockets(t)
  const port = Number(new URL(url).port)
  const answer = await exchange(sockets, port, `GET http://other/t/acme/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`)
  t.same(answer.statuses, [200])
  t.same(params, [{ tenant: 'acme', '*': 'x' }], 'Fastify routed tenant acme')
  t.equal(up.requests.length, 1)
  t.equal(up.requests[0].url, '/tenants/acme/x', 'and the upstream serves tenant acme, not one named by the authority')
  t.equal(up.requests[0].headers.host, up.host)
  t.notMatch(up.bytes(), /other/, 'the authority is nowhere in what the upstream received')
  t.match(answer.text, /\r\nlocation: \/t\/acme\/y\r\n/i, 'the Location header comes back under the prefix')
})

test('Expect: 100-continue is answered by the gateway, not passed on: no 502, nothing counted against the target', async (t) => {
  const up = await startRecorder(t)
  const { app, url } = await startGateway(t, {
    upstreams: { users: { targets: [up.url], healthCheck: { passive: { consecutiveFailures: 2 } } } },
    routes: [{ prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users' }]
  })
  const sockets = clientSockets(t)
  const port = Number(new URL(url).port)
  for (let i = 0; i < 3; i++) {
    const answer = await exchange(sockets, port, `POST /users/1 HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello`)
    t.same(answer.statuses, [100, 200], 'Node answers 100 Continue, then the upstream\'s 200 comes through')
  }
  t.equal(up.requests.length, 3)
  t.ok(up.requests.every((r) => r.headers.expect === undefined && r.body === 'hello'), 'the upstream got each body, without the Expect header')
  const target = app.upstreams.get('users')?.targets[0]
  t.same({ state: target?.state, failures: target?.failures }, { state: 'healthy', failures: 0 }, 'no failure counted, no ejection')
})
