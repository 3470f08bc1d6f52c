import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions as FastifyRouteOptions } from 'fastify'
import { BadPathError, BodyTooLargeError, InvalidOptionError } from './errors'
import type { ForwardOptions, Forwarder } from './forward'
import { kTarget } from './forward'
import { DEFAULTS, type RouteOptions } from './options'
import { isSafePath, isValidQuery, originForm } from './paths'
import { BodyLimit } from './security'
import type { Target } from './target'

/**
 * A `routes` entry mounted like an `@fastify/http-proxy` prefix: `prefix` (with `:params`)
 * maps to `rewritePrefix` (the same params substituted) on a pool, the query string is
 * kept, bodies of any type pass through as streams, `Location` headers come back under
 * the prefix, and paths that would climb out of `rewritePrefix` are refused with 400.
 */

/** A path template split into literal text and `:param` references. */
type Template = Array<string | { param: number }>

interface Mount {
  /** number of path segments the prefix spans */
  depth: number
  upstream: Template
  client: Template
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
    const target = (request as unknown as { [kTarget]: Target | null })[kTarget]
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

export function mountRoute (fastify: FastifyInstance, route: RouteOptions, forwarder: Forwarder, index: number): void {
  const {
    prefix: rawPrefix, upstream: pool, rewritePrefix: rawRewrite, methods, replyOptions, ...routeOptions
  } = route
  const prefix = stripTrailingSlash(rawPrefix)
  const segments = prefix === '' ? [] : prefix.split('/').slice(1)
  const params = new Map<string, number>()
  segments.forEach((segment, i) => { if (segment.startsWith(':')) params.set(segment.slice(1), i) })
  const mount: Mount = {
    depth: segments.length,
    upstream: compile(stripTrailingSlash(rawRewrite ?? ''), params, `routes[${index}].rewritePrefix`),
    client: compile(prefix, params, `routes[${index}].prefix`)
  }
  const hasParams = params.size > 0
  const userOptions = (replyOptions ?? {}) as ForwardOptions
  const userRewriteHeaders = userOptions.rewriteHeaders

  const rewriteHeaders = (headers: Record<string, unknown>, request: FastifyRequest): Record<string, unknown> => {
    const location = headers.location
    if (typeof location === 'string') {
      const raw = originForm(request.raw.url as string) ?? '/'
      const split = hasParams ? raw.split('?')[0].split('/') : undefined
      headers.location = rewriteLocation(location, request, mount, split)
    }
    return userRewriteHeaders !== undefined ? (userRewriteHeaders as (h: unknown, r: unknown) => Record<string, unknown>)(headers, request) : headers
  }
  const prepared = forwarder.prepare({ ...userOptions, rewriteHeaders } as ForwardOptions)

  function handler (request: FastifyRequest, reply: FastifyReply): FastifyReply {
    // the path Fastify routed by: an absolute-form target keeps its authority in the raw URL
    const raw = originForm(request.raw.url as string)
    if (raw === undefined) return reply.send(new BadPathError())
    const query = raw.indexOf('?')
    const path = query === -1 ? raw : raw.slice(0, query)
    const rest = path.slice(restStart(path, mount.depth))
    if (!isSafePath(rest) || (query !== -1 && !isValidQuery(raw.slice(query + 1)))) return reply.send(new BadPathError())
    const base = render(mount.upstream, hasParams ? path.split('/') : undefined)
    const upstreamPath = (base + rest) || '/'
    // without params the base is configuration and the rest was checked above; a param is
    // a segment of the request, so forward() checks the whole path then
    return forwarder.forward(reply, pool, query === -1 ? upstreamPath : upstreamPath + raw.slice(query), prepared, !hasParams)
  }

  fastify.register(async function upstreamMount (child) {
    // stream bodies of any type straight through, unless the route validates the body
    const schema = routeOptions.schema as { body?: unknown } | undefined
    if (schema?.body === undefined) {
      child.removeAllContentTypeParsers()
      const limit = routeOptions.bodyLimit
      child.addContentTypeParser('*', limit === undefined
        ? function passThrough (_request, payload, done) { done(null, payload) }
        : function passThroughLimited (request, payload, done) {
          // refuse at once what announces itself too large; count what streams in chunks
          if (Number(request.headers['content-length'] ?? 0) > limit) done(new BodyTooLargeError(limit), undefined)
          else done(null, payload.pipe(new BodyLimit(limit)))
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
}
