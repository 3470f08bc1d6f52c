// Unit tests of the retry policy (mayRetry, backoff in lib/proxy/retry.ts): no socket, no server.
import { test } from 'tap'
import { backoff, hasIdempotencyKey, mayRetry, type AttemptFacts, type RetryBudget } from '../../lib/proxy/retry'

// the config type as mayRetry takes it (the options' RetryConfig, wherever it is declared)
type RetryConfig = Parameters<typeof mayRetry>[0]

function config (overrides: Partial<RetryConfig> = {}): RetryConfig {
  return {
    attempts: 2,
    methods: new Set(['GET', 'HEAD', 'PUT']),
    idempotencyKey: 'idempotency-key',
    statusCodes: new Uint8Array(600),
    backoffBase: 100,
    backoffMax: 1000,
    budgetPercent: 20,
    budgetMinRetries: 3,
    hedgeDelay: 0,
    ...overrides
  }
}

// a budget with plenty of room, and a failed GET that reached the target
const roomy: RetryBudget = { inflight: 1000, retriesInFlight: 0 }
function facts (overrides: Partial<AttemptFacts> = {}): AttemptFacts {
  return { retries: 0, method: 'GET', keyed: false, neverSent: false, bodyReplayable: true, ...overrides }
}

test('mayRetry: attempts', async (t) => {
  const c = config({ attempts: 2 })
  t.equal(mayRetry(c, roomy, facts({ retries: 0 })), true, 'first retry allowed')
  t.equal(mayRetry(c, roomy, facts({ retries: 1 })), true, 'second retry allowed')
  t.equal(mayRetry(c, roomy, facts({ retries: 2 })), false, 'attempts exhausted')
  t.equal(mayRetry(c, roomy, facts({ retries: 3 })), false, 'past the attempts')
  t.equal(mayRetry(c, roomy, facts({ retries: 2, neverSent: true })), false, 'exhausted even when nothing was sent')
  t.equal(mayRetry(config({ attempts: 0 }), roomy, facts({ retries: 0, neverSent: true })), false, 'attempts: 0 never retries')
})

test('mayRetry: a request with an Idempotency-Key is retried like one of an idempotent method', async (t) => {
  const c = config()
  t.equal(mayRetry(c, roomy, facts({ method: 'POST' })), false, 'a POST that reached the target: no')
  t.equal(mayRetry(c, roomy, facts({ method: 'POST', keyed: true })), true, 'the same POST with the key: yes')
  t.equal(mayRetry(c, roomy, facts({ method: 'PATCH', keyed: true, bodyReplayable: false })), false, 'not without its body')
  t.equal(mayRetry(c, roomy, facts({ method: 'POST', keyed: true, retries: 2 })), false, 'nor past the attempts')
})

test('hasIdempotencyKey: the header the config names, none when turned off', async (t) => {
  t.equal(hasIdempotencyKey(config(), { 'idempotency-key': 'k1' }), true)
  t.equal(hasIdempotencyKey(config(), { 'x-other': 'k1' }), false)
  t.equal(hasIdempotencyKey(config({ idempotencyKey: 'x-once' }), { 'x-once': 'k1' }), true)
  t.equal(hasIdempotencyKey(config({ idempotencyKey: undefined }), { 'idempotency-key': 'k1' }), false, 'off')
})

test('mayRetry: a body that cannot be sent again is never retried', async (t) => {
  const c = config()
  t.equal(mayRetry(c, roomy, facts({ bodyReplayable: false })), false, 'GET that reached the target')
  t.equal(mayRetry(c, roomy, facts({ bodyReplayable: false, neverSent: true })), false, 'even when nothing was sent')
  t.equal(mayRetry(c, roomy, facts({ method: 'POST', bodyReplayable: false, neverSent: true })), false, 'POST, nothing sent')
  t.equal(mayRetry(c, roomy, facts({ bodyReplayable: true })), true, 'the same GET with a replayable body is retried')
})

test('mayRetry: methods, and neverSent', async (t) => {
  const c = config()
  t.equal(mayRetry(c, roomy, facts({ method: 'GET' })), true, 'GET is configured: retried after reaching the target')
  t.equal(mayRetry(c, roomy, facts({ method: 'PUT' })), true, 'PUT is configured')
  t.equal(mayRetry(c, roomy, facts({ method: 'POST' })), false, 'POST reached the target: not replayed')
  t.equal(mayRetry(c, roomy, facts({ method: 'PATCH' })), false, 'PATCH reached the target: not replayed')
  t.equal(mayRetry(c, roomy, facts({ method: 'POST', neverSent: true })), true, 'POST never sent: retried')
  t.equal(mayRetry(c, roomy, facts({ method: 'PATCH', neverSent: true })), true, 'PATCH never sent: retried')
  t.equal(mayRetry(c, roomy, facts({ method: 'get' })), false, 'methods match exactly (upper case)')
  t.equal(mayRetry(config({ methods: new Set() }), roomy, facts({ method: 'GET' })), false, 'no configured method: GET that reached the target is not retried')
  t.equal(mayRetry(config({ methods: new Set() }), roomy, facts({ method: 'GET', neverSent: true })), true, 'no configured method: a GET never sent is')
})

test('mayRetry: budget floor (budgetMinRetries)', async (t) => {
  // 20% of 1 in flight is 0.2: the floor of 3 rules
  const c = config({ budgetPercent: 20, budgetMinRetries: 3 })
  t.equal(mayRetry(c, { inflight: 1, retriesInFlight: 0 }, facts()), true, '0 of 3')
  t.equal(mayRetry(c, { inflight: 1, retriesInFlight: 2 }, facts()), true, '2 of 3')
  t.equal(mayRetry(c, { inflight: 1, retriesInFlight: 3 }, facts()), false, '3 of 3: boundary refuses')
  t.equal(mayRetry(c, { inflight: 1, retriesInFlight: 4 }, facts()), false, 'over the floor')
  // the floor holds whatever the percent, even 0
  const zero = config({ budgetPercent: 0, budgetMinRetries: 2 })
  t.equal(mayRetry(zero, { inflight: 500, retriesInFlight: 1 }, facts()), true, 'percent 0: floor of 2 still allows 1 in flight')
  t.equal(mayRetry(zero, { inflight: 500, retriesInFlight: 2 }, facts()), false, 'percent 0: floor reached')
  // no floor and nothing in flight: no retry at all
  t.equal(mayRetry(config({ budgetMinRetries: 0 }), { inflight: 0, retriesInFlight: 0 }, facts()), false, 'floor 0, nothing in flight: 0 allowed')
})

test('mayRetry: budget percent of in-flight', async (t) => {
  const c = config({ budgetPercent: 20, budgetMinRetries: 0 })
  // 20% of 100 = 20
  t.equal(mayRetry(c, { inflight: 100, retriesInFlight: 0 }, facts()), true, '0 of 20')
  t.equal(mayRetry(c, { inflight: 100, retriesInFlight: 19 }, facts()), true, '19 of 20')
  t.equal(mayRetry(c, { inflight: 100, retriesInFlight: 20 }, facts()), false, '20 of 20: equal refuses')
  t.equal(mayRetry(c, { inflight: 100, retriesInFlight: 21 }, facts()), false, '21 of 20')
  // 20% of 7 = 1.4: one retry in flight fits, two do not
  t.equal(mayRetry(c, { inflight: 7, retriesInFlight: 1 }, facts()), true, '1 of 1.4')
  t.equal(mayRetry(c, { inflight: 7, retriesInFlight: 2 }, facts()), false, '2 of 1.4')
  // 20% of 4 = 0.8: not even one
  t.equal(mayRetry(c, { inflight: 4, retriesInFlight: 0 }, facts()), true, '0 of 0.8')
  t.equal(mayRetry(c, { inflight: 4, retriesInFlight: 1 }, facts()), false, '1 of 0.8')
  // the percent wins over a lower floor
  const both = config({ budgetPercent: 50, budgetMinRetries: 3 })
  t.equal(mayRetry(both, { inflight: 20, retriesInFlight: 9 }, facts()), true, '50% of 20 = 10 > floor 3: 9 fits')
  t.equal(mayRetry(both, { inflight: 20, retriesInFlight: 10 }, facts()), false, '10 of 10: equal refuses')
  // 100%: every request in flight may be a retry, but not more
  const all = config({ budgetPercent: 100, budgetMinRetries: 0 })
  t.equal(mayRetry(all, { inflight: 5, retriesInFlight: 4 }, facts()), true, '100%: 4 of 5')
  t.equal(mayRetry(all, { inflight: 5, retriesInFlight: 5 }, facts()), false, '100%: 5 of 5')
  // a full budget refuses even a retry that would otherwise be allowed
  t.equal(mayRetry(c, { inflight: 100, retriesInFlight: 20 }, facts({ method: 'POST', neverSent: true })), false, 'full budget, never sent')
})

test('backoff: 0 when backoffBase is 0', async (t) => {
  const c = config({ backoffBase: 0, backoffMax: 1000 })
  const values = new Set<number>()
  for (let retry = 1; retry <= 10; retry++) {
    for (let i = 0; i < 50; i++) values.add(backoff(c, retry))
  }
  t.same([...values], [0], 'every delay is 0, whatever the retry number')
})

test('backoff: exact bounds with a fixed random', async (t) => {
  const random = Math.random
  t.teardown(() => { Math.random = random })
  const c = config({ backoffBase: 100, backoffMax: 1000 })
  Math.random = () => 0
  t.equal(backoff(c, 1), 0, 'random 0 gives 0')
  t.equal(backoff(c, 8), 0, 'random 0 gives 0 at any retry')
  Math.random = () => 0.999999
  t.equal(backoff(c, 1), 99, 'retry 1: just under base')
  t.equal(backoff(c, 2), 199, 'retry 2: just under 2 × base')
  t.equal(backoff(c, 3), 399, 'retry 3: just under 4 × base')
  t.equal(backoff(c, 4), 799, 'retry 4: just under 8 × base')
  t.equal(backoff(c, 5), 999, 'retry 5: 16 × base is capped at max')
  t.equal(backoff(c, 40), 999, 'retry 40: capped at max')
  Math.random = () => 0.5
  t.equal(backoff(c, 3), 200, 'half of 400')
  t.equal(backoff(config({ backoffBase: 25, backoffMax: 25 }), 6), 12, 'max equal to base: half of 25, floored')
})

test('backoff: full jitter within [0, min(max, base × 2^(retry-1))) over many samples', async (t) => {
  const c = config({ backoffBase: 100, backoffMax: 1000 })
  const SAMPLES = 2000
  for (const [retry, cap] of [[1, 100], [2, 200], [3, 400], [4, 800], [5, 1000], [6, 1000], [20, 1000]] as const) {
    let min = Infinity
    let max = -Infinity
    let integers = true
    const distinct = new Set<number>()
    for (let i = 0; i < SAMPLES; i++) {
      const delay = backoff(c, retry)
      if (!Number.isInteger(delay)) integers = false
      if (delay < min) min = delay
      if (delay > max) max = delay
      distinct.add(delay)
    }
    t.ok(integers, `retry ${retry}: whole milliseconds`)
    t.ok(min >= 0, `retry ${retry}: min ${min} >= 0`)
    t.ok(max < cap, `retry ${retry}: max ${max} < ${cap}`)
    // the window is not narrower than it should be: some sample lands in its upper quarter
    // (chance of none in 2,000 uniform samples: 0.75^2000)
    t.ok(max >= cap * 0.75, `retry ${retry}: max ${max} reaches the upper quarter of [0, ${cap})`)
    // and the lower quarter: the jitter is full, from 0
    t.ok(min < cap * 0.25, `retry ${retry}: min ${min} in the lower quarter`)
    t.ok(distinct.size > 1, `retry ${retry}: samples vary (${distinct.size} distinct)`)
    t.ok(distinct.size >= Math.min(cap, 50), `retry ${retry}: many distinct values (${distinct.size})`)
  }
})

test('backoff: the cap applies to large retry numbers, base bounds retry 1', async (t) => {
  const c = config({ backoffBase: 250, backoffMax: 300 })
  let max = -Infinity
  for (let i = 0; i < 2000; i++) max = Math.max(max, backoff(c, 2 + (i % 30)))
  t.ok(max < 300, `retries 2..31 stay below max 300 (saw ${max})`)
  t.ok(max >= 250, `and go beyond base 250 (saw ${max}): the cap is max, not base`)
  // retry 1: base itself bounds it, though max is higher
  let first = -Infinity
  for (let i = 0; i < 2000; i++) first = Math.max(first, backoff(c, 1))
  t.ok(first < 250, `retry 1 stays below base 250 (saw ${first})`)
})
