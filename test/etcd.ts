import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { accessSync, constants, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import net, { type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request } from 'undici'
import type { Teardown } from './helpers'
import { ca, localhostCert, namelessClientCert, skip as opensslSkip } from './private-ca'

// Real etcd clusters for the tests: the `etcd` command of the Debian package etcd-server
// (3.4), one to three members on 127.0.0.1 with free ports and throwaway data dirs. The
// harness talks to etcd over its JSON gateway (POST /v3/..., keys and values base64,
// int64 numbers as decimal strings), so it needs no etcd client library.

// etcd 3.4 reads every ETCD_* variable as a flag and exits when one duplicates a
// command-line flag ("conflicting environment variable ... is shadowed"): never pass them on
const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('ETCD_')))

/** Why etcd tests are skipped: false when the `etcd` command runs. */
export const etcdSkip: string | false = spawnSync('etcd', ['--version'], { stdio: 'ignore', env }).status === 0
  ? false
  : 'the etcd command is missing (install the Debian package etcd-server)'

/** Why etcd tests over TLS are skipped: they also need `openssl` for the private CA. */
export const etcdTlsSkip: string | false = etcdSkip === false ? opensslSkip : etcdSkip

export interface EtcdMember {
  readonly name: string
  /** where clients connect: http://127.0.0.1:PORT, or https://localhost:PORT with tls */
  readonly clientUrl: string
  /** whether its process is running */
  readonly alive: boolean
  /** the process id of its current (or last) process */
  readonly pid: number | undefined
  readonly dataDir: string
}

export interface EtcdOptions {
  members?: 1 | 3
  /** users root and gateway, then auth enabled */
  auth?: boolean
  /** https client URLs with a certificate from the private CA, client certificates required */
  tls?: boolean
  /** ms; 250 by default (etcd's is 1000): a killed leader is replaced in about 0.3 s */
  electionTimeout?: number
  /** ms; 25 by default (etcd's is 100) */
  heartbeatInterval?: number
}

export interface EtcdCluster {
  /** the members' client URLs */
  endpoints: string[]
  members: EtcdMember[]
  /** with auth: the user that may read and write every key */
  credentials?: { username: string, password: string }
  /** with tls: the CA that signed etcd's certificate, and the client certificate etcd requires */
  tls?: { ca: string, cert: string, key: string }
  /** The member a live member names as leader, once it is alive itself (polls up to 10 s). */
  leader: () => Promise<EtcdMember>
  /** SIGKILL; resolves when the process has exited. */
  kill: (member: EtcdMember) => Promise<void>
  /** Starts a killed member again on its data dir; resolves when it is healthy. */
  restart: (member: EtcdMember) => Promise<void>
  /** Kills every member (their data stays). */
  stop: () => Promise<void>
  /** Starts every member again on its data; resolves when all are healthy. */
  start: () => Promise<void>
  /** Resolves with the revision of the put. */
  put: (key: string, value: string, leaseId?: string) => Promise<string>
  get: (key: string) => Promise<string | undefined>
  /** Resolves with the revision after the delete. */
  del: (key: string) => Promise<string>
  /** Compacts the history up to the current revision; resolves with that revision. */
  compact: () => Promise<string>
}

interface Member {
  name: string
  clientUrl: string
  alive: boolean
  pid: number | undefined
  dataDir: string
  peerUrl: string
  /** etcd's member id (a decimal string), the same across restarts */
  id: string
  child: ChildProcess | undefined
  /** the end of its stderr, for errors */
  stderr: string
}

const rootUser = { name: 'root', password: 'root-pass' }
const gatewayUser = { username: 'gateway', password: 'gateway-pass' }
const healthTimeout = 15_000
const leaderTimeout = 10_000

// Killed when this process exits, so that a test run that is aborted leaves no etcd behind
// (the data dirs go too: on /dev/shm each member holds a 64 MB write-ahead log in memory)
const running = new Set<ChildProcess>()
const dataDirs = new Set<string>()
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL')
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true })
})

// etcd syncs its write-ahead log on every write; on tmpfs that costs nothing, and puts take half the time
function dataRoot (): string {
  try {
    accessSync('/dev/shm', constants.W_OK)
    if (statSync('/dev/shm').isDirectory()) return '/dev/shm'
  } catch {}
  return tmpdir()
}

/** Ports nothing listens on; held open together so that none is handed out twice. */
async function freePorts (count: number): Promise<number[]> {
  const servers = await Promise.all(Array.from({ length: count }, () => new Promise<net.Server>((resolve, reject) => {
    const server = net.createServer()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => resolve(server))
  })))
  const ports = servers.map((server) => (server.address() as AddressInfo).port)
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))))
  return ports
}

const base64 = (text: string): string => Buffer.from(text).toString('base64')

/** Starts an etcd cluster that `t` kills (and whose data it removes) when the test ends. */
export async function startEtcd (t: Teardown, options: EtcdOptions = {}): Promise<EtcdCluster> {
  const { members: count = 1, auth = false, tls = false, electionTimeout = 250, heartbeatInterval = 25 } = options
  if (tls && opensslSkip !== false) throw new Error(opensslSkip)
  const root = dataRoot()
  const agent = new Agent(tls ? { connect: { ca, ...namelessClientCert } } : {})
  const members: Member[] = []
  // with tls: etcd's certificate, its key and the CA, in files for etcd
  let tlsDir = ''
  let token: string | undefined
  let authEnabled = false

  const destroy = async (): Promise<void> => {
    await Promise.all(members.map(kill))
    for (const dir of [...members.map((m) => m.dataDir), tlsDir]) {
      if (dir === '') continue
      rmSync(dir, { recursive: true, force: true })
      dataDirs.delete(dir)
    }
    await agent.destroy()
  }
  // registered before anything can fail, so that a cluster that never got healthy goes too
  t.teardown(destroy)

  const ports = await freePorts(2 * count)
  for (let i = 0; i < count; i++) {
    const dataDir = mkdtempSync(join(root, `fastify-upstream-etcd-m${i}-`))
    dataDirs.add(dataDir)
    members.push({
      name: `m${i}`,
      // the certificate is for localhost; an IP as TLS server name is deprecated in Node (DEP0123)
      clientUrl: tls ? `https://localhost:${ports[2 * i]}` : `http://127.0.0.1:${ports[2 * i]}`,
      alive: false,
      pid: undefined,
      dataDir,
      peerUrl: `http://127.0.0.1:${ports[2 * i + 1]}`,
      id: '',
      child: undefined,
      stderr: ''
    })
  }
  if (tls) {
    tlsDir = mkdtempSync(join(tmpdir(), 'fastify-upstream-etcd-tls-'))
    dataDirs.add(tlsDir)
    writeFileSync(join(tlsDir, 'server.crt'), localhostCert.cert)
    writeFileSync(join(tlsDir, 'server.key'), localhostCert.key, { mode: 0o600 })
    writeFileSync(join(tlsDir, 'ca.crt'), ca)
  }
  const initialCluster = members.map((m) => `${m.name}=${m.peerUrl}`).join(',')
  // one token per cluster: members of different clusters never take each other for peers
  const clusterToken = `test-${ports[0]}`

  function spawnMember (m: Member, state: 'new' | 'existing'): void {
    const listenUrl = m.clientUrl.replace('localhost', '127.0.0.1')
    const args = [
      '--name', m.name, '--data-dir', m.dataDir,
      '--listen-client-urls', listenUrl, '--advertise-client-urls', m.clientUrl,
      '--listen-peer-urls', m.peerUrl, '--initial-advertise-peer-urls', m.peerUrl,
      '--initial-cluster', initialCluster, '--initial-cluster-state', state, '--initial-cluster-token', clusterToken,
      '--heartbeat-interval', String(heartbeatInterval), '--election-timeout', String(electionTimeout),
      // 3.4's default logger (capnslog) is deprecated; errors only, kept for the error messages below
      '--logger', 'zap', '--log-level', 'error', '--log-outputs', 'stderr'
    ]
    if (tls) {
      args.push('--cert-file', join(tlsDir, 'server.crt'), '--key-file', join(tlsDir, 'server.key'),
        '--trusted-ca-file', join(tlsDir, 'ca.crt'), '--client-cert-auth')
    }
    const child = spawn('etcd', args, { env, stdio: ['ignore', 'ignore', 'pipe'] })
    m.child = child
    m.pid = child.pid
    m.alive = true
    m.stderr = ''
    running.add(child)
    child.stderr?.setEncoding('utf8')
    child.stderr?.on('data', (chunk: string) => { m.stderr = (m.stderr + chunk).slice(-2000) })
    const gone = (why: string): void => {
      running.delete(child)
      if (m.child === child) m.alive = false
      m.stderr += `\n[${why}]`
    }
    child.on('error', (error) => gone(error.message))
    child.on('exit', (code, signal) => gone(`exited with ${signal ?? code}`))
  }

  /** One request to one member; resolves with the status code and the parsed answer. */
  async function send (m: Member, path: string, body?: unknown, authorization?: string): Promise<{ status: number, answer: any }> {
    const res = await request(`${m.clientUrl}${path}`, {
      dispatcher: agent,
      method: body === undefined ? 'GET' : 'POST',
      body: body === undefined ? undefined : JSON.stringify(body),
      headers: authorization === undefined ? {} : { authorization },
      signal: AbortSignal.timeout(5000)
    })
    return { status: res.statusCode, answer: await res.body.json() }
  }

  /**
   * A gateway call to the first live member that accepts a connection, as root once auth
   * is on (etcd's simple tokens expire after 5 minutes unused: then a new one and a second try).
   */
  async function call (path: string, body: unknown): Promise<any> {
    let lastError: unknown = new Error('no etcd member is running')
    for (const m of members.filter((m) => m.alive)) {
      for (let attempt = 0; ; attempt++) {
        let res
        try {
          if (authEnabled && token === undefined) token = (await send(m, '/v3/auth/authenticate', rootUser)).answer.token
          res = await send(m, path, body, token)
        } catch (error) {
          lastError = error // refused or reset: a member on its way down
          break
        }
        if (res.status === 401 && authEnabled && attempt === 0) {
          token = undefined
          continue
        }
        if (res.status !== 200) throw new Error(`etcd ${path} answered ${res.status}: ${res.answer?.message ?? JSON.stringify(res.answer)}`)
        return res.answer
      }
    }
    throw lastError
  }

  async function healthy (m: Member): Promise<void> {
    const deadline = Date.now() + healthTimeout
    for (;;) {
      if (!m.alive) throw new Error(`etcd member ${m.name} stopped before it was healthy; its stderr ends:\n${m.stderr}`)
      try {
        // 503 {"health":"false"} while it has no leader
        const { answer } = await send(m, '/health')
        if (answer.health === 'true') break
      } catch {}
      if (Date.now() > deadline) throw new Error(`etcd member ${m.name} (${m.clientUrl}) not healthy after ${healthTimeout} ms; its stderr ends:\n${m.stderr}`)
      await sleep(20)
    }
    m.id = (await send(m, '/v3/maintenance/status', {})).answer.header.member_id
  }

  async function kill (m: Member): Promise<void> {
    const child = m.child
    m.alive = false
    // never started (spawn failed) or already gone
    if (child?.pid === undefined || child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    // the data is thrown away or reused as is: SIGKILL takes 10 ms, SIGTERM on three members 6-7 s
    child.kill('SIGKILL')
    await exited
  }

  const own = (member: EtcdMember): Member => {
    const m = members.find((m) => m === member)
    if (m === undefined) throw new Error(`${member.name} is not a member of this cluster`)
    return m
  }

  for (const m of members) spawnMember(m, 'new')
  // a member alone is not healthy (no quorum): wait for all together
  await Promise.all(members.map(healthy))

  const cluster: EtcdCluster = {
    endpoints: members.map((m) => m.clientUrl),
    members,
    async leader () {
      const deadline = Date.now() + leaderTimeout
      for (;;) {
        for (const m of members.filter((m) => m.alive)) {
          try {
            const { answer } = await send(m, '/v3/maintenance/status', {})
            // for about one election timeout after the leader died, the others still name it
            const leader = members.find((l) => l.id === answer.leader)
            if (leader?.alive === true) return leader
          } catch {}
        }
        if (Date.now() > deadline) throw new Error(`no live etcd leader after ${leaderTimeout} ms`)
        await sleep(20)
      }
    },
    kill: async (member) => { await kill(own(member)) },
    async restart (member) {
      const m = own(member)
      await kill(m)
      spawnMember(m, 'existing')
      await healthy(m)
    },
    async stop () {
      await Promise.all(members.map(kill))
    },
    async start () {
      await Promise.all(members.map(kill))
      for (const m of members) spawnMember(m, 'existing')
      await Promise.all(members.map(healthy))
    },
    async put (key, value, leaseId) {
      return (await call('/v3/kv/put', { key: base64(key), value: base64(value), lease: leaseId })).header.revision
    },
    async get (key) {
      const kv = (await call('/v3/kv/range', { key: base64(key) })).kvs?.[0]
      return kv === undefined ? undefined : Buffer.from(kv.value ?? '', 'base64').toString()
    },
    async del (key) {
      return (await call('/v3/kv/deleterange', { key: base64(key) })).header.revision
    },
    async compact () {
      const { revision } = (await call('/v3/kv/range', { key: base64('\0') })).header
      await call('/v3/kv/compaction', { revision, physical: true })
      return revision
    }
  }

  if (auth) {
    // root (etcd refuses to enable auth without it), and a role on every key for the gateway:
    // the key range from "\0" to "\0" is the whole key space
    const { username, password } = gatewayUser
    const steps: Array<[string, unknown]> = [
      ['/v3/auth/user/add', rootUser],
      ['/v3/auth/role/add', { name: 'root' }],
      ['/v3/auth/user/grant', { user: 'root', role: 'root' }],
      ['/v3/auth/user/add', { name: username, password }],
      ['/v3/auth/role/add', { name: 'readwrite' }],
      ['/v3/auth/role/grant', { name: 'readwrite', perm: { permType: 'READWRITE', key: base64('\0'), range_end: base64('\0') } }],
      ['/v3/auth/user/grant', { user: username, role: 'readwrite' }],
      ['/v3/auth/enable', {}]
    ]
    for (const [path, body] of steps) await call(path, body)
    authEnabled = true
    cluster.credentials = { ...gatewayUser }
  }
  if (tls) cluster.tls = { ca, ...namelessClientCert }
  return cluster
}
