import type { Target } from '../upstream/target'
import { HttpProbe } from './http-probe'

/**
 * The gRPC health-checking protocol (grpc/doc/health-checking.md): a unary call of
 * `grpc.health.v1.Health/Check` naming a service ('' for the server as a whole), healthy
 * when the answer is SERVING. Sent as the HTTP probe sends its request, on a connection of
 * its own per origin, over the pool's HTTP/2.
 *
 * The two messages are small enough to be written and read here without a protobuf
 * library: `HealthCheckRequest { string service = 1; }` and
 * `HealthCheckResponse { ServingStatus status = 1; }`, each in gRPC's frame (a compressed
 * flag, a 4-byte length, the message).
 */
export class GrpcProbe extends HttpProbe {
  override async check (target: Target): Promise<boolean> {
    const { timeout, headers, service } = this.config
    const response = await this.client(target.origin).request({
      path: target.basePath + '/grpc.health.v1.Health/Check',
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/grpc', te: 'trailers' },
      body: healthCheckRequest(service),
      signal: AbortSignal.timeout(timeout)
    })
    const body = Buffer.from(await response.body.arrayBuffer())
    // an error comes with no message and its status in the headers (Trailers-Only); a
    // message comes only with an OK status, in the trailers
    const status = response.headers['grpc-status']
    return response.statusCode === 200 && (status === undefined || status === '0') && servingStatus(body) === SERVING
  }
}

/** HealthCheckResponse.ServingStatus.SERVING */
export const SERVING = 1

/** A HealthCheckRequest for `service`, framed. */
export function healthCheckRequest (service: string): Buffer {
  const name = Buffer.from(service, 'utf8')
  const length = varint(name.length)
  const message = name.length === 0 ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x0a]), length, name])
  const frame = Buffer.alloc(5 + message.length)
  frame.writeUInt32BE(message.length, 1)
  message.copy(frame, 5)
  return frame
}

function varint (value: number): Buffer {
  const bytes: number[] = []
  while (value > 0x7f) {
    bytes.push((value & 0x7f) | 0x80)
    value >>>= 7
  }
  bytes.push(value)
  return Buffer.from(bytes)
}

/**
 * The status of a framed HealthCheckResponse, -1 when `frame` is not one (cut short,
 * compressed, or not a protobuf message); fields other than `status` are skipped.
 */
export function servingStatus (frame: Buffer): number {
  if (frame.length < 5 || frame[0] !== 0) return -1
  const end = 5 + frame.readUInt32BE(1)
  if (end > frame.length) return -1
  let at = 5
  // proto3 leaves a zero status (UNKNOWN) out
  let status = 0
  while (at < end) {
    const key = readVarint(frame, at, end)
    if (key === undefined) return -1
    at = key.next
    const field = Math.floor(key.value / 8)
    const wireType = key.value % 8
    if (wireType === 0) {
      const value = readVarint(frame, at, end)
      if (value === undefined) return -1
      at = value.next
      if (field === 1) status = value.value
    } else if (wireType === 2) {
      const length = readVarint(frame, at, end)
      if (length === undefined || length.next + length.value > end) return -1
      at = length.next + length.value
    } else if (wireType === 1 || wireType === 5) {
      at += wireType === 1 ? 8 : 4
    } else {
      return -1
    }
  }
  return at === end ? status : -1
}

function readVarint (buffer: Buffer, at: number, end: number): { value: number, next: number } | undefined {
  let value = 0
  let scale = 1
  for (let i = at; i < end && i < at + 8; i++) {
    const byte = buffer[i]
    value += (byte & 0x7f) * scale
    if ((byte & 0x80) === 0) return { value, next: i + 1 }
    scale *= 128
  }
  return undefined
}
