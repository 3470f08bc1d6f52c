import { InvalidOptionError } from '../errors'
import { cookieValue } from '../upstream/sticky'
import type { SelectRequest } from '../balancers/types'
import { check } from '../options/validate'
import { MATCH_TESTS, MatchVariants, type MatchRule } from './schema'

/** The parts of a request a match rule reads; a Fastify request satisfies it. */
export interface MatchRequest extends SelectRequest {
  readonly method: string
}

/** A compiled match rule: true when the request matches. */
export type Matcher = (request: MatchRequest) => boolean

type Test = (value: string | undefined) => boolean

function firstValue (value: unknown): string | undefined {
  if (typeof value === 'string') return value
  if (Array.isArray(value) && typeof value[0] === 'string') return value[0]
  return undefined
}

/** The one test a header, cookie or query rule makes, compiled. */
function compileTest (rule: Record<string, unknown>, path: string): Test {
  const tests = MATCH_TESTS.filter((name) => rule[name] !== undefined)
  if (tests.length !== 1) throw new InvalidOptionError(`${path}: must have exactly one of ${MATCH_TESTS.join(', ')}`)
  const [name] = tests
  if (name === 'equals') {
    const expected = rule.equals as string
    return (value) => value === expected
  }
  if (name === 'oneOf') {
    const set = new Set(rule.oneOf as string[])
    return (value) => value !== undefined && set.has(value)
  }
  if (name === 'present') {
    const present = rule.present as boolean
    return (value) => (value !== undefined) === present
  }
  const source = rule.regex
  let regex: RegExp
  if (source instanceof RegExp) {
    // a global or sticky RegExp keeps state between tests: a copy without those flags
    regex = new RegExp(source.source, source.flags.replace(/[gy]/g, ''))
  } else if (typeof source === 'string') {
    try {
      regex = new RegExp(source)
    } catch (error) {
      throw new InvalidOptionError(`${path}.regex: ${(error as Error).message}`)
    }
  } else {
    throw new InvalidOptionError(`${path}.regex: must be a RegExp or a string`)
  }
  return (value) => value !== undefined && regex.test(value)
}

/** Compiles one rule, validated against the variant its subject key names (so errors point at the field). */
export function compileMatch (rule: MatchRule, path: string): Matcher {
  if (typeof rule === 'function') return (request) => rule(request as never) === true
  if (rule === null || typeof rule !== 'object' || Array.isArray(rule)) {
    throw new InvalidOptionError(`${path}: must be a match rule object or a function (request) => boolean`)
  }
  const subject = (['header', 'cookie', 'query', 'method'] as const).find((key) => key in rule)
  if (subject === undefined) throw new InvalidOptionError(`${path}: must name a header, cookie, query or method`)
  check(MatchVariants[subject], rule, path)
  const fields = rule as Record<string, unknown>
  if (subject === 'method') {
    const methods = new Set(Array.isArray(fields.method) ? fields.method as string[] : [fields.method as string])
    return (request) => methods.has(request.method)
  }
  const test = compileTest(fields, path)
  if (subject === 'header') {
    const name = (fields.header as string).toLowerCase()
    return (request) => test(firstValue(request.headers[name]))
  }
  if (subject === 'cookie') {
    const name = fields.cookie as string
    return (request) => test(cookieValue(request.headers.cookie, name))
  }
  const name = fields.query as string
  return (request) => {
    const query = request.query as Record<string, unknown> | null | undefined
    return test(query === null || query === undefined ? undefined : firstValue(query[name]))
  }
}

/** Compiles a branch's `match` (one rule or all of a list). */
export function compileMatches (match: MatchRule | MatchRule[], path: string): Matcher {
  if (!Array.isArray(match)) return compileMatch(match, path)
  if (match.length === 0) throw new InvalidOptionError(`${path}: must be a match rule or a non-empty array of them`)
  const matchers = match.map((rule, i) => compileMatch(rule, `${path}[${i}]`))
  if (matchers.length === 1) return matchers[0]
  return (request) => {
    for (const matcher of matchers) if (!matcher(request)) return false
    return true
  }
}
