import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { teardown, test } from 'tap'
import fastifyUpstream from '../lib/index'
import { startGateway } from './helpers'

// A private CA made at test time (openssl), a server certificate for 127.0.0.1 signed by
// it, and a client certificate for mutual TLS.
const dir = mkdtempSync(join(tmpdir(), 'fastify-upstream-tls-'))
function openssl (...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' })
}
openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=Test Private CA')
writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:upstream.test\n')
openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=upstream.test')
openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.crt', '-days', '2', '-extfile', 'server.ext')
openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'client.key', '-out', 'client.csr', '-subj', '/CN=gateway-client')
openssl('x509', '-req', '-in', 'client.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'client.crt', '-days', '2')
const pem = (name: string): string => readFileSync(join(dir, name), 'utf8')
const ca = pem('ca.crt')

interface SecureUpstream { url: string, hits: number, peers: string[], close: () => Promise<void> }

async function startSecure (options: https.ServerOptions = {}): Promise<SecureUpstream> {
  const upstream = { hits: 0, peers: [] as string[] } as unknown as SecureUpstream
  const server = https.createServer({ key: pem('server.key'), cert: pem('server.crt'), ...options }, (req, res) => {
    upstream.hits++
    const peer = (req.socket as import('node:tls').TLSSocket).getPeerCertificate()
    upstream.peers.push(String(peer?.subject?.CN ?? ''))
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ url: req.url, sni: (req.socket as import('node:tls').TLSSocket).servername ?? null }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  upstream.url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`
  upstream.close = () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) })
  return upstream
}

teardown(() => rmSync(dir, { recursive: true, force: true }))

test('a target signed by a private CA: untrusted by default (502, never reached), trusted with tls.ca', async (t) => {
  const up = await startSecure()
  const { app, url } = await startGateway({
    upstreams: {
      untrusted: { targets: [up.url], retry: { attempts: 0 } },
      trusted: { targets: [up.url], tls: { ca } },
      sni: { targets: [up.url], tls: { ca, servername: 'upstream.test' } }
    }
  }, (app) => {
    app.get('/untrusted', (_request, reply) => reply.forward('untrusted'))
    app.get('/trusted', (_request, reply) => reply.forward('trusted'))
    app.get('/sni', (_request, reply) => reply.forward('sni'))
  })
  t.teardown(async () => { await app.close(); await up.close() })
  const untrusted = await fetch(`${url}/untrusted`)
  t.equal(untrusted.status, 502)
  t.match(await untrusted.json(), { code: 'FST_UPSTREAM_CONNECT_FAILED' })
  t.equal(up.hits, 0, 'no request reached the target over an unverified connection')
  const trusted = await fetch(`${url}/trusted`)
  t.equal(trusted.status, 200)
  t.match(await trusted.json(), { url: '/trusted' })
  const sni = await fetch(`${url}/sni`)
  t.equal(sni.status, 200)
  t.match(await sni.json(), { sni: 'upstream.test' }, 'servername is sent as SNI')
})

test('mutual TLS: the upstream sees the gateway client certificate', async (t) => {
  const up = await startSecure({ ca, requestCert: true, rejectUnauthorized: true })
  const { app, url } = await startGateway({
    upstreams: {
      mtls: { targets: [up.url], tls: { ca, cert: pem('client.crt'), key: pem('client.key') } },
      anonymous: { targets: [up.url], tls: { ca }, retry: { attempts: 0 } }
    }
  }, (app) => {
    app.get('/mtls', (_request, reply) => reply.forward('mtls'))
    app.get('/anonymous', (_request, reply) => reply.forward('anonymous'))
  })
  t.teardown(async () => { await app.close(); await up.close() })
  const res = await fetch(`${url}/mtls`)
  t.equal(res.status, 200)
  await res.arrayBuffer()
  t.same(up.peers, ['gateway-client'])
  const anonymous = await fetch(`${url}/anonymous`)
  t.equal(anonymous.status, 502, 'without a client certificate the upstream refuses the handshake')
  await anonymous.arrayBuffer()
  t.equal(up.hits, 1)
})

test('active checks use the pool TLS settings', async (t) => {
  const up = await startSecure()
  const { app } = await startGateway({
    upstreams: {
      verified: { targets: [up.url], tls: { ca }, healthCheck: { active: { interval: 60_000 } } },
      unverified: { targets: [up.url], healthCheck: { active: { interval: 60_000 } } }
    }
  })
  t.teardown(async () => { await app.close(); await up.close() })
  t.equal(app.upstreams.get('verified')?.targets[0].state, 'healthy')
  t.equal(app.upstreams.get('unverified')?.targets[0].state, 'unhealthy', 'a probe over an untrusted certificate fails')
})

test('opting out of verification works and logs a warning at register', async (t) => {
  const up = await startSecure()
  const lines: Array<{ level: number, msg: string, pool?: string }> = []
  const stream = new Writable({ write (chunk, _encoding, done) { lines.push(JSON.parse(chunk.toString())); done() } })
  const app = Fastify({ logger: { level: 'info', stream } })
  await app.register(fastifyUpstream, { upstreams: { lax: { targets: [up.url], tls: { rejectUnauthorized: false } } } })
  app.get('/x', (_request, reply) => reply.forward('lax'))
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => { await app.close(); await up.close() })
  t.ok(lines.some((l) => l.level === 40 && l.pool === 'lax' && /NOT verified/.test(l.msg)), 'a warning names the pool')
  const res = await fetch(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}/x`)
  t.equal(res.status, 200)
  await res.arrayBuffer()
})
