import { createHash } from 'node:crypto'
import type { SelectRequest } from '../balancers/types'
import type { Target } from './target'

/**
 * Sticky sessions by a cookie the gateway sets (as NGINX's and Traefik's `sticky
 * cookie`): the answer carries a cookie naming the target that gave it, and later
 * requests carrying it go to that target while it may take requests. The value is
 * opaque: a hash of the pool's name and the target's URL, so no address leaks, every
 * gateway instance gives a target the same value, and a forged or stale one matches no
 * target and is ignored (the balancer picks, and the cookie is set anew).
 */
export function stickyId (pool: string, url: string): string {
  return createHash('sha256').update(`${pool}\n${url}`).digest('base64url').slice(0, 22)
}

/** The value of cookie `name` in a Cookie header, if any (the first, as browsers send the most specific first). */
export function cookieValue (header: string | string[] | undefined, name: string): string | undefined {
  if (header === undefined) return undefined
  const text = Array.isArray(header) ? header.join('; ') : header
  let from = 0
  while (from < text.length) {
    const at = text.indexOf(name, from)
    if (at === -1) return undefined
    const before = at === 0 ? 32 : text.charCodeAt(at - 1)
    const eq = at + name.length
    if ((before === 32 || before === 59) && text.charCodeAt(eq) === 61) {
      const end = text.indexOf(';', eq + 1)
      return text.slice(eq + 1, end === -1 ? text.length : end).trim()
    }
    from = at + 1
  }
  return undefined
}

/** A pool's targets by their sticky id, and the one a request's cookie names. */
export class StickyTargets {
  private readonly pool: string
  /** the cookie's name */
  readonly name: string
  private readonly byId = new Map<string, Target>()

  constructor (pool: string, name: string) {
    this.pool = pool
    this.name = name
  }

  add (target: Target): void {
    target.stickyId = stickyId(this.pool, target.url)
    this.byId.set(target.stickyId, target)
  }

  remove (target: Target): void {
    this.byId.delete(target.stickyId)
  }

  /** The target the request's cookie names, if it names one of the pool's. */
  target (request: SelectRequest): Target | undefined {
    const value = cookieValue(request.headers.cookie, this.name)
    return value === undefined ? undefined : this.byId.get(value)
  }
}
