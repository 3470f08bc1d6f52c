import net from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import { test } from 'tap'
import fastifyUpstream, { type PoolOptions } from '../../lib/index'
import { listen, startUpstream, type Teardown, type Upstream } from '../helpers'

// What a client may claim about itself through forwarding headers, and what of it the
// upstream gets under each `forwardedHeaders` mode and `trustProxy` setting.

/** Headers a client sends to pose as its own proxy; the gateway forwards none of its copies. */
const CLIENT_COPIES: Record<string, string> = {
  'x-real-ip': '6.6.6.6',
  'true-client-ip': '6.6.6.6',
  'x-client-ip': '6.6.6.6',
  'x-forwarded-port': '8443',
  'x-forwarded-prefix': '/admin',
  'x-original-url': '/admin/delete',
  'x-rewrite-url': '/admin/delete'
}
const FORGED: Record<string, string> = {
  ...CLIENT_COPIES,
  'x-forwarded-for': '6.6.6.6',
  'x-forwarded-proto': 'https',
  'x-forwarded-host': 'evil.example',
  forwarded: 'for=6.6.6.6;host=evil.example'
}

/** A gateway with one pool per mode, mounted at /<mode>; `t` closes it. */
async function gateway (t: Teardown, up: Upstream, trustProxy: boolean | string, extra: Partial<PoolOptions> = {}): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify({ trustProxy })
  const modes = ['x-forwarded', 'forwarded', 'both', 'none'] as const
  await app.register(fastifyUpstream, {
    upstreams: Object.fromEntries(modes.map((mode) => [mode, { targets: [up.url], forwardedHeaders: mode, ...extra }])),
    routes: modes.map((mode) => ({ prefix: `/${mode}`, upstream: mode }))
  })
  return { app, url: await listen(t, app) }
}

/** Sends raw header lines (no client-side tidying of Host); resolves with the status code. */
async function raw (url: string, path: string, lines: string[]): Promise<number> {
  const { port } = new URL(url)
  return await new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), '127.0.0.1', () => {
      socket.write(`GET ${path} HTTP/1.1\r\n${lines.join('\r\n')}\r\nConnection: close\r\n\r\n`)
    })
    let data = ''
    socket.setTimeout(5000, () => socket.destroy(new Error('timeout')))
    socket.on('data', (chunk) => { data += chunk.toString() })
    socket.on('end', () => resolve(Number(data.split(' ')[1])))
    socket.on('error', reject)
  })
}

async function send (url: string, headers: Record<string, string>): Promise<void> {
  const res = await fetch(url, { headers })
  await res.arrayBuffer()
}

test("'none' forwards none of the client's forwarding headers", async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await gateway(t, up, false)
  await send(`${url}/none/x`, FORGED)
  for (const name of Object.keys(FORGED)) t.equal(up.last?.headers[name], undefined, name)
})

test("the client's X-Real-IP, True-Client-IP, X-Client-IP, X-Forwarded-Port/-Prefix, X-Original-URL, X-Rewrite-URL are dropped in every mode", async (t) => {
  const up = await startUpstream(t, 'u0')
  const untrusted = await gateway(t, up, false)
  const trusted = await gateway(t, up, true)
  for (const { url } of [untrusted, trusted]) {
    for (const mode of ['x-forwarded', 'forwarded', 'both', 'none']) {
      await send(`${url}/${mode}/x`, CLIENT_COPIES)
      for (const name of Object.keys(CLIENT_COPIES)) t.equal(up.last?.headers[name], undefined, `${mode}: ${name}`)
    }
  }
})

test("a pool's headers.set may still set them (it runs after the forwarding policy)", async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await gateway(t, up, false, { headers: { set: { 'x-real-ip': (request) => request.ip, 'x-forwarded-prefix': '/api' } } })
  for (const mode of ['x-forwarded', 'none']) {
    await send(`${url}/${mode}/x`, CLIENT_COPIES)
    t.equal(up.last?.headers['x-real-ip'], '127.0.0.1', mode)
    t.equal(up.last?.headers['x-forwarded-prefix'], '/api', mode)
  }
})

test('X-Forwarded-Host and host= carry only a valid host[:port], whatever the client wrote', async (t) => {
  const up = await startUpstream(t, 'u0')
  const untrusted = await gateway(t, up, false)
  const trusted = await gateway(t, up, true)
  const bad = ['a.example, evil.example', '"evil.example"', 'a.example evil', 'a.example;for=1.2.3.4', 'a.example:80:80', 'a/b', '[::1', '']
  for (const host of bad) {
    t.equal(await raw(untrusted.url, '/both/x', [`Host: ${host}`]), 200, `Host: ${host}`)
    t.equal(up.last?.headers['x-forwarded-host'], undefined, `no X-Forwarded-Host for ${host}`)
    t.equal(up.last?.headers.forwarded, 'for=127.0.0.1;proto=http', `no host= for ${host}`)
    // trusted, Fastify takes the host from X-Forwarded-Host (its last entry, so a comma splits)
    if (host.includes(',')) continue
    t.equal(await raw(trusted.url, '/both/x', ['Host: x', `X-Forwarded-Host: x, ${host}`]), 200)
    t.equal(up.last?.headers['x-forwarded-host'], undefined, `trusted: no X-Forwarded-Host for ${host}`)
    t.notMatch(up.last?.headers.forwarded ?? '', /host=/, `trusted: no host= for ${host}`)
  }
  for (const host of ['shop.example', 'shop.example:8443', '10.0.0.1:80', '[2001:db8::1]:8080', 'under_score.example']) {
    await raw(untrusted.url, '/both/x', [`Host: ${host}`])
    t.equal(up.last?.headers['x-forwarded-host'], host)
    t.equal(up.last?.headers.forwarded, `for=127.0.0.1;proto=http;host="${host}"`)
  }
})

test('trusted X-Forwarded-For entries become valid RFC 7239 nodes in Forwarded', async (t) => {
  const up = await startUpstream(t, 'u0')
  const { url } = await gateway(t, up, true)
  await send(`${url}/forwarded/x`, {
    'x-forwarded-for': '203.0.113.7, x;host=evil.example, "quoted", 2001:db8::1, [2001:db8::2], _hidden-1, unknown, not an address, 10.0.0.1',
    'x-forwarded-host': 'shop.example'
  })
  t.equal(up.last?.headers.forwarded,
    'for=203.0.113.7, for=unknown, for=unknown, for="[2001:db8::1]", for="[2001:db8::2]", for=_hidden-1, for=unknown, for=unknown, for=10.0.0.1, for=127.0.0.1;proto=http;host="shop.example"')
  // a trusted X-Forwarded-Proto is no scheme: neither header carries it
  await send(`${url}/both/x`, { 'x-forwarded-proto': 'https;for=1.2.3.4' })
  t.equal(up.last?.headers['x-forwarded-proto'], undefined)
  t.notMatch(up.last?.headers.forwarded ?? '', /proto=/)
  await send(`${url}/both/x`, { 'x-forwarded-proto': 'https' })
  t.equal(up.last?.headers['x-forwarded-proto'], 'https')
  t.match(up.last?.headers.forwarded ?? '', /;proto=https;/)
})
