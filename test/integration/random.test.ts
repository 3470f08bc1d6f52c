import { test } from 'tap'
import { load, startGateway, startUpstreams } from '../helpers'

test('weighted random stays within 4% of the weights over 4000 requests', async (t) => {
  const ups = await startUpstreams(t, 3)
  const { url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [{ url: ups[0].url, weight: 3 }, { url: ups[1].url, weight: 2 }, ups[2].url],
        balancer: 'random'
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const total = 4000
  const counts = await load(`${url}/x`, total, 8)
  t.comment(`counts ${JSON.stringify(counts)}`)
  const expected = { u0: 3 / 6, u1: 2 / 6, u2: 1 / 6 }
  for (const [name, share] of Object.entries(expected)) {
    const got = (counts[name] ?? 0) / total
    t.ok(Math.abs(got - share) <= 0.04, `${name} got ${counts[name]} of ${total} (${(100 * got).toFixed(1)}%), expected ${(100 * share).toFixed(1)}% ± 4`)
  }
  t.equal(ups.reduce((n, u) => n + u.hits, 0), total, 'every request reached an upstream once')
})

test('random is not a rotation: the sequence of targets differs from round robin', async (t) => {
  // guards against a "random" balancer that degrades into a fixed cycle: with equal weights
  // a rotation repeats u0,u1,u2 exactly; a random draw breaks that pattern within 60 requests
  const ups = await startUpstreams(t, 3)
  const { url } = await startGateway(t, {
    upstreams: { pool: { targets: ups.map((u) => u.url), balancer: { type: 'random' } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const sequence: string[] = []
  for (let i = 0; i < 60; i++) {
    const res = await fetch(`${url}/seq`)
    sequence.push(res.headers.get('x-upstream') ?? `status-${res.status}`)
    await res.arrayBuffer()
  }
  const rotation = sequence.every((name, i) => i < 3 || name === sequence[i - 3])
  t.notOk(rotation, `sequence is not a fixed cycle: ${sequence.join(',')}`)
  t.same(new Set(sequence), new Set(['u0', 'u1', 'u2']), 'every target was drawn')
})
