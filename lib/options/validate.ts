import { Kind, type TSchema } from '@sinclair/typebox'
import { Value, ValueErrorType, type ValueError } from '@sinclair/typebox/value'
import { InvalidOptionError } from '../errors'

/**
 * Validation against the option schemas, with one error naming the field that is wrong
 * (`upstreams.users.targets[1].url: must be an http(s) URL...`) and, for an unknown key,
 * the known one nearest to it.
 */

/** Converts a JSON pointer (`/upstreams/users/targets/1/url`) to `upstreams.users.targets[1].url`. */
function fieldPath (base: string, pointer: string): string {
  let out = base
  for (const raw of pointer.split('/').slice(1)) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~')
    out += /^\d+$/.test(part) ? `[${part}]` : (out === '' ? part : `.${part}`)
  }
  return out
}

function kindOf (value: unknown): string {
  if (Array.isArray(value)) return 'array'
  if (value === null) return 'null'
  return typeof value
}

function schemaKind (schema: TSchema): string | undefined {
  if (schema.const !== undefined) return typeof schema.const
  if (schema.type === 'integer') return 'number'
  if (typeof schema.type === 'string') return schema.type
  if ((schema as unknown as Record<symbol, unknown>)[Kind] === 'Function') return 'function'
  if (Array.isArray(schema.anyOf)) {
    // a union whose members are all of one kind (a set of literals) is of that kind
    const kinds = new Set((schema.anyOf as TSchema[]).map(schemaKind))
    if (kinds.size === 1) return [...kinds][0]
  }
  return undefined
}

/**
 * The most precise message for one error. A union error is resolved into the one variant
 * of the value's own kind when there is exactly one (a string target is checked as a URL,
 * an object target as `{ url, weight, backup }`), so the message points at the real field.
 */
function describe (error: ValueError, base: string): string {
  if (error.type === ValueErrorType.Union) {
    const variants = (error.schema.anyOf as TSchema[]).filter((s) => schemaKind(s) === kindOf(error.value))
    const objectVariants = kindOf(error.value) === 'object' && (error.value as { type?: unknown }).type !== undefined
      ? variants.filter((s) => s.properties?.type?.const === (error.value as { type?: unknown }).type)
      : variants
    const only = objectVariants.length === 1 ? objectVariants[0] : (variants.length === 1 ? variants[0] : undefined)
    if (only !== undefined && schemaKind(only) !== 'string' && schemaKind(only) !== 'function') {
      const first = Value.Errors(only, error.value).First()
      if (first !== undefined) return describe(first, fieldPath(base, error.path))
    } else if (only !== undefined && schemaKind(only) === 'string' && only.const === undefined) {
      const first = Value.Errors(only, error.value).First()
      if (first !== undefined) return `${fieldPath(base, error.path)}: ${first.schema.errorMessage ?? error.schema.errorMessage ?? first.message}`
    }
  }
  const path = fieldPath(base, error.path)
  if (error.type === ValueErrorType.ObjectAdditionalProperties) {
    const known = Object.keys((error.schema.properties ?? {}) as Record<string, unknown>)
    const key = (error.path.split('/').pop() ?? '').replace(/~1/g, '/').replace(/~0/g, '~')
    const guess = closest(key, known)
    return `${path}: unknown option` + (guess === undefined ? '' : `, did you mean \`${guess}\`?`)
  }
  if (error.type === ValueErrorType.ObjectRequiredProperty) return `${path}: is required`
  const message = (error.schema.errorMessage as string | undefined) ?? error.message
  return `${path}: ${message}`
}

/** The known key nearest to a misspelt one (at most two edits away), if any. */
export function closest (key: string, known: readonly string[]): string | undefined {
  let best: string | undefined
  let bestDistance = 3
  for (const candidate of known) {
    const distance = editDistance(key.toLowerCase(), candidate.toLowerCase())
    if (distance < bestDistance) {
      best = candidate
      bestDistance = distance
    }
  }
  return best
}

/** Levenshtein distance, one row at a time. */
function editDistance (a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2) return Infinity
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = row
  }
  return previous[b.length]
}

/** Throws FST_UPSTREAM_INVALID_OPTION naming the first invalid field. */
export function check (schema: TSchema, value: unknown, base: string): void {
  const first = Value.Errors(schema, value).First()
  if (first !== undefined) throw new InvalidOptionError(describe(first, base))
}
