// Unit tests of passive-check ejection policy (mayEject, ejectionTime in lib/health/outlier-detector.ts): no socket, no server.
import { test } from 'tap'
import { ejectionTime, mayEject } from '../../lib/health/outlier-detector'

/** A pool of `size` targets, the first `ejected` of them ejected. */
function pool (size: number, ejected: number): Array<{ ejected: boolean }> {
  return Array.from({ length: size }, (_, i) => ({ ejected: i < ejected }))
}

test('mayEject: one target may always be ejected', async (t) => {
  t.equal(mayEject(pool(1, 0), 0), true, 'pool of 1, 0%')
  t.equal(mayEject(pool(2, 0), 0), true, 'pool of 2, 0%')
  t.equal(mayEject(pool(2, 0), 10), true, 'pool of 2, 10% (would allow 0.2 targets)')
  t.equal(mayEject(pool(10, 0), 5), true, 'pool of 10, 5% (would allow 0.5 targets)')
  t.equal(mayEject(pool(4, 0), 0), true, 'pool of 4, 0%')
  // but only one: a second is held to the percent
  t.equal(mayEject(pool(1, 1), 0), false, 'pool of 1 with its one ejected, 0%')
  t.equal(mayEject(pool(2, 1), 10), false, 'pool of 2, 10%: not a second')
  t.equal(mayEject(pool(10, 1), 5), false, 'pool of 10, 5%: not a second')
  t.equal(mayEject(pool(4, 1), 0), false, 'pool of 4, 0%: not a second')
})

test('mayEject: the boundary, exactly at the percent, is allowed', async (t) => {
  // pool of 2
  t.equal(mayEject(pool(2, 1), 100), true, '2 targets, 100%: the second (100%) allowed')
  t.equal(mayEject(pool(2, 1), 99.9), false, '2 targets, 99.9%: the second (100%) refused')
  t.equal(mayEject(pool(2, 1), 50), false, '2 targets, 50%: the second (100%) refused')
  t.equal(mayEject(pool(2, 2), 100), false, '2 targets, 100%: none left to eject (150%)')
  // pool of 4
  t.equal(mayEject(pool(4, 1), 50), true, '4 targets, 50%: the second (50%) allowed')
  t.equal(mayEject(pool(4, 1), 49), false, '4 targets, 49%: the second (50%) refused')
  t.equal(mayEject(pool(4, 2), 50), false, '4 targets, 50%: the third (75%) refused')
  t.equal(mayEject(pool(4, 2), 75), true, '4 targets, 75%: the third (75%) allowed')
  t.equal(mayEject(pool(4, 3), 75), false, '4 targets, 75%: the fourth (100%) refused')
  t.equal(mayEject(pool(4, 1), 25), false, '4 targets, 25%: the second (50%) refused')
  // pool of 10
  t.equal(mayEject(pool(10, 2), 30), true, '10 targets, 30%: the third (30%) allowed')
  t.equal(mayEject(pool(10, 3), 30), false, '10 targets, 30%: the fourth (40%) refused')
  t.equal(mayEject(pool(10, 1), 20), true, '10 targets, 20%: the second (20%) allowed')
  t.equal(mayEject(pool(10, 1), 10), false, '10 targets, 10%: the second (20%) refused')
  t.equal(mayEject(pool(10, 9), 100), true, '10 targets, 100%: the last allowed')
})

test('mayEject: counts ejected targets wherever they are in the list', async (t) => {
  const targets = pool(4, 0)
  targets[3].ejected = true
  t.equal(mayEject(targets, 25), false, 'the last one ejected counts: a second (50%) is refused at 25%')
  t.equal(mayEject(targets, 50), true, 'and allowed at 50%')
  targets[1].ejected = true
  t.equal(mayEject(targets, 50), false, 'two ejected, not in front: a third (75%) refused at 50%')
})

test('mayEject: ejecting one by one stops at max(1, floor(size × percent / 100)), never more than the percent', async (t) => {
  for (const size of [2, 4, 10]) {
    for (const percent of [0, 10, 20, 25, 30, 33, 50, 75, 90, 100]) {
      const targets = pool(size, 0)
      let ejected = 0
      // bounded: at most one ejection per target
      for (let i = 0; i < size && mayEject(targets, percent); i++) {
        targets[i].ejected = true
        ejected++
      }
      const expected = Math.max(1, Math.floor((size * percent) / 100))
      t.equal(ejected, expected, `pool of ${size}, ${percent}%: ${expected} ejected`)
      t.ok(ejected === 1 || (ejected * 100) / size <= percent, `pool of ${size}, ${percent}%: within the percent, or just the one`)
      if (ejected < size) t.equal(mayEject(targets, percent), false, `pool of ${size}, ${percent}%: no more`)
    }
  }
})

test('ejectionTime: base, doubling, capped at maxEjectionTime', async (t) => {
  const config = { ejectionTime: 1000, maxEjectionTime: 10000 }
  t.equal(ejectionTime(config, 0), 1000, 'first ejection: the base')
  t.equal(ejectionTime(config, 1), 2000, 'second in a row: doubled')
  t.equal(ejectionTime(config, 2), 4000, 'third: 4×')
  t.equal(ejectionTime(config, 3), 8000, 'fourth: 8×')
  t.equal(ejectionTime(config, 4), 10000, 'fifth: 16× capped at the max')
  t.equal(ejectionTime(config, 10), 10000, 'streak 10: the max')
  t.equal(ejectionTime(config, 2000), 10000, 'a huge streak (2^2000 overflows to Infinity): still the max')
  // the cap when it is not a power of two times the base
  t.equal(ejectionTime({ ejectionTime: 30000, maxEjectionTime: 100000 }, 1), 60000, '30 s doubled')
  t.equal(ejectionTime({ ejectionTime: 30000, maxEjectionTime: 100000 }, 2), 100000, '120 s capped at 100 s')
  // max equal to base: never longer
  t.equal(ejectionTime({ ejectionTime: 5000, maxEjectionTime: 5000 }, 0), 5000, 'max = base: base')
  t.equal(ejectionTime({ ejectionTime: 5000, maxEjectionTime: 5000 }, 3), 5000, 'max = base: no doubling')
  // exactly at the cap
  t.equal(ejectionTime({ ejectionTime: 1000, maxEjectionTime: 8000 }, 3), 8000, 'doubling landing on the max')
})

test('ejectionTime: never decreases with the streak, never exceeds the max', async (t) => {
  const config = { ejectionTime: 700, maxEjectionTime: 45000 }
  let previous = 0
  let monotonic = true
  let withinMax = true
  for (let streak = 0; streak < 64; streak++) {
    const time = ejectionTime(config, streak)
    if (time < previous) monotonic = false
    if (time > config.maxEjectionTime) withinMax = false
    previous = time
  }
  t.ok(monotonic, 'non-decreasing over streaks 0..63')
  t.ok(withinMax, 'at most maxEjectionTime over streaks 0..63')
  t.equal(previous, 45000, 'reaches the max')
})
