import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import type { Teardown } from './helpers'

// A private CA made at test time with the `openssl` command, and certificates signed by
// it: a server certificate for `upstream.test` and 127.0.0.1, one for `attacker.test`
// only (a valid certificate for someone else's name), one for `localhost` and 127.0.0.1
// (etcd, test/etcd.ts), and a client certificate for mutual TLS. Nothing is written to
// the repository; the files live only while they are made.

export interface KeyPair { key: string, cert: string }

/** Why TLS tests are skipped: false when `openssl` is there. */
export const skip: string | false = spawnSync('openssl', ['version'], { stdio: 'ignore' }).error === undefined
  ? false
  : 'the openssl command is missing (install the Debian package openssl)'

const none: KeyPair = { key: '', cert: '' }
export let ca = ''
/** for upstream.test and IP 127.0.0.1 */
export let upstreamCert: KeyPair = none
/** for attacker.test only */
export let attackerCert: KeyPair = none
/** for localhost and IP 127.0.0.1 */
export let localhostCert: KeyPair = none
/** a client certificate, CN gateway-client */
export let clientCert: KeyPair = none
/**
 * a client certificate with no CommonName: etcd's JSON gateway refuses a client certificate
 * with one when auth is on (the user is the password's, and it will not seem otherwise)
 */
export let namelessClientCert: KeyPair = none

if (skip === false) {
  const dir = mkdtempSync(join(tmpdir(), 'fastify-upstream-tls-'))
  try {
    const openssl = (...args: string[]): void => { execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' }) }
    const read = (name: string): string => readFileSync(join(dir, name), 'utf8')
    const sign = (name: string, subject: string, altNames?: string): KeyPair => {
      openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject)
      const ext = altNames === undefined ? [] : ['-extfile', `${name}.ext`]
      if (altNames !== undefined) writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${altNames}\n`)
      openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', ...ext)
      return { key: read(`${name}.key`), cert: read(`${name}.crt`) }
    }
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=Test Private CA')
    ca = read('ca.crt')
    upstreamCert = sign('upstream', '/CN=upstream.test', 'DNS:upstream.test,IP:127.0.0.1')
    attackerCert = sign('attacker', '/CN=attacker.test', 'DNS:attacker.test')
    localhostCert = sign('localhost', '/CN=localhost', 'DNS:localhost,IP:127.0.0.1')
    clientCert = sign('client', '/CN=gateway-client')
    namelessClientCert = sign('nameless', '/O=fastify-upstream gateway')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** An HTTPS server on 127.0.0.1 that answers with what it saw of the request and its TLS. */
export interface SecureUpstream {
  url: string
  /** requests received */
  hits: number
  /** TLS connections accepted */
  connections: number
  /** CN of the client certificate of each request ('' for none) */
  peers: string[]
  close: () => Promise<void>
}

/** What a SecureUpstream answers: the path, the SNI the client sent (null for none) and the Host. */
export interface SecureEcho { url: string, sni: string | null, host: string | undefined }

/** Starts a SecureUpstream serving `upstreamCert` (or the key and certificate in `options`); `t` closes it. */
export async function startSecure (t: Teardown, options: https.ServerOptions = {}): Promise<SecureUpstream> {
  const upstream: SecureUpstream = { url: '', hits: 0, connections: 0, peers: [], close: async () => {} }
  const server = https.createServer({ ...upstreamCert, ...options }, (req, res) => {
    upstream.hits++
    const socket = req.socket as TLSSocket
    upstream.peers.push(String(socket.getPeerCertificate()?.subject?.CN ?? ''))
    // Node reports `false` when the client sent no SNI
    const echo: SecureEcho = { url: req.url as string, sni: typeof socket.servername === 'string' ? socket.servername : null, host: req.headers.host }
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(echo))
  })
  server.on('secureConnection', () => { upstream.connections++ })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  upstream.url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`
  upstream.close = () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) })
  t.teardown(upstream.close)
  return upstream
}
