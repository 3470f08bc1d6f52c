// Unit tests of interimHeadLength (lib/upstream/interim.ts): which bytes at the start of an answer are an unasked 100 Continue.
import { test } from 'tap'
import { interimHeadLength } from '../../lib/upstream/interim'

const b = (text: string): Buffer => Buffer.from(text, 'latin1')

test('a whole 100 Continue head is measured to its blank line', async (t) => {
  t.equal(interimHeadLength(b('HTTP/1.1 100 Continue\r\n\r\n')), 25)
  t.equal(interimHeadLength(b('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n')), 25, 'the answer after it is left')
  t.equal(interimHeadLength(b('HTTP/1.0 100 Continue\r\nX-A: b\r\n\r\n')), 33, 'with header fields, HTTP/1.0 too')
  t.equal(interimHeadLength(b('HTTP/1.1 100\r\n\r\n')), 16, 'with no reason phrase')
})

test('a start that may still become one needs more bytes', async (t) => {
  for (const start of ['H', 'HTTP/1.1 1', 'HTTP/1.1 100', 'HTTP/1.1 100 Continue\r\n', 'HTTP/1.1 100 Continue\r\n\r']) {
    t.equal(interimHeadLength(b(start)), 0, JSON.stringify(start))
  }
})

test('anything else is left alone', async (t) => {
  for (const start of ['HTTP/1.1 200 OK\r\n\r\n', 'HTTP/1.1 103 Early Hints\r\n\r\n', 'HTTP/1.1 1000 x\r\n\r\n', 'HTTP/1.1 2', 'hello', 'X']) {
    t.equal(interimHeadLength(b(start)), -1, JSON.stringify(start))
  }
  t.equal(interimHeadLength(b('HTTP/1.1 100 ' + 'x'.repeat(20_000))), -1, 'a head with no end past 16 KiB')
})
