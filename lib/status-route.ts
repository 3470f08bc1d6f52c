import type { FastifyInstance } from 'fastify'
import { UpstreamMetrics, type MetricsOptions } from './metrics'
import type { UpstreamRegistry } from './registry'
import { StatusSchema, statusPage } from './status'

export interface StatusRouteOptions {
  /** where the status is served; metrics at `${url}/metrics` */
  url: string
  /** Fastify hooks and options of the two routes, e.g. `onRequest` to authenticate */
  [routeOption: string]: unknown
}

/**
 * Mounts the status route: JSON for programs (validated by its response schema), a
 * self-refreshing HTML page for a browser (`Accept: text/html`), and Prometheus text at
 * `/metrics` below it. Both routes take the same Fastify hooks, so one `onRequest` guards both.
 */
export function mountStatus (fastify: FastifyInstance, pools: UpstreamRegistry, route: StatusRouteOptions, metricsOptions: MetricsOptions | false): void {
  const { url, ...routeOptions } = route
  const base = url.replace(/\/+$/, '') || ''
  const page = statusPage()
  const metrics = metricsOptions === false ? undefined : new UpstreamMetrics(pools, metricsOptions)
  if (metrics !== undefined) fastify.addHook('onClose', async () => { metrics.close() })

  fastify.route({
    ...routeOptions,
    method: 'GET',
    url: base === '' ? '/' : base,
    schema: { response: { 200: StatusSchema } },
    handler (request, reply) {
      const accept = request.headers.accept ?? ''
      if (accept.includes('text/html')) {
        return reply.type('text/html; charset=utf-8').header('cache-control', 'no-store').send(page)
      }
      return reply.header('cache-control', 'no-store').send(pools.status())
    }
  })
  if (metrics !== undefined) {
    fastify.route({
      ...routeOptions,
      method: 'GET',
      url: `${base}/metrics`,
      async handler (_request, reply) {
        reply.type(metrics.contentType())
        return await metrics.text()
      }
    })
  }
}
