// gRPC through a mount: real @grpc/grpc-js servers as targets and grpc-js clients (and
// node:http2 clients, to see the frames) talking to a Fastify app served over HTTP/2, h2c
// and TLS; the gRPC health-checking protocol as an active check.
import { once } from 'node:events'
import http from 'node:http'
import http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import * as grpc from '@grpc/grpc-js'
import Fastify, { type FastifyInstance } from 'fastify'
import { test } from 'tap'
import fastifyUpstream, { type FastifyUpstreamOptions } from '../../lib/index'
import { healthCheckRequest, servingStatus, SERVING } from '../../lib/health/grpc-probe'
import { grpcMessage, grpcStatusOf, grpcTimeout } from '../../lib/proxy/grpc'
import { closedPort, registerError, sleep, until, type Teardown } from '../helpers'
import { ca, skip, upstreamCert } from '../private-ca'

const bytes = (b: Buffer): Buffer => b
function method (path: string, requestStream: boolean, responseStream: boolean): grpc.MethodDefinition<Buffer, Buffer> {
  return { path, requestStream, responseStream, requestSerialize: bytes, requestDeserialize: bytes, responseSerialize: bytes, responseDeserialize: bytes }
}

// A test service with raw bytes as messages (no protobuf needed to carry them)
const Echo = {
  unary: method('/test.Echo/Unary', false, false),
  fail: method('/test.Echo/Fail', false, false),
  hang: method('/test.Echo/Hang', false, false),
  count: method('/test.Echo/Count', true, false),
  repeat: method('/test.Echo/Repeat', false, true),
  chat: method('/test.Echo/Chat', true, true)
}
const Health = { check: method('/grpc.health.v1.Health/Check', false, false) }

interface EchoServer {
  url: string
  /** calls received, by method name */
  calls: Record<string, number>
  /** Hang calls the client (or the gateway) cancelled */
  cancelled: number
  /** the ms each call had left before its deadline when it arrived (none: no deadline) */
  deadlines: number[]
  /** the health status answered per service ('' the whole server); a missing service is NOT_FOUND */
  health: Map<string, number>
  server: grpc.Server
}

async function startEchoServer (t: Teardown, name: string, secure = false): Promise<EchoServer> {
  const server = new grpc.Server()
  const state: EchoServer = { url: '', calls: {}, cancelled: 0, deadlines: [], health: new Map([['', SERVING]]), server }
  const seen = (call: { metadata: grpc.Metadata }, what: string): void => {
    state.calls[what] = (state.calls[what] ?? 0) + 1
    const deadline = Number((call as unknown as { getDeadline: () => number | Date }).getDeadline())
    if (Number.isFinite(deadline)) state.deadlines.push(deadline - Date.now())
  }
  const trailing = (): grpc.Metadata => {
    const metadata = new grpc.Metadata()
    metadata.set('x-served-by', name)
    return metadata
  }
  server.addService(Echo, {
    unary (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
      seen(call, 'unary')
      const header = new grpc.Metadata()
      header.set('x-header', 'early')
      call.sendMetadata(header)
      callback(null, Buffer.concat([Buffer.from(name + ':'), call.request]), trailing())
    },
    fail (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
      seen(call, 'fail')
      callback({ code: grpc.status.NOT_FOUND, details: 'no such thing: ü' })
    },
    hang (call: grpc.ServerUnaryCall<Buffer, Buffer>) {
      seen(call, 'hang')
      call.on('cancelled', () => { state.cancelled++ })
    },
    count (call: grpc.ServerReadableStream<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
      seen(call, 'count')
      let total = 0
      let messages = 0
      call.on('data', (chunk: Buffer) => { total += chunk.length; messages++ })
      call.on('end', () => { callback(null, Buffer.from(`${messages}/${total}`), trailing()) })
    },
    repeat (call: grpc.ServerWritableStream<Buffer, Buffer>) {
      seen(call, 'repeat')
      const times = Number(call.request.toString())
      for (let i = 0; i < times; i++) call.write(Buffer.from(`${i}`))
      call.end(trailing())
    },
    chat (call: grpc.ServerDuplexStream<Buffer, Buffer>) {
      seen(call, 'chat')
      call.on('data', (chunk: Buffer) => { call.write(Buffer.concat([Buffer.from('re:'), chunk])) })
      call.on('end', () => { call.end(trailing()) })
    }
  })
  server.addService(Health, {
    check (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
      seen(call, 'health')
      // HealthCheckRequest: field 1, the service name
      const service = call.request.length > 2 ? call.request.subarray(2).toString() : ''
      const status = state.health.get(service)
      if (status === undefined) callback({ code: grpc.status.NOT_FOUND, details: 'unknown service' })
      else callback(null, Buffer.from([0x08, status]))
    }
  })
  const credentials = secure
    ? grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(upstreamCert.key), cert_chain: Buffer.from(upstreamCert.cert) }])
    : grpc.ServerCredentials.createInsecure()
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', credentials, (error, port) => { if (error !== null) reject(error); else resolve(port) })
  })
  state.url = `${secure ? 'https' : 'http'}://127.0.0.1:${port}`
  t.teardown(() => { server.forceShutdown() })
  return state
}

/** A Fastify app served over HTTP/2 (h2c, or TLS with `secure`), with the plugin. */
async function startGrpcGateway (t: Teardown, options: FastifyUpstreamOptions, secure = false): Promise<{ app: FastifyInstance, address: string, port: number }> {
  // the plugin registers on an HTTP/2 app as it is typed (no cast)
  let app: FastifyInstance
  if (secure) {
    const h2 = Fastify({ http2: true, https: { ...upstreamCert, allowHTTP1: true } })
    await h2.register(fastifyUpstream, options)
    app = h2 as unknown as FastifyInstance
  } else {
    const h2c = Fastify({ http2: true })
    await h2c.register(fastifyUpstream, options)
    app = h2c as unknown as FastifyInstance
  }
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = (app.server.address() as AddressInfo).port
  return { app, address: `127.0.0.1:${port}`, port }
}

type EchoClient = grpc.Client & Record<keyof typeof Echo, (...args: any[]) => any>
const EchoClientCtor = grpc.makeGenericClientConstructor(Echo, 'Echo') as unknown as new (address: string, credentials: grpc.ChannelCredentials) => EchoClient

function client (t: Teardown, address: string, secure = false): EchoClient {
  const made = new EchoClientCtor(address, secure ? grpc.credentials.createSsl(Buffer.from(ca)) : grpc.credentials.createInsecure())
  t.teardown(() => { made.close() })
  return made
}

interface UnaryResult { error: grpc.ServiceError | null, value?: Buffer, headers?: grpc.Metadata, trailers?: grpc.Metadata }

function unary (c: EchoClient, name: 'unary' | 'fail' | 'hang' | 'repeat', body: Buffer, options: grpc.CallOptions = {}): Promise<UnaryResult> {
  return new Promise((resolve) => {
    const result: UnaryResult = { error: null }
    const call = c[name](body, new grpc.Metadata(), options, (error: grpc.ServiceError | null, value?: Buffer) => {
      result.error = error
      result.value = value
    })
    call.on('metadata', (metadata: grpc.Metadata) => { result.headers = metadata })
    call.on('status', (status: grpc.StatusObject) => {
      result.trailers = status.metadata
      // the callback runs before 'status'
      setImmediate(() => resolve(result))
    })
  })
}

/** One HTTP/2 request to the gateway as a gRPC client sends it, with what came back frame by frame. */
async function rawCall (port: number, path: string, headers: http2.OutgoingHttpHeaders = {}): Promise<{ headers: http2.IncomingHttpHeaders, endedWithHeaders: boolean, trailers?: http2.IncomingHttpHeaders, body: Buffer, ms: number }> {
  const session = http2.connect(`http://127.0.0.1:${port}`)
  session.on('error', () => {})
  const started = Date.now()
  try {
    const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers })
    const chunks: Buffer[] = []
    let trailers: http2.IncomingHttpHeaders | undefined
    stream.on('trailers', (received) => { trailers = received })
    stream.on('data', (chunk: Buffer) => chunks.push(chunk))
    stream.end(healthCheckRequest('x'))
    const [response, flags] = await once(stream, 'response') as [http2.IncomingHttpHeaders, number]
    await once(stream, 'close')
    return { headers: response, endedWithHeaders: (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0, trailers, body: Buffer.concat(chunks), ms: Date.now() - started }
  } finally {
    session.close()
  }
}

test('unary calls pass through an h2c mount to h2c targets: message, headers and trailers', async (t) => {
  const target = await startEchoServer(t, 'a')
  const { address } = await startGrpcGateway(t, {
    upstreams: { grpc: { targets: [target.url], http2: 'h2c' } },
    routes: [{ prefix: '/test.Echo', upstream: 'grpc', rewritePrefix: '/test.Echo' }]
  })
  const c = client(t, address)
  for (let i = 0; i < 3; i++) {
    const result = await unary(c, 'unary', Buffer.from(`hello ${i}`))
    t.equal(result.error, null, 'the call succeeds')
    t.equal(result.value?.toString(), `a:hello ${i}`, 'the message comes back')
    t.same(result.headers?.get('x-header'), ['early'], 'the response metadata (headers) comes back')
    t.same(result.trailers?.get('x-served-by'), ['a'], 'the trailing metadata comes back')
  }
  t.equal(target.calls.unary, 3)
})

test('a status the target answers with reaches the client: with a message, and as Trailers-Only', async (t) => {
  const target = await startEchoServer(t, 'a')
  const { address, port } = await startGrpcGateway(t, {
    upstreams: { grpc: { targets: [target.url], http2: 'h2c' } },
    routes: [{ prefix: '/', upstream: 'grpc' }]
  })
  const result = await unary(client(t, address), 'fail', Buffer.from('x'))
  t.equal(result.error?.code, grpc.status.NOT_FOUND, 'the target\'s status')
  t.equal(result.error?.details, 'no such thing: ü', 'its message, percent-encoded on the wire and decoded by the client')
  // on the wire: the target's Trailers-Only answer goes out as headers, then trailers with the outcome
  const raw = await rawCall(port, '/test.Echo/Fail')
  t.equal(raw.headers[':status'], 200)
  t.equal(raw.headers['grpc-status'], undefined, 'no status in the headers')
  t.equal(raw.endedWithHeaders, false, 'the headers do not end the stream')
  t.equal(raw.trailers?.['grpc-status'], '5', 'the status is in the trailers')
  t.equal(decodeURIComponent(raw.trailers?.['grpc-message'] as string), 'no such thing: ü')
})

test('streaming calls: client, server and bidirectional streams flow both ways', async (t) => {
  const target = await startEchoServer(t, 'a')
  const { address } = await startGrpcGateway(t, {
    upstreams: { grpc: { targets: [target.url], http2: 'h2c' } },
    routes: [{ prefix: '/', upstream: 'grpc' }]
  })
  const c = client(t, address)

  // client streaming: 200 messages of 32 KB (6.4 MB) counted by the target
  const counted = await new Promise<{ error: grpc.ServiceError | null, value?: Buffer }>((resolve) => {
    const call = c.count((error: grpc.ServiceError | null, value?: Buffer) => resolve({ error, value }))
    const chunk = Buffer.alloc(32 * 1024, 7)
    for (let i = 0; i < 200; i++) call.write(chunk)
    call.end()
  })
  t.equal(counted.error, null)
  t.equal(counted.value?.toString(), `200/${200 * 32 * 1024}`, 'every message and byte reached the target')

  // server streaming: 500 messages, then the trailing metadata
  const call = c.repeat(Buffer.from('500'))
  const got: string[] = []
  call.on('data', (message: Buffer) => got.push(message.toString()))
  const [status] = await once(call, 'status') as [grpc.StatusObject]
  t.equal(status.code, grpc.status.OK)
  t.equal(got.length, 500, 'every message')
  t.equal(got[499], '499', 'in order')
  t.same(status.metadata.get('x-served-by'), ['a'], 'trailers after the stream')

  // bidirectional: each message is sent only once the answer to the one before came back
  // through the gateway, so nothing may wait for the end of either stream
  const chat = c.chat()
  const answers: string[] = []
  for (let i = 0; i < 20; i++) {
    chat.write(Buffer.from(`m${i}`))
    const [answer] = await once(chat, 'data') as [Buffer]
    answers.push(answer.toString())
  }
  chat.end()
  const [chatStatus] = await once(chat, 'status') as [grpc.StatusObject]
  t.equal(chatStatus.code, grpc.status.OK)
  t.same(answers, Array.from({ length: 20 }, (_, i) => `re:m${i}`), 'each answer came back before the next message went')
})

test('TLS on both sides: a Fastify https HTTP/2 app, targets speaking h2 by ALPN', { skip }, async (t) => {
  const target = await startEchoServer(t, 'tls', true)
  const { address } = await startGrpcGateway(t, {
    upstreams: { grpc: { targets: [target.url], http2: true, tls: { ca, servername: 'upstream.test' } } },
    routes: [{ prefix: '/', upstream: 'grpc' }]
  }, true)
  const c = client(t, address, true)
  const result = await unary(c, 'unary', Buffer.from('secret'))
  t.equal(result.error, null)
  t.equal(result.value?.toString(), 'tls:secret')
  t.same(result.trailers?.get('x-served-by'), ['tls'])
  const call = c.repeat(Buffer.from('50'))
  let messages = 0
  call.on('data', () => { messages++ })
  const [status] = await once(call, 'status') as [grpc.StatusObject]
  t.equal(status.code, grpc.status.OK)
  t.equal(messages, 50)
})

test('the gateway\'s own failures are gRPC statuses: no target, a target down', async (t) => {
  const down = await closedPort()
  const { address, port } = await startGrpcGateway(t, {
    upstreams: {
      empty: { targets: [], http2: 'h2c' },
      down: { targets: [down], http2: 'h2c', retry: { attempts: 0 } }
    },
    routes: [{ prefix: '/empty', upstream: 'empty', rewritePrefix: '' }, { prefix: '/down', upstream: 'down', rewritePrefix: '' }]
  })
  const raw = await rawCall(port, '/empty/test.Echo/Unary')
  t.equal(raw.headers[':status'], 200, 'gRPC answers are HTTP 200')
  t.equal(raw.headers['content-type'], 'application/grpc')
  t.equal(raw.trailers?.['grpc-status'], String(grpc.status.UNAVAILABLE), 'no target: UNAVAILABLE')
  t.match(raw.trailers?.['grpc-message'], /No available target in upstream pool "empty"/)
  t.equal(raw.body.length, 0, 'no message')

  const c = new EchoClientCtor(address, grpc.credentials.createInsecure())
  t.teardown(() => c.close())
  const empty = await new Promise<grpc.ServiceError | null>((resolve) => {
    const other = new (grpc.makeGenericClientConstructor({ unary: method('/empty/test.Echo/Unary', false, false) }, 'E'))(address, grpc.credentials.createInsecure()) as unknown as EchoClient
    other.unary(Buffer.from('x'), (error: grpc.ServiceError | null) => { other.close(); resolve(error) })
  })
  t.equal(empty?.code, grpc.status.UNAVAILABLE, 'a grpc-js client reads it as UNAVAILABLE')
  const refused = await rawCall(port, '/down/test.Echo/Unary')
  t.equal(refused.trailers?.['grpc-status'], String(grpc.status.UNAVAILABLE), 'a refused connection: UNAVAILABLE')
  t.match(refused.trailers?.['grpc-message'], /ECONNREFUSED/)
})

test('grpc-timeout is the call\'s deadline: the gateway cancels the attempt and answers DEADLINE_EXCEEDED', async (t) => {
  const target = await startEchoServer(t, 'a')
  const { port, address } = await startGrpcGateway(t, {
    upstreams: { grpc: { targets: [target.url], http2: 'h2c', retry: { attempts: 2, methods: ['POST'] } } },
    routes: [{ prefix: '/', upstream: 'grpc' }]
  })
  // a client that keeps no deadline of its own: only the gateway ends the call
  const raw = await rawCall(port, '/test.Echo/Hang', { 'grpc-timeout': '300m' })
  t.equal(raw.headers[':status'], 200)
  t.equal(raw.trailers?.['grpc-status'], String(grpc.status.DEADLINE_EXCEEDED), 'DEADLINE_EXCEEDED')
  t.ok(raw.ms >= 290 && raw.ms < 3000, `answered at the deadline (${raw.ms} ms)`)
  await until('the target sees the call cancelled', () => target.cancelled === 1)
  t.equal(target.calls.hang, 1, 'not retried: the deadline is the client\'s, no target\'s fault')
  t.equal(target.deadlines.length, 1, 'the deadline went on to the target')
  t.ok(target.deadlines[0] > 200 && target.deadlines[0] <= 300, `with what was left of it (${target.deadlines[0]} ms)`)

  // a grpc-js client with a deadline gets DEADLINE_EXCEEDED, and the target's call is cancelled
  const result = await unary(client(t, address), 'hang', Buffer.from('x'), { deadline: Date.now() + 200 })
  t.equal(result.error?.code, grpc.status.DEADLINE_EXCEEDED)
  await until('the second call cancelled too', () => target.cancelled === 2)
  // the gateway still serves
  const ok = await unary(client(t, address), 'unary', Buffer.from('after'))
  t.equal(ok.value?.toString(), 'a:after')
})

test('gRPC statuses of the gateway\'s errors, and messages on the wire', async (t) => {
  const error = (code: string, statusCode: number): Error => Object.assign(new Error('x'), { code, statusCode })
  t.equal(grpcStatusOf(error('FST_UPSTREAM_NO_TARGET', 503)), grpc.status.UNAVAILABLE)
  t.equal(grpcStatusOf(error('FST_UPSTREAM_OVERLOADED', 503)), grpc.status.UNAVAILABLE)
  t.equal(grpcStatusOf(error('FST_UPSTREAM_BAD_GATEWAY', 502)), grpc.status.UNAVAILABLE)
  t.equal(grpcStatusOf(error('FST_UPSTREAM_TIMEOUT', 504)), grpc.status.DEADLINE_EXCEEDED)
  t.equal(grpcStatusOf(error('FST_UPSTREAM_DEADLINE_EXCEEDED', 504)), grpc.status.DEADLINE_EXCEEDED)
  t.equal(grpcStatusOf(error('FST_UPSTREAM_BODY_TIMEOUT', 408)), grpc.status.DEADLINE_EXCEEDED)
  t.equal(grpcStatusOf(error('FST_UPSTREAM_BODY_TOO_LARGE', 413)), grpc.status.RESOURCE_EXHAUSTED)
  t.equal(grpcStatusOf(error('FST_UPSTREAM_BAD_PATH', 400)), grpc.status.INVALID_ARGUMENT)
  t.equal(grpcStatusOf(error('FST_UPSTREAM_UNKNOWN_POOL', 500)), grpc.status.INTERNAL)
  t.equal(grpcStatusOf(error('FST_UPSTREAM_HEDGE_CANCELLED', 499)), grpc.status.CANCELLED)
  t.equal(grpcStatusOf(error('OTHER', 401)), grpc.status.UNAUTHENTICATED)
  t.equal(grpcStatusOf(error('OTHER', 403)), grpc.status.PERMISSION_DENIED)
  t.equal(grpcStatusOf(error('OTHER', 404)), grpc.status.UNIMPLEMENTED)
  t.equal(grpcStatusOf(error('OTHER', 429)), grpc.status.UNAVAILABLE)
  t.equal(grpcStatusOf(error('OTHER', 418)), grpc.status.UNKNOWN)
  t.equal(grpcStatusOf(new Error('plain')), grpc.status.INTERNAL, 'an error with no status is the gateway\'s own')
  t.equal(grpcMessage('a b: 100%'), 'a b: 100%25', 'printable ASCII as it is, % encoded')
  t.equal(grpcMessage('é\n'), '%C3%A9%0A', 'UTF-8 bytes and controls encoded')
})

test('grpc-timeout values', async (t) => {
  t.equal(grpcTimeout('1S'), 1000)
  t.equal(grpcTimeout('2M'), 120000)
  t.equal(grpcTimeout('1H'), 3600000)
  t.equal(grpcTimeout('250m'), 250)
  t.equal(grpcTimeout('1500u'), 2)
  t.equal(grpcTimeout('10n'), 1, 'at least 1 ms')
  t.equal(grpcTimeout('123456789S'), undefined, 'at most 8 digits')
  t.equal(grpcTimeout('5s'), undefined, 'units are case-sensitive')
  t.equal(grpcTimeout(undefined), undefined)
})

test('active checks by the gRPC health-checking protocol', async (t) => {
  const a = await startEchoServer(t, 'a')
  const b = await startEchoServer(t, 'b')
  a.health.set('test.Echo', SERVING)
  b.health.set('test.Echo', SERVING)
  const { app, address } = await startGrpcGateway(t, {
    upstreams: {
      grpc: {
        targets: [a.url, b.url],
        http2: 'h2c',
        healthCheck: { active: { type: 'grpc', service: 'test.Echo', interval: 100, timeout: 500, healthyThreshold: 1, unhealthyThreshold: 1 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'grpc' }]
  })
  const pool = app.upstreams.get('grpc')
  t.same(pool?.targets.map((target) => target.state), ['healthy', 'healthy'], 'both serving at start')
  t.ok((a.calls.health ?? 0) >= 1, 'the check is a gRPC call to grpc.health.v1.Health/Check')

  // NOT_SERVING (2): out, and the calls go to the other
  b.health.set('test.Echo', 2)
  await until('b is out', () => pool?.target(b.url)?.state === 'unhealthy')
  const c = client(t, address)
  for (let i = 0; i < 4; i++) t.equal((await unary(c, 'unary', Buffer.from('x'))).value?.toString(), 'a:x')
  // back to SERVING: in again
  b.health.set('test.Echo', SERVING)
  await until('b is back', () => pool?.target(b.url)?.state === 'healthy')
  // a service the server does not know (NOT_FOUND, Trailers-Only): out
  a.health.delete('test.Echo')
  await until('a is out', () => pool?.target(a.url)?.state === 'unhealthy')
  // a server gone: out
  b.server.forceShutdown()
  await until('b is out when it is gone', () => pool?.target(b.url)?.state === 'unhealthy')
})

test('a gRPC check needs HTTP/2: an option error naming the field', async (t) => {
  const error = await registerError({ upstreams: { grpc: { targets: ['http://127.0.0.1:1'], healthCheck: { active: { type: 'grpc' } } } } })
  t.equal(error.code, 'FST_UPSTREAM_INVALID_OPTION')
  t.match(error.message, /upstreams\.grpc\.healthCheck\.active\.type: 'grpc' checks are gRPC calls, over HTTP\/2/)
  const bad = await registerError({ upstreams: { grpc: { targets: ['http://127.0.0.1:1'], http2: 'h2c', healthCheck: { active: { type: 'grpc', service: 5 } } } } })
  t.match(bad.message, /healthCheck\.active\.service/)
})

test('HealthCheck messages: written and read without a protobuf library', async (t) => {
  t.same([...healthCheckRequest('')], [0, 0, 0, 0, 0], 'the whole server: an empty message')
  t.same([...healthCheckRequest('a.B')], [0, 0, 0, 0, 5, 0x0a, 3, 0x61, 0x2e, 0x42])
  const long = healthCheckRequest('x'.repeat(200))
  t.same([...long.subarray(5, 8)], [0x0a, 0xc8, 0x01], 'a length past 127 is a two-byte varint')
  const frame = (message: number[]): Buffer => Buffer.from([0, 0, 0, 0, message.length, ...message])
  t.equal(servingStatus(frame([0x08, 1])), SERVING)
  t.equal(servingStatus(frame([0x08, 2])), 2)
  t.equal(servingStatus(frame([])), 0, 'proto3 leaves UNKNOWN (0) out')
  t.equal(servingStatus(frame([0x12, 2, 0x41, 0x42, 0x08, 1])), SERVING, 'an unknown field is skipped')
  t.equal(servingStatus(frame([0x08])), -1, 'cut short')
  t.equal(servingStatus(Buffer.from([1, 0, 0, 0, 2, 0x08, 1])), -1, 'compressed: not read')
  t.equal(servingStatus(Buffer.from([0, 0, 0, 0, 9, 0x08, 1])), -1, 'shorter than its frame says')
  t.equal(servingStatus(frame([0x0b])), -1, 'a wire type protobuf has no more')
})

// Trailers of HTTP/1.1 targets (a chunked body's trailer section)
function trailerTarget (): http.RequestListener {
  return (req, res) => {
    req.resume()
    res.setHeader('content-type', 'text/plain')
    res.setHeader('trailer', 'x-checksum')
    res.write('body')
    res.addTrailers({ 'x-checksum': 'abc123', authorization: 'no', 'set-cookie': 'no=1' })
    res.end()
  }
}

test('HTTP/1.1 trailers reach clients that take them (TE: trailers, or HTTP/2)', async (t) => {
  const server = http.createServer(trailerTarget())
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  const target = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const options: FastifyUpstreamOptions = { upstreams: { h1: { targets: [target] } }, routes: [{ prefix: '/', upstream: 'h1' }] }

  // an HTTP/1.1 gateway
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyUpstream, options)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = (app.server.address() as AddressInfo).port
  const get = (headers: http.OutgoingHttpHeaders): Promise<{ body: string, trailers: NodeJS.Dict<string> }> => new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/x', headers, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ body, trailers: res.trailers }))
    }).on('error', reject)
  })
  const taking = await get({ te: 'trailers' })
  t.equal(taking.body, 'body')
  t.same(taking.trailers, { 'x-checksum': 'abc123' }, 'passed on; fields no trailer may carry are not')
  const notTaking = await get({})
  t.equal(notTaking.body, 'body')
  t.same(notTaking.trailers, {}, 'a client that did not ask gets none')

  // an HTTP/2 gateway: every HTTP/2 client takes trailers
  const { port: port2 } = await startGrpcGateway(t, options)
  const session = http2.connect(`http://127.0.0.1:${port2}`)
  t.teardown(() => session.close())
  const stream = session.request({ ':path': '/x' })
  let trailers: http2.IncomingHttpHeaders | undefined
  stream.on('trailers', (received) => { trailers = received })
  stream.resume()
  await once(stream, 'close')
  t.equal(trailers?.['x-checksum'], 'abc123')
  t.equal(trailers?.authorization, undefined)
})

test('an HTTP/2 target\'s trailers on a buffered answer, and none on an answer dropped for a retry', async (t) => {
  let calls = 0
  const server = http2.createServer((req, res) => {
    calls++
    req.resume()
    // the first answer is a 503 the pool retries: its trailers must not reach the client
    res.statusCode = calls === 1 ? 503 : 200
    res.addTrailers({ 'x-answer': String(calls) })
    res.end(`answer ${calls}`)
  })
  server.on('session', (session) => { t.teardown(() => session.destroy()) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const { port } = await startGrpcGateway(t, {
    // the same target twice (by path) so that the retry has another to go to
    upstreams: { h2: { targets: [url, url + '/other'], http2: 'h2c', retry: { statusCodes: [503] } } },
    routes: [{ prefix: '/', upstream: 'h2' }]
  })
  const session = http2.connect(`http://127.0.0.1:${port}`)
  t.teardown(() => session.close())
  const stream = session.request({ ':path': '/x' })
  let trailers: http2.IncomingHttpHeaders | undefined
  let body = ''
  stream.on('trailers', (received) => { trailers = received })
  stream.setEncoding('utf8')
  stream.on('data', (chunk: string) => { body += chunk })
  await once(stream, 'close')
  t.equal(body, 'answer 2')
  t.equal(trailers?.['x-answer'], '2', 'the trailers of the answer the client got')
  await sleep(10)
})

test('an answer that breaks off mid-stream ends the call with UNAVAILABLE, not a reset', async (t) => {
  // a gRPC server (node:http2) that sends one message of a stream, then loses its connection or resets the stream
  const server = http2.createServer()
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {})
    stream.resume()
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' })
    const message = Buffer.from('first')
    const frame = Buffer.alloc(5 + message.length)
    frame.writeUInt32BE(message.length, 1)
    message.copy(frame, 5)
    stream.write(frame)
    setTimeout(() => { if (headers['x-how'] === 'reset') stream.destroy(new Error('broken')); else stream.session?.destroy() }, 30)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  const { address } = await startGrpcGateway(t, {
    upstreams: { grpc: { targets: [`http://127.0.0.1:${(server.address() as AddressInfo).port}`], http2: 'h2c' } },
    routes: [{ prefix: '/', upstream: 'grpc' }]
  })
  const c = client(t, address)
  for (const how of ['connection', 'reset']) {
    const metadata = new grpc.Metadata()
    metadata.set('x-how', how)
    const call = c.repeat(Buffer.from('5'), metadata)
    const messages: string[] = []
    call.on('data', (message: Buffer) => messages.push(message.toString()))
    call.on('error', () => {})
    // (events.once would reject on the call's 'error')
    const status = await new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve))
    t.same(messages, ['first'], `${how}: the message before the break reached the client`)
    t.equal(status.code, grpc.status.UNAVAILABLE, `${how}: the call ends UNAVAILABLE`)
    t.match(status.details, /the target's answer broke off/)
  }
})

test('deadlines: one past a timer\'s reach is no deadline here; one that passes mid-answer ends the call DEADLINE_EXCEEDED and blames no target', async (t) => {
  const target = await startEchoServer(t, 'a')
  // a gRPC server (node:http2) that streams a message every 50 ms, and never ends unless asked
  const server = http2.createServer()
  server.on('stream', (stream) => {
    stream.on('error', () => {})
    stream.resume()
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true })
    const frame = Buffer.from([0, 0, 0, 0, 1, 0x41])
    const timer = setInterval(() => { if (!stream.closed) stream.write(frame) }, 50)
    stream.on('close', () => clearInterval(timer))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  const slowUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const { app, port } = await startGrpcGateway(t, {
    upstreams: { grpc: { targets: [target.url], http2: 'h2c' }, slow: { targets: [slowUrl], http2: 'h2c' } },
    routes: [{ prefix: '/test.Echo', upstream: 'grpc', rewritePrefix: '/test.Echo' }, { prefix: '/slow', upstream: 'slow', rewritePrefix: '' }]
  })
  const far = await rawCall(port, '/test.Echo/Unary', { 'grpc-timeout': '720H' })
  t.equal(far.trailers?.['grpc-status'], '0', '720 hours (past 2^31 ms): answered, not cut at once')
  const cut = await rawCall(port, '/slow/test.Echo/Stream', { 'grpc-timeout': '300m' })
  t.ok(cut.body.length >= 6, `messages came before the deadline (${cut.body.length} bytes)`)
  t.equal(cut.trailers?.['grpc-status'], String(grpc.status.DEADLINE_EXCEEDED), 'then DEADLINE_EXCEEDED')
  t.ok(cut.ms >= 290 && cut.ms < 3000, `at the deadline (${cut.ms} ms)`)
  t.equal(app.upstreams.get('slow')?.target(slowUrl)?.failures, 0, 'the client\'s deadline is no failure of the target')
})

test('a gRPC answer that ends with no status (no trailers) is a failure, not an OK', async (t) => {
  const server = http2.createServer()
  server.on('stream', (stream) => {
    stream.on('error', () => {})
    stream.resume()
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' })
    // a message, then the end of the stream with no trailers
    stream.end(Buffer.from([0, 0, 0, 0, 1, 0x41]))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const { app, port } = await startGrpcGateway(t, {
    upstreams: { grpc: { targets: [url], http2: 'h2c', retry: { attempts: 0 } } },
    routes: [{ prefix: '/', upstream: 'grpc' }]
  })
  const raw = await rawCall(port, '/test.Echo/Unary')
  t.equal(raw.trailers?.['grpc-status'], String(grpc.status.UNAVAILABLE), 'UNAVAILABLE, not the OK a bare end would read as')
  t.equal(app.upstreams.get('grpc')?.target(url)?.failures, 1, 'counted against the target')
})
