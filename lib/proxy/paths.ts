/**
 * Which request paths may be sent upstream, and the path Fastify's router routed by.
 */

// An encoded `/`, `\` or NUL: a target that decodes before it splits sees another path.
const ENCODED_SEPARATOR = /%(2f|5c|00)/i
// A `.` or `..` segment, the dots plain or encoded, ended by anything a target may end a
// segment at: `/`, a query or fragment, or a `;parameter` (`..;/` is `..` to Tomcat).
const DOT_SEGMENT = /(^|\/)(\.|%2e){1,2}([/?#;]|$)/i
// What no decoded form of a path may hold.
const DECODED_FORBIDDEN = /[\\\0]/
const ESCAPE = /%[0-9a-f]{2}/i
const ESCAPES = /(?:%[0-9a-f]{2})+/gi
const NON_ASCII = /[^\0-\x7f]/
/** Rounds of percent-decoding a path is checked through; one that still decodes is refused. */
const MAX_DECODES = 4

/**
 * True when a raw path is safe to send below an upstream prefix, whatever the target does
 * with it. The rule:
 * - empty or starting with `/`; printable ASCII only (no control character, space,
 *   backslash or raw byte above 0x7E); valid percent-encoding (of UTF-8);
 * - in the path as sent, in each form reached by decoding it again and again (until it
 *   decodes no further, at most four times; a path still encoded deeper is refused), and
 *   in the NFKC form of each of those (fullwidth `．` is `.` after NFKC): no dot segment
 *   (`.` or `..`, plain or encoded, before `/`, `?`, `#`, `;` or the end), no encoded `/`,
 *   `\` or NUL, no backslash or NUL, and no `/` that NFKC made.
 * So a target that decodes twice, or normalises Unicode, cannot be walked out of the
 * prefix (`%252e`, `%25%32%65`, `%ef%bc%8e`), while `%25` for a literal `%` still passes.
 */
export function isSafePath (path: string): boolean {
  // appended to a prefix or an origin, a path must start a new segment: `x` after
  // `/v1/users` is `/v1/usersx`, and `http://evil/x` after an origin is no URL at all
  if (path !== '' && path.charCodeAt(0) !== 47) return false
  let escaped = false
  for (let i = 0; i < path.length; i++) {
    const code = path.charCodeAt(i)
    if (code < 0x21 || code === 0x5c || code > 0x7e) return false
    if (code === 37) escaped = true
  }
  if (!escaped) return !DOT_SEGMENT.test(path)
  return decodes(path) && layersSafe(path)
}

/** Checks `layer` and every form reached by decoding it further (see isSafePath). */
function layersSafe (layer: string): boolean {
  for (let round = 0; ; round++) {
    if (ENCODED_SEPARATOR.test(layer) || DOT_SEGMENT.test(layer) || DECODED_FORBIDDEN.test(layer)) return false
    if (NON_ASCII.test(layer)) {
      const normal = layer.normalize('NFKC')
      // NFKC is idempotent: the normal form is checked once, without a second normalisation
      if (normal !== layer && (count(normal, 47) !== count(layer, 47) || !layersSafe(normal))) return false
    }
    if (!ESCAPE.test(layer)) return true
    if (round === MAX_DECODES) return false
    layer = decodeLenient(layer)
  }
}

/** Percent-decodes the valid escapes of `text` as UTF-8 (invalid bytes become U+FFFD), as a lenient target would. */
function decodeLenient (text: string): string {
  return text.replace(ESCAPES, (escapes) => Buffer.from(escapes.replace(/%/g, ''), 'hex').toString('utf8'))
}

function count (text: string, code: number): number {
  let n = 0
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === code) n++
  return n
}

/**
 * `text` percent-decoded as the router decodes params (decodeURIComponent); undefined when
 * an escape in it is invalid (or not UTF-8).
 */
export function decoded (text: string): string | undefined {
  if (!text.includes('%')) return text
  try {
    return decodeURIComponent(text)
  } catch {
    return undefined
  }
}

/** true when every percent-escape in `text` is valid */
function decodes (text: string): boolean {
  return decoded(text) !== undefined
}

/**
 * True when a query string (without its `?`) has valid percent-encoding: reply-from
 * decodes the whole URL it is given, and a malformed escape there would be a 500.
 */
export function isValidQuery (query: string): boolean {
  return !query.includes('%') || decodes(query)
}

/**
 * The origin-form (`/path?query`) of a request target, the path Fastify routed it by.
 * Node hands an absolute-form target (`GET http://evil/users/1 HTTP/1.1`) through as the
 * URL and find-my-way routes it by its path; what is sent upstream must derive from that
 * same path, never from one with the authority in it (`/v1/users//evil/users/1`, or a
 * `:param` of the prefix read from the host name). undefined when there is no such form.
 */
export function originForm (url: string): string | undefined {
  if (url.charCodeAt(0) === 47) return url
  // as find-my-way's getPathFromAbsoluteUrl: the path starts at the first `/` (or `?`)
  // after the authority
  const schemeEnd = url.indexOf('://')
  if (schemeEnd === -1) return undefined
  const scheme = url.slice(0, schemeEnd).toLowerCase()
  if (scheme !== 'http' && scheme !== 'https') return undefined
  const start = schemeEnd + 3
  const slash = url.indexOf('/', start)
  const query = url.indexOf('?', start)
  if (query !== -1 && (slash === -1 || query < slash)) return '/' + url.slice(query)
  return slash === -1 ? '/' : url.slice(slash)
}

/** The options of Fastify's router that change which path a route sees. */
export interface RouterPathOptions {
  /** `useSemicolonDelimiter`: a `;` starts the query string */
  semicolonDelimiter: boolean
  /** `ignoreDuplicateSlashes`: runs of `/` are one */
  mergeSlashes: boolean
  /** `ignoreTrailingSlash`: a final `/` is dropped */
  trimTrailingSlash: boolean
}

/**
 * Where the path of an origin-form target ends as Fastify's router cuts it: at the first
 * `?` (or `;` with `useSemicolonDelimiter`) after the first character; the target's length
 * when it has no query. -1 when it holds a `#`: a fragment has no place in a request
 * (RFC 9112 §3.2), and the router would end the path there while the rest of the target
 * still read as path (`/api#/admin` routed as `/api`, sent on as `/api/admin`).
 */
export function pathEnd (target: string, semicolon: boolean): number {
  if (target.includes('#')) return -1
  const query = target.indexOf('?', 1)
  if (semicolon) {
    const semi = target.indexOf(';', 1)
    if (semi !== -1 && (query === -1 || semi < query)) return semi
  }
  return query === -1 ? target.length : query
}

const SLASHES = /\/{2,}/g

/**
 * The path Fastify's router routed by, as the client encoded it: the target up to `end`
 * (see pathEnd), with duplicate slashes merged and a final one dropped when the router
 * does so. The router also decodes, but never `%2F`, so this path has the segments it saw.
 */
export function routedPath (target: string, end: number, options: RouterPathOptions): string {
  let path = end === target.length ? target : target.slice(0, end)
  if (options.mergeSlashes && path.includes('//')) path = path.replace(SLASHES, '/')
  if (options.trimTrailingSlash && path.length > 1 && path.charCodeAt(path.length - 1) === 47) path = path.slice(0, -1)
  return path
}

/** The query string of `target` for the upstream (`?` and what follows `end`), or ''. */
export function upstreamQuery (target: string, end: number): string {
  if (end === target.length) return ''
  // a `;` the router took as the start of the query is sent as the `?` it stood for
  return target.charCodeAt(end) === 63 ? target.slice(end) : '?' + target.slice(end + 1)
}
