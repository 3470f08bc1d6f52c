/**
 * Which request paths may be sent upstream, and the path Fastify's router routed by.
 */

const ENCODED_SEPARATOR = /%2f|%5c|%00/i
const DOUBLE_ENCODED = /%25(2e|2f|5c|25|00)/i
const DOT_SEGMENT = /(^|\/)(\.|%2e){1,2}(\/|$)/i

/**
 * True when a raw path is safe to send below an upstream prefix: empty or starting with
 * `/`, no dot segments (plain or percent-encoded), no encoded slash, backslash or NUL
 * (nor those encoded twice), no raw backslash or control character, and valid
 * percent-encoding throughout.
 */
export function isSafePath (path: string): boolean {
  // appended to a prefix or an origin, a path must start a new segment: `x` after
  // `/v1/users` is `/v1/usersx`, and `http://evil/x` after an origin is no URL at all
  if (path !== '' && path.charCodeAt(0) !== 47) return false
  for (let i = 0; i < path.length; i++) {
    const code = path.charCodeAt(i)
    if (code < 0x21 || code === 0x5c || code === 0x7f) return false
  }
  if (path.includes('%') && (ENCODED_SEPARATOR.test(path) || DOUBLE_ENCODED.test(path) || !decodes(path))) return false
  return !DOT_SEGMENT.test(path)
}

/** true when every percent-escape in `text` is valid */
function decodes (text: string): boolean {
  try {
    decodeURIComponent(text)
    return true
  } catch {
    return false
  }
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
