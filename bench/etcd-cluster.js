'use strict'

// A throwaway etcd cluster on 127.0.0.1 for bench/etcd.js and examples/many-instances.js:
// 1 or 3 members of the `etcd` command (Debian package etcd-server, 3.4), free ports, data
// dirs on /dev/shm when it is writable (etcd syncs its log on every write: on tmpfs a put
// takes half the time). Members are SIGKILLed on stop() and when this process exits; their
// data dirs go with them. Talks to etcd over its JSON gateway (POST /v3/..., base64 keys).
//   const { etcdAvailable, startCluster } = require('./etcd-cluster')
//   const cluster = await startCluster({ members: 3 })  // cluster.endpoints, put, del, leader, stop

const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { Pool } = require('undici')

// etcd 3.4 takes every ETCD_* variable as a flag, and exits when one repeats a command-line flag
const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('ETCD_')))

/** true when the `etcd` command runs. */
function etcdAvailable () {
  return spawnSync('etcd', ['--version'], { stdio: 'ignore', env }).status === 0
}

function dataRoot () {
  try {
    fs.accessSync('/dev/shm', fs.constants.W_OK)
    return '/dev/shm'
  } catch {
    return os.tmpdir()
  }
}

/** Free ports, held open together so that none is handed out twice. */
async function freePorts (count) {
  const servers = await Promise.all(Array.from({ length: count }, () => new Promise((resolve, reject) => {
    const server = net.createServer().on('error', reject)
    server.listen(0, '127.0.0.1', () => resolve(server))
  })))
  const ports = servers.map((server) => server.address().port)
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))))
  return ports
}

const running = new Set()
process.on('exit', () => {
  for (const { child, dataDir } of running) {
    child.kill('SIGKILL')
    fs.rmSync(dataDir, { recursive: true, force: true })
  }
})

const b64 = (text) => Buffer.from(text).toString('base64')

/**
 * Starts `members` (1 or 3) etcd members and resolves once every one is healthy (has a
 * leader). heartbeat/election in ms (etcd's defaults are 100/1000; 25/250 elect in ~0.3 s).
 */
async function startCluster ({ members: count = 1, heartbeat = 25, election = 250, timeout = 15_000 } = {}) {
  const ports = await freePorts(2 * count)
  const root = dataRoot()
  const members = Array.from({ length: count }, (_, i) => ({
    name: `m${i}`,
    clientUrl: `http://127.0.0.1:${ports[2 * i]}`,
    peerUrl: `http://127.0.0.1:${ports[2 * i + 1]}`,
    dataDir: fs.mkdtempSync(path.join(root, `fastify-upstream-etcd-m${i}-`)),
    stderr: '',
    child: undefined
  }))
  const initialCluster = members.map((m) => `${m.name}=${m.peerUrl}`).join(',')
  for (const m of members) {
    m.child = spawn('etcd', [
      '--name', m.name, '--data-dir', m.dataDir,
      '--listen-client-urls', m.clientUrl, '--advertise-client-urls', m.clientUrl,
      '--listen-peer-urls', m.peerUrl, '--initial-advertise-peer-urls', m.peerUrl,
      '--initial-cluster', initialCluster, '--initial-cluster-state', 'new', '--initial-cluster-token', `bench-${ports[0]}`,
      '--heartbeat-interval', String(heartbeat), '--election-timeout', String(election),
      '--logger', 'zap', '--log-level', 'error', '--log-outputs', 'stderr'
    ], { env, stdio: ['ignore', 'ignore', 'pipe'] })
    const entry = { child: m.child, dataDir: m.dataDir }
    running.add(entry)
    m.child.stderr.setEncoding('utf8')
    m.child.stderr.on('data', (chunk) => { m.stderr = (m.stderr + chunk).slice(-2000) })
    m.child.once('exit', () => running.delete(entry))
    m.child.once('error', (error) => { m.stderr += `\n${error.message}` })
    m.pool = new Pool(m.clientUrl, { connections: 2 })
  }

  async function send (m, urlPath, body) {
    const res = await m.pool.request({
      path: urlPath,
      method: body === undefined ? 'GET' : 'POST',
      body: body === undefined ? undefined : JSON.stringify(body),
      headersTimeout: 5000,
      bodyTimeout: 5000
    })
    const answer = await res.body.json()
    if (res.statusCode !== 200 && urlPath !== '/health') throw new Error(`etcd ${urlPath} answered ${res.statusCode}: ${answer.message ?? JSON.stringify(answer)}`)
    return answer
  }

  async function stop () {
    await Promise.all(members.map(async (m) => {
      const child = m.child
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve))
        // the data is thrown away: SIGKILL takes 10 ms, SIGTERM on three members 6-7 s
        child.kill('SIGKILL')
        await exited
      }
      fs.rmSync(m.dataDir, { recursive: true, force: true })
      await m.pool.destroy()
    }))
  }

  const deadline = Date.now() + timeout
  try {
    await Promise.all(members.map(async (m) => {
      for (;;) {
        if (m.child.exitCode !== null || m.child.signalCode !== null) throw new Error(`etcd member ${m.name} exited; its stderr ends:\n${m.stderr}`)
        try {
          // 503 {"health":"false"} while there is no leader
          if ((await send(m, '/health')).health === 'true') break
        } catch {}
        if (Date.now() > deadline) throw new Error(`etcd member ${m.name} not healthy after ${timeout} ms:\n${m.stderr}`)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
      m.id = (await send(m, '/v3/maintenance/status', {})).header.member_id
    }))
  } catch (error) {
    await stop()
    throw error
  }

  return {
    endpoints: members.map((m) => m.clientUrl),
    members,
    /** The member that is leader now (as member `via` sees it). */
    async leader (via = 0) {
      const { leader } = await send(members[via], '/v3/maintenance/status', {})
      return members.find((m) => m.id === leader)
    },
    /** Puts through member `via` (default 0); resolves with the revision. */
    async put (key, value, via = 0) {
      return Number((await send(members[via], '/v3/kv/put', { key: b64(key), value: b64(value) })).header.revision)
    },
    async del (key, via = 0) {
      return Number((await send(members[via], '/v3/kv/deleterange', { key: b64(key) })).header.revision)
    },
    stop
  }
}

module.exports = { etcdAvailable, startCluster }
