import { test } from 'tap'
import { load, startGateway, startUpstreams } from '../helpers'

function resources (): string[] {
  return process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap' && r !== 'FSReqCallback').sort()
}

test('close() leaves no timer, socket or server behind', async (t) => {
  const ups = await startUpstreams(t, 3)
  const before = resources()
  const { app, url } = await startGateway(t, {
    upstreams: {
      a: { targets: ups.map((u) => u.url), balancer: 'least-request' },
      b: { targets: ups.map((u) => u.url), balancer: 'consistent-hash' }
    },
    routes: [{ prefix: '/a', upstream: 'a' }, { prefix: '/b', upstream: 'b' }]
  })
  await load(`${url}/a/x`, 30, 6)
  await load(`${url}/b/x`, 30, 6)
  t.ok(resources().length > before.length, 'the gateway holds sockets while open')
  await app.close()
  for (let i = 0; i < 50 && resources().length > before.length; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.same(resources(), before, 'the same resources as before the gateway started')
})
