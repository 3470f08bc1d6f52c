// The split policy alone (no sockets): exact shares by weight, split_clients hashing, fallback order.
import { test } from 'tap'
import { Split } from '../../lib/traffic/split'

const request = (headers: Record<string, string> = {}, method = 'GET'): { url: string, method: string, headers: Record<string, string> } => ({ url: '/', method, headers })

test('without a key, the weights give exact shares, spread out', async (t) => {
  const split = new Split('s', { branches: [{ pool: 'a', weight: 3 }, { pool: 'b', weight: 1 }, { pool: 'c', weight: 0 }] }, 'splits.s')
  const picks = Array.from({ length: 400 }, () => split.choose(request()).pool)
  t.equal(picks.filter((p) => p === 'a').length, 300)
  t.equal(picks.filter((p) => p === 'b').length, 100)
  t.equal(picks.filter((p) => p === 'c').length, 0, 'weight 0 takes nothing')
  t.notOk(picks.join('').includes('bb'), 'never two b in a row at 3:1')
})

test('with a key: the same key, the same branch; growing the last branch moves only keys into it', async (t) => {
  const split = new Split('s', { branches: [{ pool: 'a', weight: 80 }, { pool: 'b', weight: 15 }, { pool: 'c', weight: 5 }], key: 'header:x-user' }, 'splits.s')
  const keys = Array.from({ length: 20_000 }, (_, i) => `user-${i}`)
  const before = keys.map((k) => split.choose(request({ 'x-user': k })).pool)
  t.same(keys.map((k) => split.choose(request({ 'x-user': k })).pool), before, 'stable')
  for (const [pool, share] of [['a', 0.8], ['b', 0.15], ['c', 0.05]] as const) {
    const got = before.filter((p) => p === pool).length / keys.length
    t.ok(Math.abs(got - share) < 0.01, `${pool}: ${got}`)
  }
  split.setWeights({ b: 10, c: 10 })
  const after = keys.map((k) => split.choose(request({ 'x-user': k })).pool)
  const moves = new Map<string, number>()
  keys.forEach((_, i) => { if (before[i] !== after[i]) moves.set(`${before[i]}>${after[i]}`, (moves.get(`${before[i]}>${after[i]}`) ?? 0) + 1) })
  t.same([...moves.keys()].sort(), ['b>c'], 'only b lost keys, only to c')
  t.ok(Math.abs((moves.get('b>c') ?? 0) / keys.length - 0.05) < 0.01, 'about 5% moved')
  t.equal(split.choose(request()).pool.length, 1, 'a request without the key is split by weight')
})

test('two splits on one key cut clients along different lines', async (t) => {
  const one = new Split('one', { branches: [{ pool: 'a' }, { pool: 'b' }], key: 'header:x-user' }, 'splits.one')
  const two = new Split('two', { branches: [{ pool: 'a' }, { pool: 'b' }], key: 'header:x-user' }, 'splits.two')
  const keys = Array.from({ length: 2000 }, (_, i) => `u${i}`)
  const same = keys.filter((k) => one.choose(request({ 'x-user': k })).pool === two.choose(request({ 'x-user': k })).pool).length
  t.ok(same > 800 && same < 1200, `about half agree (${same})`)
})

test('fallback: the other weighted branches, largest weight first, each pool once; none when off', async (t) => {
  const split = new Split('s', { branches: [{ pool: 'x', match: { method: 'POST' } }, { pool: 'a', weight: 1 }, { pool: 'b', weight: 5 }, { pool: 'c', weight: 3 }] }, 'splits.s')
  const [matched, a, b, c] = split.branches
  t.equal(split.choose(request({}, 'POST')), matched)
  t.equal(split.fallbackFor([matched]), b)
  t.equal(split.fallbackFor([matched, b]), c)
  t.equal(split.fallbackFor([b, c]), a)
  t.equal(split.fallbackFor([a, b, c]), undefined)
  const strict = new Split('t', { branches: [{ pool: 'a' }, { pool: 'b' }], fallback: false }, 'splits.t')
  t.equal(strict.fallbackFor([strict.branches[0]]), undefined)
})

test('a global RegExp is used without its state', async (t) => {
  const split = new Split('s', { branches: [{ pool: 'x', match: { header: 'x-a', regex: /^ok$/g } }, { pool: 'a' }] }, 'splits.s')
  t.same([1, 2, 3].map(() => split.choose(request({ 'x-a': 'ok' })).pool), ['x', 'x', 'x'])
})
