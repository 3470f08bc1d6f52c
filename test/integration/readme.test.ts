/*
 * Every code block of README.md runs as shown, against the built package (dist/).
 *
 * Convention:
 * - Blocks tagged js, javascript, mjs, cjs, ts, typescript are whole programs a reader can
 *   copy: imports included, `await app.listen({ port: 3000 })` (or nothing to wait for) at
 *   the end. A JavaScript block with `import`/`export` statements runs as an ES module
 *   (.mjs), any other as CommonJS (.cjs); `mjs`/`cjs` tags force the kind. A TypeScript
 *   block is an ES module (.mts): it is type-checked with this repository's TypeScript under
 *   `strict` (module NodeNext) against the package's built types, then transpiled and run.
 * - Each block runs in a child process in a temp directory whose node_modules links
 *   `fastify-upstream` to this repository and every other package to its node_modules.
 * - Before it runs, the test changes only addresses: every http(s) origin of the block
 *   (`http://10.0.0.1:3000`, `http://127.0.0.1:8500`, ...) becomes a real upstream on
 *   127.0.0.1 started by the test, the other addresses a program names are substituted as
 *   PROGRAMS says (a DNS resolver), and `listen({ port: N })` becomes port 0.
 * - test/readme-harness.cjs is preloaded into the program. When the Fastify app listens,
 *   it sends the block's `requests` to it on 127.0.0.1, records the answers and closes the
 *   app; the program must then end on its own, with exit code 0, within the time limit.
 *   It also refuses any connection that is not to loopback and points DNS resolvers at the
 *   test's loopback DNS server.
 * - A block passes when it exits 0 with no uncaught error, logged no warning or error, got
 *   the expected statuses, and each proxied request reached one of the expected upstreams
 *   exactly once (hits counted by the upstreams).
 * - Every js/ts block must match exactly one entry of PROGRAMS or FRAGMENTS (by a marker
 *   found in the block), and every entry exactly one block. A fragment (an excerpt that
 *   cannot run, such as a type signature) is listed with the reason it is not run. Blocks
 *   of other languages are skipped for the reasons in SKIPPED.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test, type Test } from 'tap'
import ts from 'typescript'
import { startDnsServer } from '../dns-server'
import { etcdSkip, startEtcd } from '../etcd'
import type { Teardown } from '../helpers'

const root = join(__dirname, '..', '..')
const built = existsSync(join(root, 'dist', 'index.js'))
const harness = join(__dirname, '..', 'readme-harness.cjs')
const BLOCK_TIMEOUT = 15_000

// ---------------------------------------------------------------- what each block is

interface Upstream {
  label: string
  url: string
  port: number
  /** the request targets (path and query) it received */
  hits: string[]
}

interface Context extends Teardown {
  upstreams: Upstream[]
  /** [text of the block, replacement] */
  substitutions: Array<[string, string]>
  /** origins of servers the setup started that are no upstreams (etcd): left as they are */
  servers: string[]
  env: Record<string, string>
  start: (label: string, handler?: http.RequestListener) => Promise<Upstream>
}

interface Check {
  path: string
  method?: string
  headers?: Record<string, string>
  /** a request body (an app served over h2c only) */
  body64?: string
  status: number
  body?: RegExp
  /** trailers the answer must have (an app served over h2c only) */
  trailers?: Record<string, string | RegExp>
  /** a proxied request: the path the upstream must get, and the labels of the upstreams that may get it */
  reaches?: { path: string, on: string[] }
}

interface Program {
  name: string
  marker: string
  /** extra upstreams, servers and substitutions before the generic ones */
  setup?: (ctx: Context) => Promise<void>
  requests: Check[]
  /** checks of what the app logged (its JSON lines), after the requests */
  log?: (t: Test, entries: Array<Record<string, unknown>>, upstreams: Upstream[]) => void
  /** why the block cannot run here (a Debian package missing), false when it can */
  skip?: string | false
}

interface Fragment {
  marker: string
  reason: string
}

const PROGRAMS: Program[] = [
  {
    name: 'Quick start',
    marker: "rewritePrefix: '/v1/users'",
    requests: [
      { path: '/users/42?x=1', status: 200, reaches: { path: '/v1/users/42?x=1', on: ['http://10.0.0.1:3000', 'http://10.0.0.2:3000'] } },
      { path: '/me', status: 200, reaches: { path: '/v1/users/me', on: ['http://10.0.0.1:3000', 'http://10.0.0.2:3000'] } }
    ]
  },
  {
    name: 'access log (request.upstream)',
    marker: "}, 'access')",
    requests: [
      { path: '/users/7', status: 200, reaches: { path: '/7', on: ['http://10.0.0.1:3000', 'http://10.0.0.2:3000'] } }
    ],
    log (t, entries, upstreams) {
      const access = entries.filter((entry) => entry.msg === 'access')
      t.equal(access.length, 1, 'one access log line')
      t.match(access[0], { method: 'GET', url: '/users/7', status: 200, upstreamStatus: '200', upstreamPool: 'users', upstreamHeaderTime: /^\d+\.\d$/ }, 'the access log line holds the request and its upstream')
      t.ok(upstreams.some((upstream) => upstream.url === access[0]?.upstream), 'the access log names the target')
    }
  },
  {
    name: 'custom balancer (TypeScript)',
    marker: 'class FirstAvailable',
    requests: [1, 2, 3].map((n) => ({ path: `/a/${n}`, status: 200, reaches: { path: `/${n}`, on: ['http://10.0.0.1:3000'] } }))
  },
  {
    name: 'DNS discovery',
    marker: "type: 'dns-srv'",
    async setup (ctx) {
      const dns = await startDnsServer(ctx)
      const api = await ctx.start('api.internal')
      const search = await ctx.start('_http._tcp.search.internal')
      dns.records.set('api.internal', { A: ['127.0.0.1'] })
      dns.records.set('_http._tcp.search.internal', { SRV: [{ priority: 10, weight: 5, port: search.port, target: '127.0.0.1' }] })
      ctx.substitutions.push(['10.0.0.2:53', dns.address], ['port: 8080', `port: ${api.port}`])
      ctx.env.README_DNS_SERVER = dns.address
    },
    requests: [
      { path: '/api/x', status: 200, reaches: { path: '/x', on: ['api.internal'] } },
      { path: '/search/y?q=1', status: 200, reaches: { path: '/y?q=1', on: ['_http._tcp.search.internal'] } }
    ]
  },
  {
    name: 'discovery source of your own (Consul)',
    marker: '/v1/health/service/',
    async setup (ctx) {
      const service = await ctx.start('api service')
      const consul = await ctx.start('consul', (req, res) => {
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify(req.url === '/v1/health/service/api?passing=true' ? [{ Service: { Address: '127.0.0.1', Port: service.port } }] : []))
      })
      ctx.substitutions.push(['http://127.0.0.1:8500', consul.url])
    },
    requests: [
      { path: '/api/hello', status: 200, reaches: { path: '/hello', on: ['api service'] } }
    ]
  },
  {
    name: 'WebSocket',
    marker: 'websocket: true',
    async setup (ctx) {
      ctx.env.CHAT_TOKEN = 'readme-token'
    },
    requests: [
      { path: '/chat/room', status: 401 },
      { path: '/chat/room', headers: { authorization: 'Bearer readme-token' }, status: 200, reaches: { path: '/room', on: ['http://10.0.0.1:8080', 'http://10.0.0.2:8080'] } }
    ]
  },
  {
    name: 'sticky sessions',
    marker: "name: 'cart-route'",
    requests: [
      { path: '/cart/items', status: 200, reaches: { path: '/items', on: ['http://10.0.0.1:8080', 'http://10.0.0.2:8080'] } }
    ]
  },
  {
    name: 'pools and targets from etcd',
    marker: "prefix: '/gateway/pools/'",
    skip: etcdSkip,
    async setup (ctx) {
      const etcd = await startEtcd(ctx)
      const api = await ctx.start('api target')
      const orders = await ctx.start('orders target')
      await etcd.put('/services/api/a', api.url)
      await etcd.put('/gateway/pools/orders', JSON.stringify({ targets: [orders.url] }))
      for (const member of ['http://10.0.0.5:2379', 'http://10.0.0.6:2379', 'http://10.0.0.7:2379']) ctx.substitutions.push([member, etcd.endpoints[0]])
      ctx.servers.push(etcd.endpoints[0])
    },
    requests: [
      { path: '/api/x', status: 200, reaches: { path: '/x', on: ['api target'] } },
      { path: '/orders/7', status: 200, reaches: { path: '/7', on: ['orders target'] } }
    ]
  },
  {
    name: 'a target that registers itself in etcd',
    marker: 'registerTarget({',
    skip: etcdSkip,
    async setup (ctx) {
      const etcd = await startEtcd(ctx)
      ctx.substitutions.push(['http://10.0.0.5:2379', etcd.endpoints[0]])
      ctx.servers.push(etcd.endpoints[0])
    },
    requests: [
      { path: '/hello', status: 200, body: /"hello":"from a target"/ }
    ]
  },
  {
    name: 'canary split with a rollout',
    marker: "key: 'cookie:session'",
    requests: [
      { path: '/checkout/cart', headers: { 'x-canary': 'always' }, status: 200, reaches: { path: '/cart', on: ['http://10.0.1.1:8080'] } },
      { path: '/checkout/pay', headers: { cookie: 'staff=1' }, status: 200, reaches: { path: '/pay', on: ['http://10.0.1.1:8080'] } },
      { path: '/checkout/items?x=1', headers: { cookie: 'session=abc' }, status: 200, reaches: { path: '/items?x=1', on: ['http://10.0.0.1:8080', 'http://10.0.0.2:8080', 'http://10.0.1.1:8080'] } }
    ]
  },
  {
    name: 'gRPC through a mount',
    marker: "type: 'grpc'",
    async setup (ctx) {
      for (const [origin, label] of [['http://10.0.3.1:50051', 'greeter a'], ['http://10.0.3.2:50051', 'greeter b']]) {
        const target = await startGrpcTarget(ctx, label)
        ctx.substitutions.push([origin, target.url])
      }
    },
    requests: [
      {
        path: '/helloworld.Greeter/SayHello',
        method: 'POST',
        headers: { 'content-type': 'application/grpc', te: 'trailers' },
        body64: grpcFrame('\n\u0005world'),
        status: 200,
        body: /greeter [ab]/,
        trailers: { 'grpc-status': '0' },
        reaches: { path: '/helloworld.Greeter/SayHello', on: ['greeter a', 'greeter b'] }
      },
      {
        path: '/helloworld.Greeter/SayHelloAgain',
        method: 'POST',
        headers: { 'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': '1S' },
        body64: grpcFrame(''),
        status: 200,
        trailers: { 'grpc-status': '0' },
        reaches: { path: '/helloworld.Greeter/SayHelloAgain', on: ['greeter a', 'greeter b'] }
      }
    ]
  },
  {
    name: 'status route',
    marker: 'statusRoute: {',
    async setup (ctx) {
      ctx.env.OPS_TOKEN = 'readme-token'
    },
    requests: [
      { path: '/_upstreams', status: 401 },
      { path: '/_upstreams', headers: { authorization: 'Bearer wrong' }, status: 401 },
      { path: '/_upstreams', headers: { authorization: 'Bearer readme-token' }, status: 200, body: /"pools":\{"api":/ },
      { path: '/_upstreams/metrics', headers: { authorization: 'Bearer readme-token' }, status: 200, body: /fastify_upstream_requests_total/ }
    ]
  }
]

/**
 * A gRPC target as the README's gRPC block needs one, on cleartext HTTP/2 (node:http2):
 * it answers grpc.health.v1.Health/Check with SERVING and any other call with its own
 * label as the message, then `grpc-status: 0` in the trailers. Health checks are not hits.
 */
async function startGrpcTarget (ctx: Context, label: string): Promise<Upstream> {
  const server = http2.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      if (req.url !== '/grpc.health.v1.Health/Check') upstream.hits.push(req.url)
      const message = req.url === '/grpc.health.v1.Health/Check' ? Buffer.from([0x08, 1]) : Buffer.from(label)
      const frame = Buffer.alloc(5 + message.length)
      frame.writeUInt32BE(message.length, 1)
      message.copy(frame, 5)
      res.setHeader('content-type', 'application/grpc')
      res.addTrailers({ 'grpc-status': '0', 'grpc-message': '' })
      res.end(frame)
    })
  })
  const sessions = new Set<http2.ServerHttp2Session>()
  server.on('session', (session) => { sessions.add(session); session.on('close', () => sessions.delete(session)) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  const upstream: Upstream = { label, url: `http://127.0.0.1:${port}`, port, hits: [] }
  ctx.teardown(() => new Promise<void>((resolve) => {
    for (const session of sessions) session.destroy()
    server.close(() => resolve())
  }))
  ctx.upstreams.push(upstream)
  return upstream
}

/** A gRPC request's body: one message in gRPC's frame, base64 (for Check.body64). */
function grpcFrame (message: string): string {
  const bytes = Buffer.from(message)
  const frame = Buffer.alloc(5 + bytes.length)
  frame.writeUInt32BE(bytes.length, 1)
  bytes.copy(frame, 5)
  return frame.toString('base64')
}

// Excerpts that cannot run as they are. Keep this short: examples are whole programs.
const FRAGMENTS: Fragment[] = []

// Languages that are not run, and why.
const SKIPPED: Record<string, string> = {
  sh: 'shell commands (install, demo, the test suite itself)',
  shell: 'shell commands',
  bash: 'shell commands',
  console: 'a terminal session',
  text: 'plain text',
  '': 'untagged: a diagram or plain text, not code'
}

const JS = new Set(['js', 'javascript', 'mjs', 'cjs'])
const TS = new Set(['ts', 'typescript'])

// ---------------------------------------------------------------- reading the README

interface Block { line: number, lang: string, code: string }

function extractBlocks (markdown: string): Block[] {
  const blocks: Block[] = []
  const lines = markdown.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const open = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/.exec(lines[i])
    if (open === null) continue
    const fence = open[1]
    const body: string[] = []
    let j = i + 1
    for (; j < lines.length; j++) {
      const close = /^ {0,3}(`{3,}|~{3,})\s*$/.exec(lines[j])
      if (close !== null && close[1][0] === fence[0] && close[1].length >= fence.length) break
      body.push(lines[j])
    }
    blocks.push({ line: i + 1, lang: open[2].toLowerCase(), code: body.join('\n') + '\n' })
    i = j
  }
  return blocks
}

// ---------------------------------------------------------------- running a block

/** An upstream that records what it received; `t` closes it. */
async function startUpstream (t: Teardown, label: string, handler?: http.RequestListener): Promise<Upstream> {
  const hits: string[] = []
  const server = http.createServer((req, res) => {
    hits.push(req.url ?? '')
    if (handler !== undefined) return handler(req, res)
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ upstream: label, url: req.url }))
  })
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', resolve) })
  const port = (server.address() as AddressInfo).port
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  return { label, url: `http://127.0.0.1:${port}`, port, hits }
}

/** node_modules of the temp directory: this package by name, every other one from the repository */
function linkModules (dir: string): void {
  const modules = join(dir, 'node_modules')
  mkdirSync(modules)
  symlinkSync(root, join(modules, 'fastify-upstream'), 'dir')
  for (const name of readdirSync(join(root, 'node_modules'))) {
    if (name.startsWith('.') || name === 'fastify-upstream') continue
    symlinkSync(join(root, 'node_modules', name), join(modules, name), 'dir')
  }
}

function typeCheck (file: string): string {
  const program = ts.createProgram([file], {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    lib: ['lib.es2022.d.ts'],
    types: ['node'],
    typeRoots: [join(root, 'node_modules', '@types')]
  })
  const diagnostics = ts.getPreEmitDiagnostics(program)
  return ts.formatDiagnostics(diagnostics, {
    getCanonicalFileName: (name) => name,
    getCurrentDirectory: () => root,
    getNewLine: () => '\n'
  })
}

interface Run { code: number | null, signal: NodeJS.Signals | null, timedOut: boolean, stdout: string, stderr: string }

function runNode (file: string, cwd: string, env: Record<string, string>): Promise<Run> {
  return new Promise((resolve, reject) => {
    // a clean environment: none of the test runner's loaders or options reach the program
    const child = spawn(process.execPath, ['--require', harness, file], {
      cwd,
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let stdout = ''
    let stderr = ''
    let timedOut = false
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL') }, BLOCK_TIMEOUT)
    child.once('error', (error) => { clearTimeout(timer); reject(error) })
    child.once('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, timedOut, stdout, stderr }) })
  })
}

const ORIGIN = /\bhttps?:\/\/(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::\d+)?/g

interface Results { listened: number, responses: Array<{ path: string, status: number, body: string, trailers?: Record<string, string> }>, violations: string[], error?: string }

function runBlock (block: Block, spec: Program, tmp: string, index: number): (t: Test) => Promise<void> {
  return async (t) => {
    const dir = join(tmp, `block-${index}`)
    mkdirSync(dir)
    const ctx: Context = {
      upstreams: [],
      substitutions: [],
      servers: [],
      env: {},
      start: async (label, handler) => {
        const upstream = await startUpstream(t, label, handler)
        ctx.upstreams.push(upstream)
        return upstream
      },
      teardown: (fn) => { t.teardown(fn) }
    }
    await spec.setup?.(ctx)

    // addresses only: the named ones, then every other origin, then the listening port
    let code = block.code
    for (const [from, to] of ctx.substitutions) {
      t.ok(code.includes(from), `the block uses ${from}`)
      code = code.split(from).join(to)
    }
    const ours = new Set([...ctx.upstreams.map((upstream) => upstream.url), ...ctx.servers])
    for (const origin of new Set(code.match(ORIGIN) ?? [])) {
      if (ours.has(origin)) continue
      const upstream = await ctx.start(origin)
      ours.add(upstream.url)
      code = code.split(origin).join(upstream.url)
    }
    code = code.replace(/\.listen\(\s*\{\s*port:\s*\d+/g, '.listen({ port: 0')
    // nothing but loopback is left to connect to
    const elsewhere = [
      ...(code.match(ORIGIN) ?? []).filter((origin) => !ours.has(origin)),
      ...(code.match(/\b\d{1,3}(?:\.\d{1,3}){3}\b/g) ?? []).filter((ip) => ip !== '127.0.0.1'),
      ...(code.match(/localhost:\d+/g) ?? [])
    ]
    t.same(elsewhere, [], 'every address left in the program is a test upstream on 127.0.0.1')

    const typescript = TS.has(block.lang)
    const esm = typescript || block.lang === 'mjs' || (block.lang !== 'cjs' && /^\s*(?:import|export)\s/m.test(code))
    let file: string
    if (typescript) {
      const source = join(dir, 'block.mts')
      writeFileSync(source, code)
      const errors = typeCheck(source)
      t.equal(errors, '', 'type-checks under strict against the built types')
      if (errors !== '') return
      file = join(dir, 'block.mjs')
      writeFileSync(file, transpile(code))
    } else {
      file = join(dir, esm ? 'block.mjs' : 'block.cjs')
      writeFileSync(file, code)
    }

    const resultsFile = join(dir, 'results.json')
    const env = {
      ...ctx.env,
      README_RESULTS: resultsFile,
      README_REQUESTS: JSON.stringify(spec.requests.map(({ path, method, headers, body64 }) => ({ path, method, headers, body64 })))
    }
    const run = await runNode(file, dir, env)
    const output = `--- program (${esm ? 'ES module' : 'CommonJS'}) ---\n${code}--- stdout ---\n${run.stdout.slice(-4000)}--- stderr ---\n${run.stderr.slice(-4000)}`
    t.notOk(run.timedOut, `ended on its own within ${BLOCK_TIMEOUT} ms`, { diagnostic: run.timedOut, output })
    t.equal(run.code, 0, 'exit code 0', { diagnostic: run.code !== 0, output })
    t.equal(run.stderr, '', 'nothing on stderr (no uncaught error, no warning)', { output })
    if (run.timedOut || run.code !== 0) return

    const results = JSON.parse(readFileSync(resultsFile, 'utf8')) as Results
    t.same(results.violations, [], 'connected to loopback only')
    t.equal(results.error, undefined, 'the requests were sent')
    if (spec.requests.length > 0) t.equal(results.listened, 1, 'the app listened')

    // the app's log: nothing at warn or above
    const entries = run.stdout.split('\n').flatMap((line) => {
      if (!line.startsWith('{')) return []
      try { return [JSON.parse(line) as Record<string, unknown>] } catch { return [] }
    })
    t.same(entries.filter((entry) => (entry.level as number) >= 40), [], 'no warning or error logged')

    spec.requests.forEach((check, i) => {
      const response = results.responses[i]
      if (response === undefined) { t.fail(`${check.path}: no answer`, { output }); return }
      t.equal(response.status, check.status, `${check.path} -> ${check.status}`, { body: response.body })
      if (check.body !== undefined) t.match(response.body, check.body, `${check.path}: body`)
      if (check.trailers !== undefined) t.match(response.trailers, check.trailers, `${check.path}: trailers`)
      if (check.reaches !== undefined) {
        const reached = ctx.upstreams.flatMap((upstream) => upstream.hits.filter((hit) => hit === check.reaches!.path).map(() => upstream.label))
        t.equal(reached.length, 1, `${check.path} reached an upstream once, as ${check.reaches.path}`)
        t.ok(reached.every((label) => check.reaches!.on.includes(label)), `${check.path} reached ${check.reaches.on.join(' or ')}`, { reached })
      }
    })
    spec.log?.(t, entries, ctx.upstreams)
  }
}

function transpile (code: string): string {
  return ts.transpileModule(code, {
    compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext }
  }).outputText
}

// ---------------------------------------------------------------- the test

test('README code blocks run as shown', { skip: !built && 'run npm run build first', timeout: 90_000 }, async (t) => {
  const blocks = extractBlocks(readFileSync(join(root, 'README.md'), 'utf8'))
  const tmp = mkdtempSync(join(tmpdir(), 'fastify-upstream-readme-'))
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }))
  linkModules(tmp)

  const code = blocks.filter((block) => JS.has(block.lang) || TS.has(block.lang))
  t.ok(code.length > 0, 'the README has code blocks')

  for (const block of blocks) {
    if (JS.has(block.lang) || TS.has(block.lang)) continue
    const reason = SKIPPED[block.lang]
    if (reason === undefined) {
      t.fail(`README.md:${block.line}: a block tagged "${block.lang}": tag it js or ts (and run it), or add the tag to SKIPPED with a reason`)
    } else if (block.lang === '' && /\b(?:require\(|import |await |const |app\.)/.test(block.code)) {
      t.fail(`README.md:${block.line}: an untagged block that looks like code: tag it`)
    } else {
      t.comment(`README.md:${block.line}: ${block.lang || 'untagged'} block not run: ${reason}`)
    }
  }

  // every entry names exactly one block, every block has exactly one entry
  for (const entry of [...PROGRAMS, ...FRAGMENTS]) {
    const matching = code.filter((block) => block.code.includes(entry.marker))
    t.equal(matching.length, 1, `exactly one block holds ${JSON.stringify(entry.marker)}`)
  }

  let index = 0
  for (const block of code) {
    const programs = PROGRAMS.filter((spec) => block.code.includes(spec.marker))
    const fragments = FRAGMENTS.filter((spec) => block.code.includes(spec.marker))
    if (programs.length + fragments.length !== 1) {
      t.fail(`README.md:${block.line}: a ${block.lang} block is neither a listed program nor a listed fragment (or is several): add it to PROGRAMS with the requests that check it, or to FRAGMENTS with a reason`, { code: block.code })
      continue
    }
    if (fragments.length === 1) {
      t.comment(`README.md:${block.line}: fragment, not run: ${fragments[0].reason}`)
      continue
    }
    const spec = programs[0]
    await t.test(`README.md:${block.line} ${spec.name} (${block.lang})`, { timeout: 20_000, skip: spec.skip ?? false }, runBlock(block, spec, tmp, index++))
  }
})
