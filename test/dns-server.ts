import dgram from 'node:dgram'
import type { AddressInfo } from 'node:net'
import type { Teardown } from './helpers'

/**
 * A tiny authoritative DNS server on loopback UDP for the discovery tests: it answers A,
 * AAAA and SRV questions from `records`, NXDOMAIN for unknown names, and nothing at all
 * while `down` is set (as a dead resolver).
 */
export interface SrvRecord { priority: number, weight: number, port: number, target: string }
export interface Records { A?: string[], AAAA?: string[], SRV?: SrvRecord[] }

export interface DnsServer {
  address: string
  records: Map<string, Records>
  ttl: number
  down: boolean
  queries: number
  close: () => Promise<void>
}

const TYPES = { A: 1, AAAA: 28, SRV: 33 } as const

function encodeName (name: string): Buffer {
  const parts = name.replace(/\.$/, '').split('.').filter(Boolean)
  return Buffer.concat([...parts.map((p) => Buffer.concat([Buffer.from([p.length]), Buffer.from(p)])), Buffer.from([0])])
}

function ipv6 (address: string): Buffer {
  const [head, tail] = address.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? left : [...left, ...Array(8 - left.length - right.length).fill('0'), ...right]
  const out = Buffer.alloc(16)
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2))
  return out
}

function answer (type: number, ttl: number, rdata: Buffer): Buffer {
  const head = Buffer.alloc(12)
  head.writeUInt16BE(0xc00c, 0) // the question's name
  head.writeUInt16BE(type, 2)
  head.writeUInt16BE(1, 4)
  head.writeUInt32BE(ttl, 6)
  head.writeUInt16BE(rdata.length, 10)
  return Buffer.concat([head, rdata])
}

/** Starts a DNS server that `t` closes when the test ends (closing it sooner is fine). */
export async function startDnsServer (t: Teardown): Promise<DnsServer> {
  const socket = dgram.createSocket('udp4')
  // once: a second socket.close() throws
  let closing: Promise<void> | undefined
  const server: DnsServer = {
    address: '',
    records: new Map(),
    ttl: 60,
    down: false,
    queries: 0,
    close: () => (closing ??= new Promise<void>((resolve) => socket.close(() => resolve())))
  }
  t.teardown(server.close)
  socket.on('message', (query, peer) => {
    server.queries++
    if (server.down) return
    let at = 12
    const labels: string[] = []
    while (query[at] !== 0) {
      labels.push(query.subarray(at + 1, at + 1 + query[at]).toString())
      at += query[at] + 1
    }
    const questionEnd = at + 5
    const type = query.readUInt16BE(at + 1)
    const name = labels.join('.').toLowerCase()
    const records = server.records.get(name)
    const answers: Buffer[] = []
    if (records !== undefined) {
      if (type === TYPES.A) for (const a of records.A ?? []) answers.push(answer(type, server.ttl, Buffer.from(a.split('.').map(Number))))
      if (type === TYPES.AAAA) for (const a of records.AAAA ?? []) answers.push(answer(type, server.ttl, ipv6(a)))
      if (type === TYPES.SRV) {
        for (const srv of records.SRV ?? []) {
          const fixed = Buffer.alloc(6)
          fixed.writeUInt16BE(srv.priority, 0)
          fixed.writeUInt16BE(srv.weight, 2)
          fixed.writeUInt16BE(srv.port, 4)
          answers.push(answer(type, server.ttl, Buffer.concat([fixed, encodeName(srv.target)])))
        }
      }
    }
    const header = Buffer.alloc(12)
    query.copy(header, 0, 0, 2)
    header.writeUInt16BE(records === undefined ? 0x8183 : 0x8580, 2) // NXDOMAIN, or an authoritative answer
    header.writeUInt16BE(1, 4)
    header.writeUInt16BE(answers.length, 6)
    socket.send(Buffer.concat([header, query.subarray(12, questionEnd), ...answers]), peer.port, peer.address)
  })
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
  server.address = `127.0.0.1:${(socket.address() as AddressInfo).port}`
  return server
}
