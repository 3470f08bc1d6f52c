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
