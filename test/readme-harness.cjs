'use strict'

// Preloaded (`node --require`) into every README program that test/readme.test.ts runs.
// It leaves the program as it is and drives it from outside:
// - a connection to anything but loopback fails (and is reported);
// - DNS resolvers are pointed at the test's loopback DNS server (README_DNS_SERVER);
// - once a Fastify app listens, the requests of README_REQUESTS are sent to it, their
//   answers written to README_RESULTS, and the app is closed: the program then has to end
//   on its own.

const diagnostics = require('node:diagnostics_channel')
const dns = require('node:dns')
const net = require('node:net')
const { writeFileSync } = require('node:fs')

const requests = JSON.parse(process.env.README_REQUESTS ?? '[]')
const results = { listened: 0, responses: [], violations: [], error: undefined }

function save () {
  if (process.env.README_RESULTS) writeFileSync(process.env.README_RESULTS, JSON.stringify(results))
}
save()

const LOOPBACK = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1', 'localhost'])
const connect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (...args) {
  // net.connect() passes its normalised arguments as one array
  const first = Array.isArray(args[0]) ? args[0][0] : args[0]
  const options = typeof first === 'object' && first !== null ? first : { port: first, host: typeof args[1] === 'string' ? args[1] : undefined }
  if (options.path === undefined) {
    const host = options.host ?? 'localhost'
    if (!LOOPBACK.has(host)) {
      results.violations.push(`${host}:${options.port}`)
      save()
      throw new Error(`refused to connect to ${host}:${options.port}: the README programs reach loopback only`)
    }
  }
  return connect.apply(this, args)
}

if (process.env.README_DNS_SERVER) {
  const servers = [process.env.README_DNS_SERVER]
  dns.setServers(servers)
  for (const holder of [dns, dns.promises]) {
    const Resolver = holder.Resolver
    holder.Resolver = class LoopbackResolver extends Resolver {
      constructor (...args) {
        super(...args)
        this.setServers(servers) // the system's resolvers; `servers` of an option still wins
      }
    }
  }
}

// One request over cleartext HTTP/2 (to an app served with `http2: true` and no TLS, as gRPC
// clients call it): its status, body and trailers.
function http2Request (port, request) {
  const http2 = require('node:http2')
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`)
    session.on('error', reject)
    const stream = session.request({ ':method': request.method ?? 'GET', ':path': request.path, ...(request.headers ?? {}) })
    const chunks = []
    let status = 0
    let trailers = {}
    stream.on('response', (headers) => { status = headers[':status'] })
    stream.on('trailers', (received) => { trailers = { ...received } })
    stream.on('data', (chunk) => chunks.push(chunk))
    stream.on('error', reject)
    stream.on('close', () => {
      session.close()
      resolve({ path: request.path, status, body: Buffer.concat(chunks).toString('latin1'), trailers })
    })
    stream.end(request.body64 === undefined ? undefined : Buffer.from(request.body64, 'base64'))
  })
}

async function drive (app) {
  results.listened++
  const { port } = app.server.address()
  const h2c = app.initialConfig.http2 === true && app.initialConfig.https === undefined
  try {
    for (const request of requests) {
      if (h2c) {
        results.responses.push(await http2Request(port, request))
        continue
      }
      const response = await fetch(`http://127.0.0.1:${port}${request.path}`, { method: request.method ?? 'GET', headers: request.headers ?? {} })
      results.responses.push({ path: request.path, status: response.status, body: await response.text() })
    }
  } catch (error) {
    results.error = String(error?.stack ?? error)
    process.exitCode = 1
  }
  save()
  await app.close()
}

diagnostics.subscribe('fastify.initialization', ({ fastify }) => {
  fastify.addHook('onListen', function (done) {
    // after listen() has resolved, and the program's own code after it has run
    setImmediate(() => {
      drive(fastify).catch((error) => {
        results.error = String(error?.stack ?? error)
        save()
        process.exitCode = 1
      })
    })
    done()
  })
})
