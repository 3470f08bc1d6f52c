// Unit tests of candidate selection (chooseCandidates, Candidates in lib/upstream/candidates.ts): no socket, no server.
import { test } from 'tap'
import { Candidates, chooseCandidates } from '../../lib/upstream/candidates'
import type { SelectRequest } from '../../lib/balancers/types'

interface Fake {
  name: string
  backup: boolean
  draining: boolean
  disabled: boolean
  available: boolean
  inflight: number
  /** requests one connection carries at once: 1 over HTTP/1.1, maxConcurrentStreams over HTTP/2 */
  perConnection: number
}

/** A target: available unless `down`, `draining` or `disabled` (as Target.available reads). */
function target (name: string, flags: { backup?: boolean, down?: boolean, draining?: boolean, disabled?: boolean, inflight?: number, perConnection?: number } = {}): Fake {
  const draining = flags.draining === true
  const disabled = flags.disabled === true
  return {
    name,
    backup: flags.backup === true,
    draining,
    disabled,
    available: flags.down !== true && !draining && !disabled,
    inflight: flags.inflight ?? 0,
    perConnection: flags.perConnection ?? 1
  }
}

const names = (list: readonly Fake[]): string[] => list.map((t) => t.name)

test('chooseCandidates: the available primaries when any is available', async (t) => {
  const pool = [target('p1'), target('p2', { down: true }), target('p3'), target('b1', { backup: true })]
  const choice = chooseCandidates(pool, 0)
  t.same(names(choice.candidates), ['p1', 'p3'], 'available primaries only, no backup, no unavailable primary')
  t.equal(choice.panic, false)
  const one = chooseCandidates([target('p1', { down: true }), target('b1', { backup: true }), target('p2')], 0)
  t.same(names(one.candidates), ['p2'], 'a single available primary keeps the backups out')
  t.equal(one.panic, false)
})

test('chooseCandidates: backups only when no primary is available', async (t) => {
  const pool = [target('p1', { down: true }), target('b1', { backup: true }), target('p2', { down: true }), target('b2', { backup: true, down: true }), target('b3', { backup: true })]
  const choice = chooseCandidates(pool, 0)
  t.same(names(choice.candidates), ['b1', 'b3'], 'the available backups')
  t.equal(choice.panic, false)
  const none = chooseCandidates([target('p1', { down: true }), target('b1', { backup: true, down: true })], 0)
  t.same(none.candidates, [], 'nothing available, threshold 0: no candidate')
  t.equal(none.panic, false)
})

test('chooseCandidates: panic below the threshold returns every primary in service', async (t) => {
  const pool = [
    target('p1'),
    target('p2', { down: true }),
    target('p3', { down: true }),
    target('p4', { down: true }),
    target('drain', { draining: true }),
    target('off', { disabled: true }),
    target('b1', { backup: true })
  ]
  // 1 of 4 in service available: 25% < 50%
  const choice = chooseCandidates(pool, 50)
  t.equal(choice.panic, true, '25% available < 50%: panic')
  t.same(names(choice.candidates), ['p1', 'p2', 'p3', 'p4'], 'every primary not draining or disabled, healthy or not; no backup')
  // every primary down and no backup: panic sends to all of them
  const dead = chooseCandidates([target('p1', { down: true }), target('p2', { down: true }), target('b1', { backup: true, down: true })], 10)
  t.equal(dead.panic, true, 'no primary available and no backup available: panic')
  t.same(names(dead.candidates), ['p1', 'p2'], 'all the primaries, unhealthy as they are')
})

test('chooseCandidates: the threshold boundary', async (t) => {
  const pool = [target('p1'), target('p2'), target('p3', { down: true }), target('p4', { down: true })]
  // 2 of 4 available = 50%
  const at = chooseCandidates(pool, 50)
  t.equal(at.panic, false, '50% available, threshold 50: not below, no panic')
  t.same(names(at.candidates), ['p1', 'p2'])
  const above = chooseCandidates(pool, 51)
  t.equal(above.panic, true, '50% available, threshold 51: panic')
  t.same(names(above.candidates), ['p1', 'p2', 'p3', 'p4'])
  const healthy = chooseCandidates([target('p1'), target('p2')], 100)
  t.equal(healthy.panic, false, 'all available, threshold 100: no panic')
  t.same(names(healthy.candidates), ['p1', 'p2'])
})

test('chooseCandidates: no panic when the threshold is 0', async (t) => {
  const pool = [target('p1'), target('p2', { down: true }), target('p3', { down: true }), target('p4', { down: true }), target('p5', { down: true })]
  const choice = chooseCandidates(pool, 0)
  t.equal(choice.panic, false, '20% available, threshold 0: no panic')
  t.same(names(choice.candidates), ['p1'], 'only the available one')
  const none = chooseCandidates([target('p1', { down: true })], 0)
  t.equal(none.panic, false, 'none available, threshold 0: no panic')
  t.same(none.candidates, [])
})

test('chooseCandidates: no panic when backups can take over', async (t) => {
  const pool = [target('p1', { down: true }), target('p2', { down: true }), target('b1', { backup: true }), target('b2', { backup: true, down: true })]
  const choice = chooseCandidates(pool, 50)
  t.equal(choice.panic, false, 'no primary available, a backup is: no panic')
  t.same(names(choice.candidates), ['b1'], 'the available backup takes over')
  const full = chooseCandidates(pool, 100)
  t.equal(full.panic, false, 'even at threshold 100')
  t.same(names(full.candidates), ['b1'])
})

test('chooseCandidates: draining and disabled primaries are not in service', async (t) => {
  // in service: p1 (available) and p2 (down): 50%. Counting the draining and disabled ones would make it 25%.
  const pool = [target('p1'), target('p2', { down: true }), target('drain', { draining: true }), target('off', { disabled: true })]
  const choice = chooseCandidates(pool, 50)
  t.equal(choice.panic, false, '1 of 2 in service available: 50% is not below 50%')
  t.same(names(choice.candidates), ['p1'])
  const panic = chooseCandidates(pool, 60)
  t.equal(panic.panic, true, '50% < 60%: panic')
  t.same(names(panic.candidates), ['p1', 'p2'], 'draining and disabled primaries stay out even in panic')
  // nothing in service at all: no panic (nothing to panic over), and nothing to choose
  const out = chooseCandidates([target('drain', { draining: true }), target('off', { disabled: true })], 50)
  t.equal(out.panic, false, 'no primary in service: no panic')
  t.same(out.candidates, [], 'no candidate')
  // a draining backup is no candidate either
  const backups = chooseCandidates([target('p1', { down: true }), target('b1', { backup: true, draining: true }), target('b2', { backup: true })], 0)
  t.same(names(backups.candidates), ['b2'], 'a draining backup is not available')
})

test('chooseCandidates: an empty pool', async (t) => {
  for (const threshold of [0, 50, 100]) {
    const choice = chooseCandidates([], threshold)
    t.same(choice.candidates, [], `threshold ${threshold}: no candidate`)
    t.equal(choice.panic, false, `threshold ${threshold}: no panic`)
  }
})

/** A hand-written balancer: records updates; pick() follows `choose` over the last update. */
function balancer (choose: (list: readonly Fake[], n: number) => Fake | undefined) {
  const state = {
    list: [] as Fake[],
    updates: [] as string[][],
    picks: 0,
    update (targets: readonly unknown[]): void {
      state.list = [...targets] as Fake[]
      state.updates.push(names(state.list))
    },
    pick (_request: SelectRequest): Fake | undefined {
      return choose(state.list, state.picks++)
    }
  }
  return state
}

const request: SelectRequest = { url: '/', headers: {} }
const roundRobin = (list: readonly Fake[], n: number): Fake | undefined => list.length === 0 ? undefined : list[n % list.length]
const alwaysFirst = (list: readonly Fake[]): Fake | undefined => list[0]

test('Candidates: update chooses the candidates and feeds them to the balancer', async (t) => {
  const b = balancer(roundRobin)
  const c = new Candidates(b as never, { maxConnections: undefined, maxPending: 0 }, 50)
  c.update([target('p1'), target('p2'), target('b1', { backup: true })] as never)
  t.same(b.updates, [['p1', 'p2']], 'the balancer got the available primaries')
  t.equal(c.panic, false)
  c.update([target('p1'), target('p2', { down: true }), target('p3', { down: true })] as never)
  t.same(b.updates[1], ['p1', 'p2', 'p3'], 'in panic the balancer gets every primary in service')
  t.equal(c.panic, true, 'panic flag set')
  c.update([target('p1'), target('p2')] as never)
  t.equal(c.panic, false, 'panic flag cleared')
})

test('Candidates.pick: the balancer\'s pick when it is usable', async (t) => {
  const b = balancer(roundRobin)
  const c = new Candidates(b as never, { maxConnections: 2, maxPending: 1 }, 0)
  const p1 = target('p1', { inflight: 2 })
  const p2 = target('p2')
  c.update([p1, p2] as never)
  // inflight 2 < maxConnections 2 + maxPending 1: not full
  t.equal(c.pick(request), p1 as never, 'p1 at 2 in flight is below 2 + 1')
  t.equal(c.pick(request), p2 as never, 'then p2, as the balancer says')
  t.equal(c.isFull(p1 as never), false, 'isFull: 2 < 3')
  p1.inflight = 3
  t.equal(c.isFull(p1 as never), true, 'isFull: 3 >= 3')
})

test('Candidates.pick: passes over a target at its connection limit', async (t) => {
  const b = balancer(alwaysFirst)
  const c = new Candidates(b as never, { maxConnections: 2, maxPending: 1 }, 0)
  const full = target('full', { inflight: 3 })
  const free = target('free', { inflight: 1 })
  c.update([full, free] as never)
  t.equal(c.pick(request), free as never, 'the balancer insists on the full one; the free one is found')
  full.inflight = 2
  t.equal(c.pick(request), full as never, 'below the limit again, the balancer\'s choice is used')
  // maxPending 0: the limit is maxConnections itself
  const strict = new Candidates(balancer(alwaysFirst) as never, { maxConnections: 2, maxPending: 0 }, 0)
  strict.update([full, free] as never)
  t.equal(strict.pick(request), free as never, 'at 2 in flight with maxConnections 2 and no pending: full')
  // with a round-robin balancer, the re-ask finds the next one
  const rr = balancer(roundRobin)
  const c2 = new Candidates(rr as never, { maxConnections: 1, maxPending: 0 }, 0)
  const a = target('a', { inflight: 1 })
  const bb = target('b', { inflight: 1 })
  const cc = target('c', { inflight: 0 })
  c2.update([a, bb, cc] as never)
  t.equal(c2.pick(request), cc as never, 'a and b full, c free')
})

test('Candidates.isFull: an HTTP/2 target is full at maxConnections × its streams per connection + maxPending', async (t) => {
  const c = new Candidates(balancer(alwaysFirst) as never, { maxConnections: 2, maxPending: 1 }, 0)
  const h2 = target('h2', { inflight: 6, perConnection: 3 })
  const h1 = target('h1', { inflight: 2 })
  c.update([h2, h1] as never)
  t.equal(c.isFull(h2 as never), false, '6 in flight < 2 connections × 3 streams + 1 pending')
  t.equal(c.pick(request), h2 as never, 'so the balancer\'s pick stands')
  h2.inflight = 7
  t.equal(c.isFull(h2 as never), true, '7 >= 2 × 3 + 1: full')
  t.equal(c.pick(request), h1 as never, 'and passed over')
  h2.perConnection = 1
  h2.inflight = 3
  t.equal(c.isFull(h2 as never), true, 'a connection that fell back to HTTP/1.1 carries one: 3 >= 2 × 1 + 1')
  t.equal(c.saturated, true, 'the pool reads saturated')
})

test('Candidates.pick: passes over an excluded target', async (t) => {
  const b = balancer(alwaysFirst)
  const c = new Candidates(b as never, { maxConnections: undefined, maxPending: 0 }, 0)
  const p1 = target('p1')
  const p2 = target('p2')
  const p3 = target('p3')
  c.update([p1, p2, p3] as never)
  t.equal(c.pick(request), p1 as never, 'no exclusion: the balancer\'s pick')
  t.equal(c.pick(request, [p1] as never), p2 as never, 'p1 excluded: another')
  t.equal(c.pick(request, [p1, p2] as never), p3 as never, 'p1 and p2 excluded: p3')
  t.equal(c.pick(request, [p2] as never), p1 as never, 'an exclusion of another target leaves the pick alone')
  t.equal(c.pick(request, [] as never), p1 as never, 'an empty exclusion list')
})

test('Candidates.pick: undefined when every candidate is full or excluded', async (t) => {
  const c = new Candidates(balancer(roundRobin) as never, { maxConnections: 4, maxPending: 2 }, 0)
  const full = target('full', { inflight: 6 })
  const tried = target('tried', { inflight: 0 })
  c.update([full, tried] as never)
  t.equal(c.pick(request, [tried] as never), undefined, 'one full, the other excluded')
  t.equal(c.pick(request), tried as never, 'without the exclusion the free one is picked')
  full.inflight = 5
  t.equal(c.pick(request, [tried] as never), full as never, 'one below the limit again: picked')
  const allFull = new Candidates(balancer(roundRobin) as never, { maxConnections: 1, maxPending: 0 }, 0)
  allFull.update([target('x', { inflight: 1 }), target('y', { inflight: 9 })] as never)
  t.equal(allFull.pick(request), undefined, 'every candidate full')
  const excluded = new Candidates(balancer(roundRobin) as never, { maxConnections: undefined, maxPending: 0 }, 0)
  const x = target('x')
  const y = target('y')
  excluded.update([x, y] as never)
  t.equal(excluded.pick(request, [x, y] as never), undefined, 'every candidate excluded')
  const empty = new Candidates(balancer(roundRobin) as never, { maxConnections: undefined, maxPending: 0 }, 0)
  empty.update([] as never)
  t.equal(empty.pick(request), undefined, 'no candidate at all')
})

test('Candidates.saturated', async (t) => {
  const busy = target('busy', { inflight: 10_000 })
  const idle = target('idle')
  const unlimited = new Candidates(balancer(roundRobin) as never, { maxConnections: undefined, maxPending: 0 }, 0)
  unlimited.update([busy, idle] as never)
  t.equal(unlimited.saturated, false, 'no maxConnections: never saturated')
  t.equal(unlimited.isFull(busy as never), false, 'no maxConnections: never full')
  t.equal(unlimited.pick(request), busy as never, 'and the busy one is still picked')
  const limited = new Candidates(balancer(roundRobin) as never, { maxConnections: 100, maxPending: 10 }, 0)
  limited.update([idle] as never)
  t.equal(limited.saturated, false, 'no candidate at its limit')
  limited.update([busy, idle] as never)
  t.equal(limited.saturated, true, 'a candidate at its limit')
  busy.inflight = 109
  t.equal(limited.saturated, false, '109 < 100 + 10: not saturated')
  busy.inflight = 110
  t.equal(limited.saturated, true, '110: saturated')
  // only candidates count: a full target that is no candidate (a backup while primaries serve)
  const backup = target('backup', { backup: true, inflight: 500 })
  limited.update([idle, backup] as never)
  t.equal(limited.saturated, false, 'a full backup that is not a candidate does not saturate')
})
