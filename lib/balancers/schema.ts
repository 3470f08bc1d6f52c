import { Type, type Static } from '@sinclair/typebox'
import { typed } from '../typed-schema'
import type { Balancer, BalancerFactory, SelectRequest } from './types'

/** The `balancer` option of a pool, as validated at register; the types below are derived from it. */

const Fn = Type.Function([Type.Any()], Type.Any())

export const HashKeySchema = Type.Union([
  Type.Literal('ip'),
  Type.Literal('url'),
  typed<`header:${string}` | `cookie:${string}` | `query:${string}`>(Type.String({ pattern: '^(header|cookie|query):[^\\s]+$' })),
  typed<(request: SelectRequest) => string | undefined>(Type.Function([Type.Any()], Type.Union([Type.String(), Type.Undefined()])))
], { errorMessage: "must be 'ip', 'url', 'header:NAME', 'cookie:NAME', 'query:NAME' or a function (request) => string" })

export const BALANCER_NAMES = ['round-robin', 'random', 'least-request', 'ewma', 'consistent-hash'] as const

const BalancerName = Type.Union(BALANCER_NAMES.map((name) => Type.Literal(name)), {
  errorMessage: `must be one of ${BALANCER_NAMES.map((name) => `'${name}'`).join(', ')}, an object { type, ...options } or a custom balancer`
})

export const BalancerSchema = Type.Union([
  BalancerName,
  Type.Object({ type: Type.Literal('round-robin') }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('random') }, { additionalProperties: false }),
  Type.Object({
    type: Type.Literal('least-request'),
    choices: Type.Optional(Type.Integer({ minimum: 2, maximum: 8, errorMessage: 'must be an integer from 2 to 8' })),
    slowRatio: Type.Optional(Type.Union([Type.Literal(0), Type.Number({ minimum: 1 })], { errorMessage: 'must be 0 (off) or a number >= 1' }))
  }, { additionalProperties: false }),
  Type.Object({
    type: Type.Literal('ewma'),
    decay: Type.Optional(Type.Number({ exclusiveMinimum: 0, errorMessage: 'must be a positive number of milliseconds' })),
    initialLatency: Type.Optional(Type.Number({ minimum: 0, errorMessage: 'must be a number of milliseconds >= 0' }))
  }, { additionalProperties: false }),
  Type.Object({
    type: Type.Literal('consistent-hash'),
    key: Type.Optional(HashKeySchema),
    tableSize: Type.Optional(Type.Integer({ minimum: 7, maximum: 1_000_003, errorMessage: 'must be a prime from 7 to 1000003' }))
  }, { additionalProperties: false }),
  // a custom balancer: an object implementing the interface, or a factory returning one
  typed<Balancer>(Type.Object({ pick: Fn, update: Fn }, { additionalProperties: true })),
  typed<BalancerFactory>(Fn)
], { errorMessage: 'must be a balancer name, an object { type, ...options }, an object with pick() and update(), or a factory function' })

export type HashKeyOption = Static<typeof HashKeySchema>
export type BalancerOptions = Static<typeof BalancerSchema>
/** The options of one built-in balancer, by its `type`. */
export type BalancerTypeOptions<T extends typeof BALANCER_NAMES[number]> = Extract<BalancerOptions, { type: T }>
