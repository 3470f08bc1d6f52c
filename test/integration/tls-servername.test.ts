import Fastify from 'fastify'
import { teardown, test } from 'tap'
import { Agent, request } from 'undici'
import fastifyUpstream from '../../lib/index'
import { listen, logCapture, startGateway } from '../helpers'
import { attackerCert, ca, skip, startSecure, type SecureEcho } from '../private-ca'

// The TLS name of a target (SNI, and the name its certificate must match) comes from the
// pool's configuration, never from the Host header sent upstream: with `host: 'pass'` the
// client writes that header, and undici would otherwise verify the certificate against it.

const client = new Agent()
teardown(() => client.close())

/** A GET with a Host header of the caller's choosing (fetch cannot set one). */
async function get (url: string, host: string): Promise<{ status: number, body: Partial<SecureEcho> & { code?: string } }> {
  const res = await request(url, { headers: { host }, dispatcher: client })
  return { status: res.statusCode, body: await res.body.json() as Partial<SecureEcho> & { code?: string } }
}

test('host: pass with tls.servername: the client Host never becomes the TLS name', { skip }, async (t) => {
  const up = await startSecure(t)
  const { app, url } = await startGateway(t, {
    upstreams: {
      pass: {
        targets: [up.url],
        host: 'pass',
        tls: { ca, servername: 'upstream.test' },
        healthCheck: { passive: { consecutiveFailures: 1 } },
        retry: { attempts: 0 }
      }
    }
  }, (app) => { app.get('/x', (_request, reply) => reply.forward('pass')) })

  const attacker = await get(`${url}/x`, 'attacker.test')
  t.equal(attacker.status, 200)
  t.match(attacker.body, { sni: 'upstream.test', host: 'attacker.test' }, 'SNI is the servername; the Host is passed as asked')
  const bogus = await get(`${url}/x`, 'bogus.invalid')
  t.equal(bogus.status, 200, 'a Host the certificate does not cover does not fail the handshake')
  t.match(bogus.body, { sni: 'upstream.test', host: 'bogus.invalid' })
  const target = app.upstreams.get('pass')?.targets[0]
  t.equal(target?.state, 'healthy', 'a client cannot get a healthy target ejected')
  t.equal(target?.failures, 0)
})

test('host: pass without servername: a certificate for the client Host is not accepted', { skip }, async (t) => {
  const up = await startSecure(t, attackerCert)
  // the threat: undici alone takes the TLS name from the Host header, and this
  // certificate (valid for attacker.test, from the trusted CA) passes for 127.0.0.1
  const plain = new Agent({ connect: { ca } })
  const direct = await request(`${up.url}/direct`, { headers: { host: 'attacker.test' }, dispatcher: plain })
  t.equal(direct.statusCode, 200, 'undici on its own verifies against the Host header')
  await direct.body.dump()
  await plain.close()
  const reached = up.hits

  const { url } = await startGateway(t, {
    upstreams: {
      pass: { targets: [up.url], host: 'pass', tls: { ca }, retry: { attempts: 0 } },
      named: { targets: [up.url], host: 'pass', tls: { ca, servername: 'attacker.test' } }
    }
  }, (app) => {
    app.get('/pass', (_request, reply) => reply.forward('pass'))
    app.get('/named', (_request, reply) => reply.forward('named'))
  })

  const res = await get(`${url}/pass`, 'attacker.test')
  t.equal(res.status, 502)
  t.equal(res.body.code, 'FST_UPSTREAM_CONNECT_FAILED')
  t.equal(up.hits, reached, 'the request never reached the target')
  const named = await get(`${url}/named`, 'other.test')
  t.equal(named.status, 200, 'the name the operator configured is the one verified')
  t.match(named.body, { sni: 'attacker.test', host: 'other.test' })
})

test('a fixed host does not choose the TLS name either', { skip }, async (t) => {
  const attacker = await startSecure(t, attackerCert)
  const up = await startSecure(t)
  const { url } = await startGateway(t, {
    upstreams: {
      spoofed: { targets: [attacker.url], host: 'attacker.test', tls: { ca }, retry: { attempts: 0 } },
      fixed: { targets: [up.url], host: 'attacker.test', tls: { ca }, retry: { attempts: 0 } }
    }
  }, (app) => {
    app.get('/spoofed', (_request, reply) => reply.forward('spoofed'))
    app.get('/fixed', (_request, reply) => reply.forward('fixed'))
  })

  const spoofed = await get(`${url}/spoofed`, 'client.test')
  t.equal(spoofed.status, 502, 'verified against 127.0.0.1, which the certificate does not cover')
  t.equal(spoofed.body.code, 'FST_UPSTREAM_CONNECT_FAILED')
  t.equal(attacker.hits, 0)
  const fixed = await get(`${url}/fixed`, 'client.test')
  t.equal(fixed.status, 200, 'verified against 127.0.0.1, which the certificate covers')
  t.match(fixed.body, { sni: null, host: 'attacker.test' }, 'no SNI for an IP address; the fixed Host is sent')
})

test('a varying client Host does not tear down keep-alive connections', { skip }, async (t) => {
  const up = await startSecure(t)
  const { url } = await startGateway(t, {
    upstreams: { pass: { targets: [up.url], host: 'pass', tls: { ca } } }
  }, (app) => { app.get('/x', (_request, reply) => reply.forward('pass')) })

  // both are Hosts the certificate covers, so only the connection count can tell
  const hosts = ['upstream.test', new URL(up.url).host, 'upstream.test', new URL(up.url).host, 'upstream.test', new URL(up.url).host]
  for (const host of hosts) {
    const res = await get(`${url}/x`, host)
    t.equal(res.status, 200)
    t.equal(res.body.host, host)
  }
  t.equal(up.connections, 1, `every request went over the same connection (${up.connections} opened)`)
})

test('active checks verify against the same name, whatever Host they send', { skip }, async (t) => {
  const attacker = await startSecure(t, attackerCert)
  const up = await startSecure(t)
  const active = { interval: 60_000, headers: { host: 'attacker.test' } }
  const { app } = await startGateway(t, {
    upstreams: {
      spoofed: { targets: [attacker.url], tls: { ca }, healthCheck: { active } },
      named: { targets: [up.url], tls: { ca, servername: 'upstream.test' }, healthCheck: { active } }
    }
  })
  t.equal(app.upstreams.get('spoofed')?.targets[0].state, 'unhealthy', 'the probe does not accept a certificate for its Host')
  t.equal(attacker.hits, 0)
  t.equal(app.upstreams.get('named')?.targets[0].state, 'healthy', 'the probe verifies against tls.servername')
})

test("host: 'pass' is logged as a warning once per pool", { skip }, async (t) => {
  const up = await startSecure(t)
  const { lines, stream } = logCapture()
  const app = Fastify({ logger: { level: 'info', stream } })
  await app.register(fastifyUpstream, {
    upstreams: {
      pass: { targets: [up.url], host: 'pass', tls: { ca } },
      fixed: { targets: [up.url], host: 'upstream.test', tls: { ca } }
    }
  })
  app.get('/x', (_request, reply) => reply.forward('pass'))
  const url = await listen(t, app)
  for (let i = 0; i < 3; i++) await get(`${url}/x`, `h${i}.test`)
  app.upstreams.add('later', { targets: [up.url], host: 'pass', tls: { ca } })

  const warnings = lines.filter((l) => l.level === 40 && /host: 'pass'/.test(l.msg))
  t.same(warnings.map((l) => l.pool), ['pass', 'later'], 'one warning for each pool that passes the Host, naming it')
})
