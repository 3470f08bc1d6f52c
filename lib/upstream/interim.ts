import type { Socket } from 'node:net'

/**
 * undici refuses a `100 Continue` the request did not ask for (it never sends `Expect`),
 * and fails the exchange. A target may still send one (RFC 9110 §15.2 lets a client
 * ignore it), so connections to targets drop it here, before undici reads the answer:
 * at the start of each response, an interim head `HTTP/1.x 100 ...` up to its blank line
 * is skipped. Other 1xx (102, 103) reach undici, which passes them over.
 *
 * A response starts after a request head is written; undici sends one request at a time
 * on a connection, so the bytes read after it are the start of the answer.
 */

const REQUEST_HEAD = /^[A-Z]+ \S+ HTTP\/1\.1\r\n/
const CONTINUE = ['HTTP/1.1 100', 'HTTP/1.0 100'].map((text) => Buffer.from(text, 'latin1'))
const HEAD_END = Buffer.from('\r\n\r\n', 'latin1')
/** an interim head longer than this is no interim head to skip */
const MAX_HEAD = 16_384

/**
 * Where the interim head at the start of `data` ends: its length, 0 when more bytes are
 * needed to tell, -1 when `data` starts with something else.
 */
export function interimHeadLength (data: Buffer): number {
  for (const prefix of CONTINUE) {
    const compared = Math.min(prefix.length, data.length)
    if (data.compare(prefix, 0, compared, 0, compared) !== 0) continue
    if (data.length <= prefix.length) return 0
    const next = data[prefix.length]
    if (next !== 0x20 && next !== 0x0d) return -1
    const end = data.indexOf(HEAD_END, prefix.length)
    if (end !== -1) return end + HEAD_END.length
    return data.length > MAX_HEAD ? -1 : 0
  }
  return -1
}

type Write = Socket['write']

/** Makes `socket` drop unasked `100 Continue` heads at the start of each response. */
export function skipUnaskedContinue (socket: Socket): void {
  const read = socket.read
  const write = socket.write as (...args: unknown[]) => boolean
  let awaiting = false
  /** the start of a response read but not yet told apart */
  let pending: Buffer | null = null
  socket.write = function (this: Socket, chunk: unknown, ...rest: unknown[]): boolean {
    if (!awaiting && typeof chunk === 'string' && REQUEST_HEAD.test(chunk)) awaiting = true
    return write.call(this, chunk, ...rest)
  } as Write
  socket.read = function (this: Socket, size?: number): Buffer | null {
    let chunk = read.call(this, size) as Buffer | null
    while (awaiting && chunk !== null) {
      if (pending !== null) {
        chunk = Buffer.concat([pending, chunk])
        pending = null
      }
      const length = interimHeadLength(chunk)
      if (length === -1) {
        awaiting = false
      } else if (length === 0) {
        pending = chunk
        chunk = null
      } else {
        chunk = length === chunk.length ? read.call(this, size) as Buffer | null : chunk.subarray(length)
      }
    }
    return chunk
  }
}
