/**
 * What Node accepts in a header (http.validateHeaderName / validateHeaderValue), as the
 * source of regular expressions: the option schemas check names and fixed values with it
 * at register, the header policy checks what functions return at request time.
 */

/** One character of a header name (an RFC 9110 token). */
export const TOKEN_CHAR = "[!#$%&'*+.^_`|~0-9A-Za-z-]"
/** The characters of a header value: tab, visible ASCII and obs-text (a character class's body). */
export const VALUE_CHARS = '\\t\\x20-\\x7e\\x80-\\xff'

/** A whole header name. */
export const TOKEN = new RegExp(`^${TOKEN_CHAR}+$`)
/** Any character a header value may not hold (RegExp.test converts a non-string as Node does). */
export const INVALID_VALUE = new RegExp(`[^${VALUE_CHARS}]`)

/** true when Node would send `value` (one, or each of a list) as a header value. */
export function validHeaderValue (value: unknown): boolean {
  if (Array.isArray(value)) return value.every(validHeaderValue)
  return !INVALID_VALUE.test(value as string)
}

/**
 * Headers as undici's raw form has them (its deprecated handler calls, its diagnostics
 * channels): a flat list of names and values, one pair per value of a list.
 */
export function headerPairs (headers: Record<string, string | string[] | undefined>): Buffer[] {
  const pairs: Buffer[] = []
  for (const name of Object.keys(headers)) {
    const value = headers[name]
    if (value === undefined) continue
    const key = Buffer.from(name, 'latin1')
    if (Array.isArray(value)) {
      for (const item of value) pairs.push(key, Buffer.from(item, 'latin1'))
    } else {
      pairs.push(key, Buffer.from(String(value), 'latin1'))
    }
  }
  return pairs
}
