import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions as FastifyRouteOptions } from 'fastify'
import { BadPathError, BodyTooLargeError, InvalidOptionError } from '../errors'
import { DEFAULTS } from '../options/config'
import { normalizeMirror, splitNameOf } from '../options/normalize'
import type { Branch } from '../traffic/split'
import type { RouteOptions } from '../options/types'
import type { ForwardOptions } from './forward-options'
import type { Forwarder } from './forwarder'
import { kForwarding, type ForwardedRequest } from './forwarding'
import { decoded, isSafePath, isValidQuery, originForm, pathEnd, routedPath, upstreamQuery, type RouterPathOptions } from './paths'
import { BodyGuard } from './request-body'
import { kUpgrade, tunnel, type UpgradeRequest } from './websocket'

/**
 * A `routes` entry mounted like an `@fastify/http-proxy` prefix: `prefix` (with `:params`)
 * maps to `rewritePrefix` (the same params substituted) on a pool, the query string is
 * kept, bodies of any type pass through as streams, `Location` headers come back under
 * the prefix, and paths that would climb out of `rewritePrefix` are refused with 400.
 *
 * The path sent upstream is the one Fastify's router matched, read from the raw target
 * under the same router options (so hooks and target see the same path), and the
 * params it fills in are checked against the router's own: a request where the two
 * could differ is refused rather than sent.
 */

/** A path template split into literal text and `:param` references. */
type Template = Array<string | { param: number }>

interface Mount {
  /** number of path segments the prefix spans */
  depth: number
  upstream: Template
  client: Template
  /** the prefix's params: name and segment index */
  params: Array<[string, number]>
}

/** How Fastify's router reads paths in `fastify` (its `routerOptions`, or the older top-level options). */
export function routerPathOptions (fastify: FastifyInstance): RouterPathOptions {
  const config = fastify.initialConfig as Record<string, unknown> & { routerOptions?: Record<string, unknown> }
  const option = (name: string): boolean => (config.routerOptions?.[name] ?? config[name]) === true
  return {
    semicolonDelimiter: option('useSemicolonDelimiter'),
    mergeSlashes: option('ignoreDuplicateSlashes'),
    trimTrailingSlash: option('ignoreTrailingSlash')
  }
}

/**
 * true when the router's params are what the path's own segments say: the prefix's
 * params, and the rest (the `*` of `prefix/*`, none for `prefix` itself).
 */
function agreesWithRouter (params: Record<string, string | undefined>, mount: Mount, segments: string[] | undefined, rest: string): boolean {
  if (segments !== undefined) {
    for (const [name, index] of mount.params) {
      if (decoded(segments[index + 1]) !== params[name]) return false
    }
  }
  const wildcard = params['*']
  // `prefix` itself, matched with or without a final `/` (a scope's `/api/`, a root mount's `/`)
  if (wildcard === undefined) return rest === '' || rest === '/'
  if (rest.charCodeAt(0) !== 47) return false
  // most paths have nothing encoded: compare in place
  if (!rest.includes('%')) return rest.length === wildcard.length + 1 && rest.endsWith(wildcard)
  return decoded(rest.slice(1)) === wildcard
}

function stripTrailingSlash (path: string): string {
  return path.replace(/\/+$/, '')
}

function compile (path: string, params: Map<string, number>, field: string): Template {
  const template: Template = []
  for (const part of path.split(/(:[A-Za-z_][A-Za-z0-9_]*)/)) {
    if (part === '') continue
    if (part.startsWith(':')) {
      const index = params.get(part.slice(1))
      if (index === undefined) throw new InvalidOptionError(`${field}: ${part} is not a parameter of the prefix`)
      template.push({ param: index })
    } else {
      template.push(part)
    }
  }
  return template
}

function render (template: Template, segments: string[] | undefined): string {
  let out = ''
  for (const part of template) out += typeof part === 'string' ? part : (segments as string[])[part.param + 1]
  return out
}

/** Index in `path` where the part after the first `depth` segments starts. */
function restStart (path: string, depth: number): number {
  let at = 0
  for (let i = 0; i < depth; i++) {
    const next = path.indexOf('/', at + 1)
    if (next === -1) return path.length
    at = next
  }
  return at
}

function rewriteLocation (location: string, request: FastifyRequest, mount: Mount, segments: string[] | undefined): string {
  let path = location
  if (!location.startsWith('/')) {
    const target = (request as ForwardedRequest)[kForwarding]?.target ?? null
    if (target === null || !location.startsWith(target.origin)) return location
    path = location.slice(target.origin.length)
    if (!path.startsWith('/')) return location
  }
  const upstream = render(mount.upstream, segments)
  if (!path.startsWith(upstream)) return location
  const after = path.charCodeAt(upstream.length)
  // only at a segment boundary: /v1/users must not match /v1/usersX
  if (upstream !== '' && !Number.isNaN(after) && after !== 47 && after !== 63) return location
  const rest = path.slice(upstream.length)
  return (render(mount.client, segments) + rest) || '/'
}

/** Mounts `route`; returns the full path prefix it serves when it also takes WebSocket upgrades. */
export function mountRoute (fastify: FastifyInstance, route: RouteOptions, forwarder: Forwarder, index: number, router: RouterPathOptions): string | undefined {
  const {
    prefix: rawPrefix, upstream, rewritePrefix: rawRewrite, methods, replyOptions, strictPaths, bodyTimeout, websocket, mirror, ...routeOptions
  } = route
  const name = splitNameOf(route)
  const prefix = stripTrailingSlash(rawPrefix)
  // the path a request has is the whole route path: the prefix of the scope the plugin is
  // registered in (with its own :params, if any), then the mount's prefix
  const full = stripTrailingSlash(fastify.prefix) + prefix
  const segments = full === '' ? [] : full.split('/').slice(1)
  const params = new Map<string, number>()
  segments.forEach((segment, i) => { if (segment.startsWith(':')) params.set(segment.slice(1), i) })
  const mount: Mount = {
    depth: segments.length,
    upstream: compile(stripTrailingSlash(rawRewrite ?? ''), params, `routes[${index}].rewritePrefix`),
    client: compile(full, params, `routes[${index}].prefix`),
    params: [...params]
  }
  // a split's branches may each send to a path of their own
  const split = forwarder.split(name)
  const branchPaths = split?.branches.map((branch, i) => branch.rewritePrefix === undefined
    ? mount.upstream
    : compile(branch.rewritePrefix, params, `${typeof upstream === 'string' ? `splits.${name}` : `routes[${index}].upstream`}.branches[${i}].rewritePrefix`))
  const strict = strictPaths === true
  const hasParams = params.size > 0
  const rewriteLocationOf = (location: string, request: FastifyRequest): string => {
    // the handler has checked the target: it has an origin form and no fragment
    const target = originForm(request.raw.url as string) as string
    const split = hasParams ? routedPath(target, pathEnd(target, router.semicolonDelimiter), router).split('/') : undefined
    return rewriteLocation(location, request, mount, split)
  }
  const prepared = forwarder.prepare(replyOptions as ForwardOptions | undefined, rewriteLocationOf, `routes[${index}].replyOptions`, normalizeMirror(mirror))

  function handler (request: FastifyRequest, reply: FastifyReply): FastifyReply {
    // the target Fastify routed by: an absolute-form target keeps its authority in the raw URL
    const target = originForm(request.raw.url as string)
    if (target === undefined) return reply.send(new BadPathError())
    const end = pathEnd(target, router.semicolonDelimiter)
    if (end === -1) return reply.send(new BadPathError())
    const path = routedPath(target, end, router)
    const rest = path.slice(restStart(path, mount.depth))
    const segments = hasParams ? path.split('/') : undefined
    if (!isSafePath(rest) || (end !== target.length && !isValidQuery(target.slice(end + 1))) ||
      (strict && (path.includes('//') || path.includes(';'))) ||
      !agreesWithRouter(request.params as Record<string, string | undefined>, mount, segments, rest)) {
      return reply.send(new BadPathError())
    }
    if (websocket === true && (request.raw as UpgradeRequest)[kUpgrade] !== undefined) {
      const routed = forwarder.upgradeRoute(request, name)
      if (routed instanceof Error) return reply.send(routed)
      const upstreamPath = render(routed.branch === null || branchPaths === undefined ? mount.upstream : branchPaths[routed.branch.index], segments) + rest
      if (upstreamPath.charCodeAt(1) === 47 || (hasParams && !isSafePath(upstreamPath))) return reply.send(new BadPathError())
      tunnel(reply, routed.pool, end === target.length ? upstreamPath : upstreamPath + '?' + target.slice(end + 1))
      return reply
    }
    const query = end === target.length ? '' : upstreamQuery(target, end)
    if (branchPaths === undefined) {
      // empty for the mount's own root: the target's URL path (or `/`) then stands alone, as
      // `rewritePrefix` would (`/api` -> `/base`, not `/base/`)
      const upstreamPath = render(mount.upstream, segments) + rest
      // `//host/x` is a network-path reference: a target may read `host` as an authority
      if (upstreamPath.charCodeAt(1) === 47) return reply.send(new BadPathError())
      // without params the base is configuration and the rest was checked above; a param is
      // a segment of the request, so forward() checks the whole path then
      return forwarder.forward(reply, name, upstreamPath + query, prepared, !hasParams)
    }
    const forwarding = forwarder.route(reply, name)
    if (forwarding === undefined) return reply
    const upstreamPath = render(branchPaths[(forwarding.branch as Branch).index], segments) + rest
    if (upstreamPath.charCodeAt(1) === 47) return reply.send(new BadPathError())
    return forwarder.start(reply, forwarding, upstreamPath + query, prepared, !hasParams)
  }

  fastify.register(async function upstreamMount (child) {
    // stream bodies of any type straight through, unless the route validates the body
    const schema = routeOptions.schema as { body?: unknown } | undefined
    if (schema?.body === undefined) {
      child.removeAllContentTypeParsers()
      const limit = routeOptions.bodyLimit
      child.addContentTypeParser('*', limit === undefined && bodyTimeout === undefined
        ? function passThrough (_request, payload, done) { done(null, payload) }
        : function passThroughGuarded (request, payload, done) {
          // refuse at once what announces itself too large; count what streams in chunks
          if (limit !== undefined && Number(request.headers['content-length'] ?? 0) > limit) done(new BodyTooLargeError(limit), undefined)
          else done(null, new BodyGuard(payload, limit, bodyTimeout))
        })
    }
    const base = {
      ...(routeOptions as Partial<FastifyRouteOptions>),
      method: [...(methods ?? DEFAULTS.methods)],
      handler
    }
    child.route({ ...base, url: prefix === '' ? '/' : prefix })
    child.route({ ...base, url: `${prefix}/*` })
  })
  return websocket === true ? (full === '' ? '/' : full) : undefined
}
