import { existsSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import { Agent, request } from 'undici'
import { etcdSkip, etcdTlsSkip, startEtcd, type EtcdMember } from '../etcd'

// The etcd test harness (test/etcd.ts) against real etcd processes: what the etcd tests
// rely on, checked once here.

const base64 = (text: string): string => Buffer.from(text).toString('base64')

/** A POST to one member's JSON gateway, as a client of the tests would send it. */
async function post (url: string, path: string, body: unknown, authorization?: string): Promise<{ status: number, answer: any }> {
  const res = await fetch(`${url}${path}`, { method: 'POST', body: JSON.stringify(body), headers: authorization === undefined ? {} : { authorization } })
  return { status: res.status, answer: await res.json() }
}

/** The value of `key` in `member`'s own copy (a serializable read: no round to the leader). */
async function localValue (member: EtcdMember, key: string): Promise<string | undefined> {
  const { answer } = await post(member.clientUrl, '/v3/kv/range', { key: base64(key), serializable: true })
  const value = answer.kvs?.[0]?.value
  return value === undefined ? undefined : Buffer.from(value, 'base64').toString()
}

function running (pid: number | undefined): boolean {
  if (pid === undefined) return false
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

test('one member: put, get, delete, compact', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t)
  t.equal(etcd.members.length, 1)
  t.match(etcd.endpoints, [/^http:\/\/127\.0\.0\.1:\d+$/])
  t.not(etcd.endpoints[0], 'http://127.0.0.1:2379', 'not the port of a system etcd')
  const first = await etcd.put('/pools/users', '{"targets":[]}')
  t.match(first, /^\d+$/, 'revisions are decimal strings')
  t.equal(await etcd.get('/pools/users'), '{"targets":[]}')
  t.equal(await etcd.get('/pools/none'), undefined)
  t.equal(await etcd.put('/pools/users', 'ü'), String(Number(first) + 1), 'one revision a put')
  t.equal(await etcd.get('/pools/users'), 'ü')
  await etcd.del('/pools/users')
  t.equal(await etcd.get('/pools/users'), undefined)
  const compacted = await etcd.compact()
  t.equal(compacted, String(Number(first) + 2))
  const old = await post(etcd.endpoints[0], '/v3/kv/range', { key: base64('/pools/users'), revision: first })
  t.match(old, { status: 400, answer: { message: /compacted/ } }, 'the history before the compaction is gone')
  await t.rejects(etcd.put('/x', 'y', '12345'), /lease not found/, 'a put is given the lease id')
})

test('three members: a leader, a new one when it is killed, the killed member rejoins', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t, { members: 3 })
  t.equal(new Set(etcd.endpoints).size, 3)
  const leader = await etcd.leader()
  await etcd.kill(leader)
  t.equal(leader.alive, false)
  t.notOk(running(leader.pid), 'the process has exited')
  const next = await etcd.leader()
  t.not(next.name, leader.name, 'another member leads')
  await etcd.put('/a', 'written without the old leader')
  t.equal(await etcd.get('/a'), 'written without the old leader')

  await etcd.restart(leader)
  t.equal(leader.alive, true)
  // its own copy catches up with the write it missed
  for (let i = 0; i < 100 && await localValue(leader, '/a') === undefined; i++) await sleep(20)
  t.equal(await localValue(leader, '/a'), 'written without the old leader')
  t.equal((await etcd.leader()).alive, true)
})

test('stop() then start(): every member down, then back with its data', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t, { members: 3 })
  await etcd.put('/kept', 'yes')
  await etcd.stop()
  t.same(etcd.members.map((m) => m.alive), [false, false, false])
  await t.rejects(fetch(`${etcd.endpoints[0]}/health`), 'nothing listens')
  await etcd.start()
  t.same(etcd.members.map((m) => m.alive), [true, true, true])
  t.equal(await etcd.get('/kept'), 'yes')
  for (const member of etcd.members) t.equal(await localValue(member, '/kept'), 'yes', member.name)
})

test('auth: no put without a token, a put with the gateway user\'s token', { skip: etcdSkip }, async (t) => {
  const etcd = await startEtcd(t, { auth: true })
  t.same(etcd.credentials, { username: 'gateway', password: 'gateway-pass' })
  const [url] = etcd.endpoints
  const put = { key: base64('/pools/users'), value: base64('v') }
  t.match(await post(url, '/v3/kv/put', put), { status: 400, answer: { message: /user name is empty/ } })
  t.match(await post(url, '/v3/auth/authenticate', { name: 'gateway', password: 'wrong' }), { status: 400, answer: { message: /authentication failed/ } })
  const { answer } = await post(url, '/v3/auth/authenticate', { name: etcd.credentials?.username, password: etcd.credentials?.password })
  t.type(answer.token, 'string')
  t.match(await post(url, '/v3/kv/put', put, answer.token), { status: 200 })
  t.match(await post(url, '/v3/kv/put', { key: base64('no-slash'), value: base64('v') }, answer.token), { status: 200 }, 'every key')
  t.equal(await etcd.get('/pools/users'), 'v', 'the harness itself reads as root')
  await etcd.restart(etcd.members[0])
  t.match(await etcd.put('/after-restart', 'v'), /^\d+$/, 'and goes on after a restart')
})

test('tls: https with the private CA, a client certificate required', { skip: etcdTlsSkip }, async (t) => {
  const etcd = await startEtcd(t, { tls: true })
  t.match(etcd.endpoints, [/^https:\/\/localhost:\d+$/])
  const tls = etcd.tls as { ca: string, cert: string, key: string }
  const range = async (connect: object): Promise<number> => {
    const agent = new Agent({ connect })
    try {
      const res = await request(`${etcd.endpoints[0]}/v3/kv/range`, { dispatcher: agent, method: 'POST', body: JSON.stringify({ key: base64('/a') }) })
      await res.body.dump()
      return res.statusCode
    } finally {
      await agent.destroy()
    }
  }
  t.equal(await range(tls), 200, 'the CA and the client certificate')
  await t.rejects(range({ ca: tls.ca }), 'no client certificate: the handshake fails')
  await t.rejects(range({ cert: tls.cert, key: tls.key }), /certificate/, 'the server certificate is not trusted without the CA')
  await t.rejects(fetch(etcd.endpoints[0].replace('https:', 'http:') + '/health'), 'no plain HTTP')
  await etcd.put('/a', 'over tls')
  t.equal(await etcd.get('/a'), 'over tls')
})

test('after the teardown no etcd of the test is left, nor its data', { skip: etcdSkip }, async (t) => {
  const pids: Array<number | undefined> = []
  let dirs: string[] = []
  await t.test('a cluster with a restarted member', async (t) => {
    const etcd = await startEtcd(t, { members: 3 })
    dirs = etcd.members.map((m) => m.dataDir)
    pids.push(...etcd.members.map((m) => m.pid))
    await etcd.restart(etcd.members[1])
    pids.push(etcd.members[1].pid)
    t.equal(pids.filter(running).length, 3, 'three running, and the first process of m1 gone')
    t.ok(dirs.every(existsSync))
  })
  t.equal(pids.length, 4)
  t.same(pids.filter(running), [], 'every process has exited')
  t.same(dirs.filter(existsSync), [], 'every data dir is removed')
})
