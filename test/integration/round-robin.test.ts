import { test } from 'tap'
import { load, startGateway, startUpstreams } from '../helpers'

test('weighted round robin stays within 2% of the weights over 600 requests', async (t) => {
  const ups = await startUpstreams(t, 3)
  const { url } = await startGateway(t, {
    upstreams: {
      pool: {
        targets: [{ url: ups[0].url, weight: 3 }, { url: ups[1].url, weight: 2 }, ups[2].url]
      }
    },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  const counts = await load(`${url}/x`, 600, 4)
  const expected = { u0: 3 / 6, u1: 2 / 6, u2: 1 / 6 }
  for (const [name, share] of Object.entries(expected)) {
    t.ok(Math.abs(counts[name] / 600 - share) <= 0.02, `${name} got ${counts[name]} of 600, expected ${share * 600}`)
  }
  t.equal(ups.reduce((n, u) => n + u.hits, 0), 600, 'every request reached an upstream once')
})
