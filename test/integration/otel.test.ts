import http from 'node:http'
import http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import { test } from 'tap'
import { context, propagation, SpanKind, trace } from '@opentelemetry/api'
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-node'
import { UndiciInstrumentation } from '@opentelemetry/instrumentation-undici'
import { FastifyOtelInstrumentation } from '@fastify/otel'
import fastifyUpstream, { type FastifyUpstreamOptions } from '../../lib/index'
import { listen, startGateway, startUpstream, until, type Teardown, type Upstream } from '../helpers'

// The caller's trace context: what a traced client sends to the gateway.
const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736'
const CALLER = `00-${TRACE_ID}-00f067aa0ba902b7-01`
const CALLER_STATE = 'caller=1'

/** The trace headers a target received with one request, each line as sent (no joining). */
interface Seen { path: string, traceparent: string[], tracestate: string[] }

function linesOf (req: http.IncomingMessage, name: string): string[] {
  const lines: string[] = []
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i].toLowerCase() === name) lines.push(req.rawHeaders[i + 1])
  }
  return lines
}

/** A target that records the trace headers of each request, answering `status`; `t` closes it. */
async function recording (t: Teardown, name: string, status = 200): Promise<Upstream & { seen: Seen[] }> {
  const seen: Seen[] = []
  const upstream = await startUpstream(t, name, (req, res) => {
    seen.push({ path: req.url as string, traceparent: linesOf(req, 'traceparent'), tracestate: linesOf(req, 'tracestate') })
    res.statusCode = status
    res.setHeader('x-upstream', name)
    res.end(name)
  })
  return Object.assign(upstream, { seen })
}

/**
 * The caller: node:http, which nothing instruments here (undici's instrumentation would
 * trace a fetch and add its own traceparent to the caller's).
 */
function call (url: string): Promise<{ status: number, body: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, { headers: { traceparent: CALLER, tracestate: CALLER_STATE } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode as number, body }))
    }).on('error', reject)
  })
}

test('without tracing in the gateway, the caller\'s trace context passes through unchanged', async (t) => {
  const target = await recording(t, 'plain')
  const { url } = await startGateway(t, { upstreams: { api: { targets: [target.url] } }, routes: [{ prefix: '/', upstream: 'api' }] })
  t.equal((await call(`${url}/a`)).status, 200)
  t.same(target.seen, [{ path: '/a', traceparent: [CALLER], tracestate: [CALLER_STATE] }])
})

test('traced with OpenTelemetry (undici instrumentation, @fastify/otel)', async (t) => {
  const exporter = new InMemorySpanExporter()
  const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
  provider.register()
  const undici = new UndiciInstrumentation()
  const fastifyOtel = new FastifyOtelInstrumentation()
  t.teardown(async () => {
    undici.disable()
    fastifyOtel.disable()
    await provider.shutdown()
    trace.disable()
    context.disable()
    propagation.disable()
  })

  async function gateway (t: Teardown, options: FastifyUpstreamOptions): Promise<{ url: string }> {
    const app = Fastify()
    await app.register(fastifyOtel.plugin())
    await app.register(fastifyUpstream, options)
    return { url: await listen(t, app) }
  }

  const clientSpans = (): ReadableSpan[] => exporter.getFinishedSpans().filter((span) => span.kind === SpanKind.CLIENT)

  t.test('the target gets one traceparent, the attempt\'s, in the caller\'s trace', async (t) => {
    exporter.reset()
    const target = await recording(t, 'one')
    const gw = await gateway(t, { upstreams: { api: { targets: [target.url] } }, routes: [{ prefix: '/', upstream: 'api' }] })
    t.equal((await call(`${gw.url}/a`)).status, 200)
    await until('the attempt\'s span', () => clientSpans().length === 1)
    const [span] = clientSpans()
    t.equal(span.spanContext().traceId, TRACE_ID, 'the attempt is in the caller\'s trace')
    t.equal(target.seen.length, 1)
    t.same(target.seen[0].traceparent, [`00-${TRACE_ID}-${span.spanContext().spanId}-01`], 'exactly one traceparent: the attempt\'s')
    t.same(target.seen[0].tracestate, [CALLER_STATE], 'one tracestate, the caller\'s, carried by the trace')
    t.equal(span.attributes['fastify_upstream.pool'], 'api')
    t.equal(span.attributes['http.request.resend_count'], undefined, 'no resend count on a first attempt')
  })

  t.test('HTTP/2 targets: each attempt is a span too, and the target gets its traceparent', async (t) => {
    exporter.reset()
    const seen: Array<string | string[] | undefined> = []
    const server = http2.createServer((req, res) => {
      seen.push(req.headers.traceparent)
      res.end('h2')
    })
    const sessions = new Set<http2.ServerHttp2Session>()
    server.on('session', (session) => { sessions.add(session) })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    t.teardown(() => { for (const session of sessions) session.destroy(); server.close() })
    const gw = await gateway(t, {
      upstreams: { h2: { targets: [`http://127.0.0.1:${(server.address() as AddressInfo).port}`], http2: 'h2c' } },
      routes: [{ prefix: '/', upstream: 'h2' }]
    })
    t.same(await call(`${gw.url}/h`), { status: 200, body: 'h2' })
    await until('the attempt\'s span', () => clientSpans().length === 1)
    const [span] = clientSpans()
    t.equal(span.spanContext().traceId, TRACE_ID, 'in the caller\'s trace')
    t.match(span.attributes, { 'fastify_upstream.pool': 'h2', 'http.response.status_code': 200, 'http.request.method': 'GET' })
    t.same(seen, [`00-${TRACE_ID}-${span.spanContext().spanId}-01`], 'one traceparent, the attempt\'s')
  })

  t.test('with undici traced but not the server side, the attempt is a child of the caller\'s span', async (t) => {
    exporter.reset()
    const target = await recording(t, 'child')
    const { url } = await startGateway(t, { upstreams: { api: { targets: [target.url] } }, routes: [{ prefix: '/', upstream: 'api' }] })
    t.equal((await call(`${url}/c`)).status, 200)
    await until('the attempt\'s span', () => clientSpans().length === 1)
    const [span] = clientSpans()
    t.equal(span.spanContext().traceId, TRACE_ID)
    t.equal(span.parentSpanContext?.spanId, '00f067aa0ba902b7', 'its parent is the caller\'s span')
    t.same(target.seen.map((s) => s.traceparent), [[`00-${TRACE_ID}-${span.spanContext().spanId}-01`]])
    t.same(target.seen.map((s) => s.tracestate), [[CALLER_STATE]])
  })

  t.test('a retry: one span per attempt under the same parent, named by pool, attempt and reason', async (t) => {
    exporter.reset()
    const busy = await recording(t, 'busy', 503)
    const good = await recording(t, 'good')
    const gw = await gateway(t, {
      upstreams: { api: { targets: [busy.url, good.url], balancer: 'round-robin', retry: { statusCodes: [503], backoff: { base: 0 } } } },
      routes: [{ prefix: '/', upstream: 'api' }]
    })
    const res = await call(`${gw.url}/r`)
    t.same(res, { status: 200, body: 'good' })
    await until('both attempts\' spans', () => clientSpans().length === 2)
    const [first, second] = clientSpans().sort((a, b) => Number(a.attributes['http.request.resend_count'] ?? 0) - Number(b.attributes['http.request.resend_count'] ?? 0))
    t.equal(first.spanContext().traceId, TRACE_ID)
    t.equal(second.spanContext().traceId, TRACE_ID)
    t.equal(first.parentSpanContext?.spanId, second.parentSpanContext?.spanId, 'both under the same span')
    await until('the request\'s spans', () => exporter.getFinishedSpans().some((span) => span.spanContext().spanId === first.parentSpanContext?.spanId))
    const parent = exporter.getFinishedSpans().find((span) => span.spanContext().spanId === first.parentSpanContext?.spanId) as ReadableSpan
    t.not(parent.kind, SpanKind.CLIENT, 'a span of the gateway\'s request')
    t.equal(parent.spanContext().traceId, TRACE_ID)
    t.match(first.attributes, { 'fastify_upstream.pool': 'api', 'http.response.status_code': 503 })
    t.equal(first.attributes['http.request.resend_count'], undefined)
    t.equal(first.attributes['fastify_upstream.retry_reason'], undefined)
    t.match(second.attributes, { 'fastify_upstream.pool': 'api', 'http.request.resend_count': 1, 'fastify_upstream.retry_reason': 'status 503', 'http.response.status_code': 200 })
    t.same(busy.seen.map((s) => s.traceparent), [[`00-${TRACE_ID}-${first.spanContext().spanId}-01`]], 'each target got its own attempt\'s traceparent')
    t.same(good.seen.map((s) => s.traceparent), [[`00-${TRACE_ID}-${second.spanContext().spanId}-01`]])
  })

  t.test('active health-check probes are not traced and send no trace headers', async (t) => {
    exporter.reset()
    const target = await recording(t, 'probed')
    await gateway(t, { upstreams: { api: { targets: [target.url], healthCheck: { active: { path: '/health', interval: 20, jitter: 0 } } } } })
    await until('a few probes', () => target.seen.length >= 5)
    t.ok(target.seen.every((s) => s.path === '/health' && s.traceparent.length === 0 && s.tracestate.length === 0), 'no trace headers on probes')
    t.same(exporter.getFinishedSpans().map((span) => span.name), [], 'no span for any probe')
  })
})
