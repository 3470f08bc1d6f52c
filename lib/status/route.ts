import type { FastifyInstance } from 'fastify'
import { StatusSchema } from '../contracts'
import type { MetricsOptions, StatusRouteOptions } from '../options/types'
import type { PoolRegistry } from '../upstream/registry'
import { UpstreamMetrics } from './metrics'
import { statusPage } from './page'

/**
 * Sets up the metrics and mounts the status route. Metrics exist when something reads them:
 * the status route serves them, or they go into the user's registry (served by the user's
 * own `/metrics`); with neither, nothing is created.
 *
 * The status route answers JSON for programs (validated by its response schema), a
 * self-refreshing HTML page for a browser (`Accept: text/html`), and Prometheus text at
 * `/metrics` below it. Both routes take the same Fastify hooks, so one `onRequest` guards both.
 */
export function mountStatus (fastify: FastifyInstance, pools: PoolRegistry, route: StatusRouteOptions | undefined, metricsOptions: MetricsOptions | false): void {
  const wanted = metricsOptions !== false && (route !== undefined || metricsOptions.registry !== undefined)
  const metrics = wanted ? new UpstreamMetrics(pools, metricsOptions) : undefined
  if (metrics !== undefined) fastify.addHook('onClose', async () => { metrics.close() })
  if (route === undefined) return

  const { url, ...routeOptions } = route
  const base = url.replace(/\/+$/, '') || ''
  const page = statusPage()
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
