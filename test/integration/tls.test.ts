import https from 'node:https'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'
import { test } from 'tap'
import { startGateway } from '../helpers'

test('https targets are verified by default: an untrusted certificate is a 502, never proxied', async (t) => {
  let hits = 0
  const server = https.createServer({
    key: readFileSync(join(__dirname, '..', 'fixtures', 'self-signed.key')),
    cert: readFileSync(join(__dirname, '..', 'fixtures', 'self-signed.crt'))
  }, (_req, res) => { hits++; res.end('secret') })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const target = `https://127.0.0.1:${(server.address() as AddressInfo).port}`
  const { url } = await startGateway(t, {
    upstreams: { secure: { targets: [target] } },
    routes: [{ prefix: '/', upstream: 'secure' }]
  })
  const res = await fetch(`${url}/x`)
  t.equal(res.status, 502)
  t.match(await res.json(), { code: 'FST_UPSTREAM_CONNECT_FAILED' })
  t.equal(hits, 0, 'no request reached the untrusted target')
})
