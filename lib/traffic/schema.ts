import { Type, type Static } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import { HashKeySchema } from '../balancers/schema'
import { TOKEN_CHAR, VALUE_CHARS } from '../header-syntax'
import { typed } from '../typed-schema'

/**
 * The traffic-policy options: a split of pools (canary, blue/green, header routing) and
 * mirroring. The types below are derived from these schemas; the same schemas validate at
 * register and when weights change at run time.
 */

/** The tests a header, cookie or query rule may make (exactly one). */
export const MATCH_TESTS = ['equals', 'oneOf', 'regex', 'present'] as const

const Tests = {
  equals: Type.Optional(Type.String({ errorMessage: 'must be a string' })),
  oneOf: Type.Optional(Type.Array(Type.String(), { minItems: 1, errorMessage: 'must be a non-empty array of strings' })),
  // a RegExp or its source; compiled and checked when the split is built
  regex: Type.Optional(typed<string | RegExp>(Type.Any())),
  present: Type.Optional(Type.Boolean({ errorMessage: 'must be a boolean' }))
}

export const SPLIT_METHODS = ['DELETE', 'GET', 'HEAD', 'PATCH', 'POST', 'PUT', 'OPTIONS'] as const
const Method = Type.Union(SPLIT_METHODS.map((m) => Type.Literal(m)), { errorMessage: `must be one of ${SPLIT_METHODS.join(', ')}` })

/** The variants of a match rule, by the key that names what it reads. */
export const MatchVariants = {
  header: Type.Object({ header: Type.String({ pattern: `^${TOKEN_CHAR}+$`, errorMessage: 'must be a header name' }), ...Tests }, { additionalProperties: false }),
  cookie: Type.Object({ cookie: Type.String({ minLength: 1, errorMessage: 'must be a cookie name' }), ...Tests }, { additionalProperties: false }),
  query: Type.Object({ query: Type.String({ minLength: 1, errorMessage: 'must be a query parameter name' }), ...Tests }, { additionalProperties: false }),
  method: Type.Object({ method: Type.Union([Method, Type.Array(Method, { minItems: 1 })], { errorMessage: 'must be an HTTP method or a non-empty array of them' }) }, { additionalProperties: false })
}

export const MatchSchema = Type.Union([
  MatchVariants.header,
  MatchVariants.cookie,
  MatchVariants.query,
  MatchVariants.method,
  typed<(request: FastifyRequest) => boolean>(Type.Function([Type.Any()], Type.Any()))
], { errorMessage: 'must be { header | cookie | query: NAME, and one of equals, oneOf, regex, present }, { method } or a function (request) => boolean' })

export type MatchRule = Static<typeof MatchSchema>

const HeaderName = Type.String({ pattern: `^${TOKEN_CHAR}+$`, errorMessage: 'is not a valid header name' })

/** One branch of a split: a pool, chosen by its rules (`match`) or by its weight. */
export const BranchSchema = Type.Object({
  pool: Type.String({ minLength: 1, errorMessage: 'must be the name of a pool' }),
  weight: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000, errorMessage: 'must be an integer from 0 to 1000' })),
  // checked rule by rule when the split is built, against the variant each rule's key
  // names (so that an error points at the field, not at the union of every variant)
  match: Type.Optional(typed<MatchRule | MatchRule[]>(Type.Any())),
  rewritePrefix: Type.Optional(Type.String({ pattern: '^(/.*)?$', errorMessage: "must be '' or a path starting with '/'" })),
  headers: Type.Optional(Type.Object({
    set: Type.Optional(Type.Record(Type.String({ pattern: `^${TOKEN_CHAR}+$` }), Type.String({ pattern: `^[${VALUE_CHARS}]*$`, errorMessage: 'must be a header value: no CR, LF, NUL or other control character' }), {
      additionalProperties: Type.Never({ errorMessage: 'is not a valid header name' }),
      errorMessage: 'must be an object of header names to strings'
    })),
    remove: Type.Optional(Type.Array(HeaderName, { errorMessage: 'must be an array of header names' }))
  }, { additionalProperties: false }))
}, { additionalProperties: false })

/** A split of traffic between pools. */
export const SplitSchema = Type.Object({
  branches: Type.Array(BranchSchema, { minItems: 1, errorMessage: 'must be a non-empty array of branches { pool, weight, match }' }),
  /** keeps each client on one branch while the weights stay (NGINX split_clients hashing) */
  key: Type.Optional(HashKeySchema),
  /** a branch whose pool has no available target sends to the others (default true); false: 503 */
  fallback: Type.Optional(Type.Boolean({ errorMessage: 'must be a boolean' }))
}, { additionalProperties: false })

/** What a mount's `upstream` names: a pool or split by name, or a split of its own. */
export const MountUpstreamSchema = Type.Union([
  Type.String({ minLength: 1 }),
  Type.Array(BranchSchema, { minItems: 1 }),
  SplitSchema
], { errorMessage: 'must be the name of a pool or split, an array of branches { pool, weight }, or a split { branches, key, fallback }' })

/** A copy of sampled requests to another pool, whose answers are dropped. */
export const MirrorSchema = Type.Object({
  pool: Type.String({ minLength: 1, errorMessage: 'must be the name of a pool' }),
  percent: Type.Optional(Type.Number({ minimum: 0, maximum: 100, errorMessage: 'must be a percentage from 0 to 100' })),
  /** the largest request body copied (bytes); a request with a larger one is not mirrored */
  body: Type.Optional(Type.Integer({ minimum: 0, maximum: 16_777_216, errorMessage: 'must be an integer from 0 to 16777216 (bytes)' })),
  maxConcurrent: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000, errorMessage: 'must be an integer from 1 to 100000' })),
  timeout: Type.Optional(Type.Integer({ minimum: 1, maximum: 2_147_483_647, errorMessage: 'must be a positive integer (milliseconds)' })),
  header: Type.Optional(Type.String({ pattern: `^${TOKEN_CHAR}+$`, errorMessage: 'must be a header name' }))
}, { additionalProperties: false })

export type SplitBranchOptions = Static<typeof BranchSchema>
export type SplitOptions = Static<typeof SplitSchema>
export type MirrorOptions = Static<typeof MirrorSchema>

/** A mirror, normalised (see MirrorSchema). */
export interface MirrorConfig {
  pool: string
  /** share of requests copied, 0-1 */
  fraction: number
  /** the largest request body copied, bytes */
  body: number
  maxConcurrent: number
  timeout: number
  /** the header that marks a copy, lower-case */
  header: string
}
