import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { test } from 'tap'
import { readings, startGateway, type Teardown } from '../helpers'

// A short, bounded, seeded fuzz run: random request lines and header blocks built from a
// dictionary of hostile pieces, sent as raw bytes on a few sockets at a time to a real
// gateway (mount /users -> /v1/users, and /users/admin behind a hook that refuses all) in front of a real upstream that always answers 200
// and records every request it receives. The same seed gives the same requests: to replay
// a failure, run with FUZZ_SEED set to the seed in the test name.

const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed2a17)
const TOTAL = 2400
const CONCURRENCY = 4
/** a normal request after every CHECK_EVERY fuzz requests must get its 200 */
const CHECK_EVERY = 100
const SOCKET_TIMEOUT = 3000

/** mulberry32: a tiny, fast PRNG; good enough to pick from lists, and reproducible. */
function mulberry32 (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** A string's UTF-8 bytes as a latin1 string: requests are built as one char per byte. */
const utf8 = (text: string): string => Buffer.from(text, 'utf8').toString('latin1')

/** ordinary path segments */
const CLEAN_SEGMENTS = ['1', '42', 'users', 'v1', 'admin', 'me', 'a.b', '...', 'fine...name', '.hidden', 'a..b', '~', '%20', '%C3%A9', 'a-b_c', '2024']
/** path segments, hostile or not, all of them bytes Node's parser lets through */
const SEGMENTS = [
  '1', '42', 'users', 'v1', 'admin', 'me', 'a.b', '...', 'fine...name', '.hidden', 'a..b',
  '..', '.', '%2e%2e', '%2E%2E', '%2e%2E', '.%2e', '%2e.', '%2e', '%2E', '..%00', '..%01',
  '%252e%252e', '%252e', '%25252e%25252e', '%2f', '%2F', '%5c', '%5C', '%252f', '%252F', '%255c', '%00', '%2500',
  '\\', '..\\', '\\..', '..%2f', '..%2F', '%2e%2e%2f', '%2e%2e%5c', '..%5c', '..;', ';', '..;jsessionid=1', '%3b',
  '%3f', '%3F', '%23', '%zz', '%', '%%', '%2', '%c0%ae', '%c0%ae%c0%ae', '%c0%af', '%e0%80%ae', '%C3%A9', '%e2%80%a8',
  '%ef%bc%8f', '%ef%bc%8e%ef%bc%8e', '%u002e%u002e', '%25%32%65%25%32%65', '%252%65%252%65', '%2525252e', '%e2%80%a5', '%ef%b9%92',
  '%ef%bc%bc', '..%3b', '%2e%2e;x', '#', '#/admin', '%20', '+', '~', '*', '$', '!', "'", '(', ')', ',', '=', '&', ':',
  '@', '@evil.example', ':80', 'evil.example', '"', '{}', '|', '^', '`', '<script>', '', 'a'.repeat(300), 'b'.repeat(2048), '..'.repeat(40), '%2e'.repeat(30)
]
/** raw bytes in a path: space, tab, controls, non-ASCII */
const RAW_SEGMENTS = [' ', '\t', '\x7f', '\x01', utf8('é'), utf8('😀'), utf8('\u2028'), utf8('ａ'), utf8('\ufeff'), utf8('．．')]
const SEPARATORS = ['/', '/', '/', '/', '/', '/', '/', '/', '//', '\\', '%2f', '%5c', '/./', '/../', '/%2e%2e/', '']
const QUERY = [
  'x=1', 'x=..', 'x=../..', 'x=%2e%2e%2f', 'x=%zz', '%', 'a=%00', 'next=http://evil.example/', 'a[b]=c', '&&', '=',
  'x=%C3%A9', 'x=' + 'q'.repeat(500), '..', '/..', 'x=%2f', 'x=\\', 'x=%252e'
]
/** absolute-form prefixes; the authority is never in a path segment, so never upstream */
const AUTHORITIES = [
  'http://authority.invalid', 'https://authority.invalid', 'HTTP://AUTHORITY.INVALID', 'http://user:pw@authority.invalid',
  'http://[::1]', 'http://authority.invalid:99999', 'ftp://authority.invalid', '//authority.invalid', 'http://',
  'http://authority.invalid?'
]
const PREFIXES = ['/Users', '/users%2f', '/users..', '/users.', '/user', '', '/v1/users', '/%75sers', '//users', '/./users', '/../users', 'users', '*', '/users;x',
  '/users#/admin', '/users/#', '/users//admin', '/users/admin;x=1', '/users/%61dmin', '/users/admin']
const METHODS = ['GET', 'GET', 'GET', 'GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS']
const ODD_METHODS = ['TRACE', 'CONNECT', 'PROPFIND', 'QUERY', 'SEARCH', 'M-SEARCH', 'PURGE', 'G@T', 'get', 'Get', '', 'XYZ', 'X'.repeat(40), 'GE\0T']
const ODD_VERSIONS = ['HTTP/1.0', 'HTTP/2.0', 'HTTP/1.2', 'HTTP/0.9', 'HTTP/9.9', 'http/1.1', '', 'HTTP/1.1 x', 'HTTP/1.01', 'HTTP/11']
const HEADER_NAMES = [
  'X-Forwarded-For', 'X-Forwarded-Host', 'X-Forwarded-Proto', 'X-Forwarded-Port', 'X-Forwarded-Prefix', 'Forwarded',
  'X-Real-IP', 'X-Original-URL', 'X-Rewrite-URL', 'X-HTTP-Method-Override', 'Connection', 'Keep-Alive', 'TE', 'Trailer',
  'Upgrade', 'Proxy-Connection', 'Proxy-Authorization', 'Expect', 'Content-Type', 'Accept', 'Cookie', 'Authorization',
  'Range', 'If-None-Match', 'Via', 'Max-Forwards', 'Content-Encoding', 'x-lower', 'X-UPPER'
]
const ODD_HEADER_NAMES = ['X A', 'X:A', 'X\0A', '', utf8('é'), 'X-(a)', 'X-\x7f', ' X-Leading']
const HEADER_VALUES = [
  '1', '', ' ', 'close', 'keep-alive', 'upgrade', 'x-custom', 'x-custom, host', 'host', 'content-length',
  'transfer-encoding', 'x-forwarded-for', 'close, x-forwarded-host', 'chunked', 'websocket', 'h2c', '100-continue',
  'trailers', '127.0.0.1', '1.2.3.4, 5.6.7.8', 'evil.example', 'https', 'for=1.2.3.4;host=evil.example;proto=https',
  '/admin', '/v1/admin', 'GET', 'text/plain', 'application/json', 'multipart/form-data; boundary=x', 'gzip',
  utf8('é'), '\xe9', '"quoted"', '%0d%0aX-Injected: 1', '\t', 'v'.repeat(1000), 'w'.repeat(9000)
]
/** values that break the header block: bare CR or LF, obs-fold, NUL, DEL */
const ODD_HEADER_VALUES = ['\r', '\n', 'a\rb', 'a\nb', 'a\r\nX-Injected: 1', 'a\r\n b', '\0', '\x7f']
const HOSTS = [
  'evil.example', 'evil.example:80', '', 'a b', '[::1]', utf8('é'), 'localhost\r\nHost: evil.example', '127.0.0.1:1'
]
const CONTENT_LENGTHS = ['-1', '+5', '1e3', '0x5', '', ' 5', '5 5', '5,5', '99999999999999999999', '05']
const TRANSFER_ENCODINGS = ['xchunked', 'chunked, identity', ' chunked', 'identity', 'gzip, chunked', 'chunked\t', 'CHUNKED', 'chunked;q=1']

interface Recorded { method: string, url: string, host: string | undefined }

/** An upstream that records each request and answers `ok`; `t` closes it. */
async function startRecorder (t: Teardown): Promise<{ url: string, host: string, requests: Recorded[] }> {
  const requests: Recorded[] = []
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method as string, url: req.url as string, host: req.headers.host })
    req.resume()
    req.on('end', () => res.end('ok'))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`
  return { url: `http://${host}`, host, requests }
}

/** The request builder of a run: each call gives the next request, all from one PRNG stream. */
function generator (seed: number, gatewayHost: string, upstreamHost: string): () => string {
  const rand = mulberry32(seed)
  const int = (n: number): number => Math.floor(rand() * n)
  const pick = <T>(list: readonly T[]): T => list[int(list.length)]
  const chance = (p: number): boolean => rand() < p
  // a hidden request: should any upstream parse it, its path is outside /v1/users
  const hidden = `GET /v1/admin/smuggled HTTP/1.1\r\nHost: ${upstreamHost}\r\n\r\n`
  const authorities = [...AUTHORITIES, `http://${upstreamHost}`, `http://${gatewayHost}`]
  const chunked = (body: string): string => (body === '' ? '' : `${body.length.toString(16)}\r\n${body}\r\n`) + '0\r\n\r\n'

  function target (): string {
    const r = rand()
    let path = r < 0.85 ? '/users' : r < 0.93 ? pick(authorities) + '/users' : pick(PREFIXES)
    for (let n = int(6); n > 0; n--) path += pick(SEPARATORS) + (chance(0.5) ? pick(CLEAN_SEGMENTS) : chance(0.05) ? pick(RAW_SEGMENTS) : pick(SEGMENTS))
    if (chance(0.25)) path += '?' + Array.from({ length: 1 + int(3) }, () => pick(QUERY)).join('&')
    if (chance(0.03)) path += '#' + pick(SEGMENTS)
    return path
  }

  // each part is ordinary most of the time, so that enough requests get past Node's
  // parser to the router and the plugin, with some hostile piece in them
  return function next (): string {
    const method = chance(0.94) ? pick(METHODS) : pick(ODD_METHODS)
    const version = chance(0.94) ? 'HTTP/1.1' : pick(ODD_VERSIONS)
    const lines = [`${method} ${target()} ${version}`.replace(/ $/, '')]
    if (chance(0.85)) lines.push(`Host: ${gatewayHost}`)
    else if (chance(0.8)) lines.push(`Host: ${pick([...HOSTS, upstreamHost])}`)
    for (let n = int(5); n > 0; n--) {
      const name = chance(0.03) ? pick(ODD_HEADER_NAMES) : chance(0.03) ? `X-${pick(SEGMENTS)}` : pick(HEADER_NAMES)
      const value = name === 'Connection' && chance(0.5) ? `x-${pick(SEGMENTS)}` : chance(0.03) ? pick(ODD_HEADER_VALUES) : pick(HEADER_VALUES)
      lines.push(`${name}${chance(0.94) ? ': ' : pick([':', ' : ', ':\t'])}${value}`)
    }
    const body = pick(['', 'hello', '{"a":1}', 'a=1&b=2', 'x'.repeat(1 + int(4000)), hidden])
    // framings: no body, valid Content-Length, valid chunked, and the ambiguous ones;
    // never a Content-Length larger than what is sent, which would only wait for more
    switch (int(30)) {
      case 0: case 1: case 2: lines.push(`Content-Length: ${body.length}`, '', body); break
      case 3: case 4: case 5: lines.push('Transfer-Encoding: chunked', '', chunked(body)); break
      case 6: lines.push(`Content-Length: ${body.length + hidden.length}`, 'Transfer-Encoding: chunked', '', chunked(body) + hidden); break
      case 7: lines.push('Transfer-Encoding: chunked', `Content-Length: ${body.length}`, '', chunked(body + hidden)); break
      case 8: lines.push(`Content-Length: ${body.length}`, `Content-Length: ${body.length + hidden.length}`, '', body + hidden); break
      case 9: lines.push(`Content-Length: ${body.length}`, '', body + hidden); break
      case 10: lines.push(`Transfer-Encoding: ${pick(TRANSFER_ENCODINGS)}`, '', chunked(body)); break
      case 11: lines.push(`Content-Length: ${pick(CONTENT_LENGTHS)}`, '', 'hello'); break
      default: lines.push('', '')
    }
    // every exchange ends with the server closing the connection (a header block broken
    // by the fuzz is a 400, which closes it too)
    lines.splice(lines.indexOf(''), 0, 'Connection: close')
    return lines.join('\r\n')
  }
}

interface Answer { statuses: number[], head: string, end: 'closed' | 'kept alive' | 'timeout' }

const STATUS = /^HTTP\/1\.[01] (\d{3})/gm

/**
 * True when `text` ends with a whole response after which the server keeps the
 * connection open: Node honours `Connection: close` except where, for HTTP/1.0 or 0.9,
 * `Proxy-Connection: keep-alive` (read by llhttp like `Connection`) asks otherwise.
 */
function keptAlive (text: string, head: boolean): boolean {
  const starts = [...text.matchAll(STATUS)]
  const start = starts.at(-1)?.index
  if (start === undefined) return false
  const end = text.indexOf('\r\n\r\n', start)
  if (end === -1) return false
  const headers = text.slice(start, end)
  if (!/\r\nconnection: keep-alive/i.test(headers)) return false
  const length = /\r\ncontent-length: (\d+)/i.exec(headers)
  return length !== null && (head || text.length - end - 4 >= Number(length[1]))
}

function exchange (sockets: Set<net.Socket>, port: number, data: string): Promise<Answer> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(Buffer.from(data, 'latin1')))
    sockets.add(socket)
    const chunks: Buffer[] = []
    let end: Answer['end'] = 'closed'
    socket.setTimeout(SOCKET_TIMEOUT, () => {
      end = 'timeout'
      socket.destroy()
    })
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk)
      // a whole answer on a connection the server keeps: a moment for more, then hang up
      if (keptAlive(Buffer.concat(chunks).toString('latin1'), data.startsWith('HEAD '))) {
        socket.setTimeout(200, () => {
          end = 'kept alive'
          socket.destroy()
        })
      }
    })
    socket.on('error', () => {})
    socket.on('close', () => {
      sockets.delete(socket)
      const text = Buffer.concat(chunks).toString('latin1')
      resolve({ statuses: [...text.matchAll(STATUS)].map((m) => Number(m[1])), head: text.slice(0, 1000), end })
    })
  })
}

/** What is wrong with a request the upstream received, if anything. */
function violation (request: Recorded, upstreamHost: string, gatewayHost: string): string | undefined {
  const path = request.url.split('?')[0]
  if (path !== '/v1/users' && !path.startsWith('/v1/users/')) return 'outside /v1/users'
  for (const read of readings(path)) {
    if (read !== '/v1/users' && !read.startsWith('/v1/users/')) return `outside /v1/users for a target that reads it as ${read}`
    // the admin mount's hook refuses every fuzz request: nothing may reach its target path
    if (read === '/v1/users/admin' || read.startsWith('/v1/users/admin/')) return `past the admin mount's hook, read as ${read}`
  }
  if (request.host !== upstreamHost) return `Host ${String(request.host)}`
  // the authority of an absolute-form target is not part of the path
  if (/authority\.invalid|\[::1\]/i.test(path) || path.includes(upstreamHost) || path.includes(gatewayHost)) return 'authority in the path'
  if (/%2f|%5c|%00/i.test(path) || path.includes('\\')) return 'encoded slash, backslash or NUL'
  // once decoded (%2e and %252e alike), no segment may be a dot segment
  const decoded = path.replace(/%25/gi, '%').replace(/%2e/gi, '.')
  if (decoded.split('/').some((segment) => segment === '.' || segment === '..')) return 'dot segment'
  if (/%2f|%5c|%00/i.test(decoded)) return 'double-encoded slash, backslash or NUL'
  return undefined
}

test(`fuzz: ${TOTAL} hostile requests, seed 0x${SEED.toString(16)}: no 5xx, no crash, nothing escapes /v1/users upstream`, async (t) => {
  const started = Date.now()
  const up = await startRecorder(t)
  const serverErrors: string[] = []
  const { app, url } = await startGateway(t, {
    upstreams: { users: { targets: [up.url] } },
    routes: [
      { prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users', strictPaths: true },
      {
        prefix: '/users/admin',
        upstream: 'users',
        rewritePrefix: '/v1/users/admin',
        strictPaths: true,
        onRequest: async (_request: unknown, reply: { code: (n: number) => { send: (b: unknown) => void } }) => { reply.code(401).send({ denied: true }) }
      }
    ]
  }, (app) => {
    // the gateway's own view: a 5xx it sent, even to a client already gone
    app.addHook('onResponse', async (request, reply) => {
      if (reply.statusCode >= 500) serverErrors.push(`${reply.statusCode} ${request.method} ${JSON.stringify(request.url)}`)
    })
  })
  const sockets = new Set<net.Socket>()
  // before the gateway closes (registered after it): its close would wait for a request left half-sent
  t.teardown(() => { for (const socket of sockets) socket.destroy() })
  const port = Number(new URL(url).port)
  const gatewayHost = `127.0.0.1:${port}`
  const next = generator(SEED, gatewayHost, up.host)
  const requests = Array.from({ length: TOTAL }, next)

  const normal = `GET /users/1 HTTP/1.1\r\nHost: ${gatewayHost}\r\nConnection: close\r\n\r\n`
  const fiveHundreds: string[] = []
  const timeouts: string[] = []
  const counts: Record<string, number> = {}
  let unhealthy = 0
  let cursor = 0
  async function worker (): Promise<void> {
    while (cursor < requests.length) {
      const index = cursor++
      const request = requests[index]
      const answer = await exchange(sockets, port, request)
      const code = /"code":"(\w+)"/.exec(answer.head)?.[1]
      const key = answer.statuses.length === 0 ? (answer.end === 'timeout' ? 'timeout' : 'closed, no answer') : answer.statuses.join('+') + (code === undefined ? '' : ` ${code}`) + (answer.end === 'kept alive' ? ' (kept alive)' : '')
      counts[key] = (counts[key] ?? 0) + 1
      if (answer.end === 'timeout') timeouts.push(`#${index} ${JSON.stringify(request.slice(0, 300))}`)
      if (answer.statuses.some((status) => status >= 500)) {
        fiveHundreds.push(`#${index} ${JSON.stringify(request.slice(0, 300))} -> ${JSON.stringify(answer.head)}`)
      }
      if (index % CHECK_EVERY === CHECK_EVERY - 1) {
        const check = await exchange(sockets, port, normal)
        if (check.statuses[0] !== 200) unhealthy++
        t.same(check.statuses, [200], `after ${index + 1} fuzz requests, a normal GET /users/1 gets 200`)
      }
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))

  t.comment(`answers: ${JSON.stringify(Object.entries(counts).sort((a, b) => b[1] - a[1]))}`)
  t.comment(`the upstream received ${up.requests.length} requests in ${Date.now() - started} ms`)
  t.same(fiveHundreds.slice(0, 10), [], `no 5xx answer (${fiveHundreds.length} in all)`)
  t.same(serverErrors.slice(0, 10), [], `the gateway sent no 5xx (${serverErrors.length} in all)`)
  t.same(timeouts.slice(0, 10), [], `every exchange ended with a whole answer, or the server closing the connection (${timeouts.length} timeouts)`)
  t.equal(unhealthy, 0, 'the gateway kept answering normal requests throughout')
  const escaped = up.requests
    .map((request) => ({ ...request, problem: violation(request, up.host, gatewayHost) }))
    .filter((request) => request.problem !== undefined)
  t.same(escaped.slice(0, 10), [], `every request upstream is under /v1/users, with no dot segment or encoded separator, and the target's Host (${escaped.length} not)`)
  t.ok(up.requests.length > TOTAL / 10, 'a fair share of the fuzz requests was routed upstream, so the checks above saw something')
  t.ok(app.server.listening, 'the gateway is still listening')
  const last = await exchange(sockets, port, normal)
  t.same(last.statuses, [200], 'and still serves at the end')
})
