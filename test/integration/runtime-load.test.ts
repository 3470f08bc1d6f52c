import diagnostics from 'node:diagnostics_channel'
import { test } from 'tap'
import type { TargetStateEvent } from '../../lib/index'
import { startGateway, startUpstream, type Upstream } from '../helpers'

test('add, re-weight, disable and drain targets under concurrent load: no failed request, none to a removed target', async (t) => {
  const ups: Upstream[] = []
  const removedAt = new Map<string, number>()
  const late: string[] = []
  // each upstream takes a little time, so that requests are in flight when targets go
  const handler = (_req: unknown, res: import('node:http').ServerResponse, _body: string, upstream: Upstream): void => {
    const gone = removedAt.get(upstream.url)
    if (gone !== undefined && Date.now() > gone) late.push(upstream.name)
    setTimeout(() => { res.setHeader('x-upstream', upstream.name); res.end(upstream.name) }, 5)
  }
  for (let i = 0; i < 6; i++) ups.push(await startUpstream(t, `u${i}`, handler))
  const events: TargetStateEvent[] = []
  const onEvent = (message: unknown): void => { events.push(message as TargetStateEvent) }
  diagnostics.subscribe('fastify-upstream:target-state', onEvent)
  const { app, url } = await startGateway(t, {
    upstreams: { pool: { targets: [ups[0].url, ups[1].url], balancer: 'least-request', slowStart: { window: 300 } } },
    routes: [{ prefix: '/', upstream: 'pool' }]
  })
  t.teardown(() => { diagnostics.unsubscribe('fastify-upstream:target-state', onEvent) })
  const pool = app.upstreams.get('pool')
  if (pool === undefined) throw new Error('no pool')

  const statuses: Record<string, number> = {}
  const state = { running: true }
  const clients = Array.from({ length: 8 }, async () => {
    while (state.running) {
      const res = await fetch(`${url}/x`).catch(() => undefined)
      const key = res === undefined ? 'error' : String(res.status)
      statuses[key] = (statuses[key] ?? 0) + 1
      await res?.arrayBuffer()
    }
  })
  const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
  for (let round = 0; round < 3; round++) {
    await pause(100)
    const a = ups[2 + (round % 4)]
    pool.addTarget({ url: a.url, weight: 2 })
    await pause(100)
    pool.setWeight(a.url, 1)
    pool.setState(ups[1].url, 'disabled')
    await pause(100)
    pool.setState(ups[1].url, 'enabled')
    // drained: requests on it finish, none start after the call
    const drained = pool.removeTarget(a.url, { drain: true })
    removedAt.set(a.url, Date.now() + 50)
    await drained
    removedAt.delete(a.url)
  }
  await pause(100)
  state.running = false
  await Promise.all(clients)
  t.same(Object.keys(statuses), ['200'], `every request succeeded: ${JSON.stringify(statuses)}`)
  t.ok(statuses['200'] > 100, 'under real load')
  t.same(late, [], 'no request reached a target after it was removed')
  const kinds = new Set(events.map((e) => e.kind))
  t.same([...kinds].sort(), ['added', 'removed', 'state', 'weight'], 'every kind of change is published')
  t.match(events.find((e) => e.kind === 'weight'), { pool: 'pool', reason: 'weight 2 -> 1' })
})
