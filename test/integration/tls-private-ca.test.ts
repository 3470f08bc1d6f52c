import Fastify from 'fastify'
import { test } from 'tap'
import fastifyUpstream from '../../lib/index'
import { listen, logCapture, startGateway } from '../helpers'
import { ca, clientCert, skip, startSecure } from '../private-ca'

test('a target signed by a private CA: untrusted by default (502, never reached), trusted with tls.ca', { skip }, async (t) => {
  const up = await startSecure(t)
  const { url } = await startGateway(t, {
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
  const untrusted = await fetch(`${url}/untrusted`)
  t.equal(untrusted.status, 502)
  t.match(await untrusted.json(), { code: 'FST_UPSTREAM_CONNECT_FAILED', message: /tls\.ca/ }, 'the 502 says what to set')
  t.equal(up.hits, 0, 'no request reached the target over an unverified connection')
  const trusted = await fetch(`${url}/trusted`)
  t.equal(trusted.status, 200)
  t.match(await trusted.json(), { url: '/trusted' })
  const sni = await fetch(`${url}/sni`)
  t.equal(sni.status, 200)
  t.match(await sni.json(), { sni: 'upstream.test' }, 'servername is sent as SNI')
})

test('mutual TLS: the upstream sees the gateway client certificate', { skip }, async (t) => {
  const up = await startSecure(t, { ca, requestCert: true, rejectUnauthorized: true })
  const { url } = await startGateway(t, {
    upstreams: {
      mtls: { targets: [up.url], tls: { ca, ...clientCert } },
      anonymous: { targets: [up.url], tls: { ca }, retry: { attempts: 0 } }
    }
  }, (app) => {
    app.get('/mtls', (_request, reply) => reply.forward('mtls'))
    app.get('/anonymous', (_request, reply) => reply.forward('anonymous'))
  })
  const res = await fetch(`${url}/mtls`)
  t.equal(res.status, 200)
  await res.arrayBuffer()
  t.same(up.peers, ['gateway-client'])
  const anonymous = await fetch(`${url}/anonymous`)
  t.equal(anonymous.status, 502, 'without a client certificate the upstream refuses the handshake')
  await anonymous.arrayBuffer()
  t.equal(up.hits, 1)
})

test('active checks use the pool TLS settings', { skip }, async (t) => {
  const up = await startSecure(t)
  const { app } = await startGateway(t, {
    upstreams: {
      verified: { targets: [up.url], tls: { ca }, healthCheck: { active: { interval: 60_000 } } },
      unverified: { targets: [up.url], healthCheck: { active: { interval: 60_000 } } }
    }
  })
  t.equal(app.upstreams.get('verified')?.targets[0].state, 'healthy')
  t.equal(app.upstreams.get('unverified')?.targets[0].state, 'unhealthy', 'a probe over an untrusted certificate fails')
})

test('opting out of verification works and logs a warning at register', { skip }, async (t) => {
  const up = await startSecure(t)
  const { lines, stream } = logCapture()
  const app = Fastify({ logger: { level: 'info', stream } })
  await app.register(fastifyUpstream, { upstreams: { lax: { targets: [up.url], tls: { rejectUnauthorized: false } } } })
  app.get('/x', (_request, reply) => reply.forward('lax'))
  const url = await listen(t, app)
  t.ok(lines.some((l) => l.level === 40 && l.pool === 'lax' && /NOT verified/.test(l.msg)), 'a warning names the pool')
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 200)
  await res.arrayBuffer()
})

test('a certificate that does not name the target: the 502 names tls.servername', { skip }, async (t) => {
  const up = await startSecure(t)
  const { url } = await startGateway(t, {
    upstreams: { wrong: { targets: [up.url.replace('127.0.0.1', 'localhost')], tls: { ca }, retry: { attempts: 0 } } }
  }, (app) => { app.get('/wrong', (_request, reply) => reply.forward('wrong')) })
  const res = await fetch(`${url}/wrong`)
  t.equal(res.status, 502)
  t.match(await res.json(), { code: 'FST_UPSTREAM_CONNECT_FAILED', message: /ERR_TLS_CERT_ALTNAME_INVALID.*tls\.servername/ })
})
