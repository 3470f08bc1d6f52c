/**
 * The boundaries of lib/, checked by `npm test` (npm run deps). Type imports count:
 * a cycle through types is still a cycle for a reader.
 */
module.exports = {
  forbidden: [
    {
      name: 'no-cycles',
      severity: 'error',
      comment: 'No module may reach itself again through its imports, type imports included.',
      from: { path: '^lib/' },
      to: { circular: true }
    },
    {
      name: 'contracts-are-a-leaf',
      severity: 'error',
      comment: 'contracts.ts holds the shapes every part shares: it imports no module of the plugin.',
      from: { path: '^lib/contracts\\.ts$' },
      to: { path: '^lib/' }
    },
    {
      name: 'model-knows-no-fastify',
      severity: 'error',
      comment: 'Balancers, the upstream model and health checks import nothing from Fastify, not even types.',
      from: { path: '^lib/(balancers|upstream|health)/' },
      // fastify, fastify-plugin and every @fastify/ package, as resolved in node_modules
      to: { path: '(^|/)node_modules/(fastify|fastify-plugin|@fastify/[^/]+)/' }
    },
    {
      name: 'model-knows-no-proxy',
      severity: 'error',
      comment: 'Balancers, the upstream model and health checks import nothing of the proxy, the status route or the plugin entry.',
      from: { path: '^lib/(balancers|upstream|health)/' },
      to: { path: '^lib/(proxy/|status/|index\\.ts$|events\\.ts$)' }
    },
    {
      name: 'traffic-policies-stand-alone',
      severity: 'error',
      comment: 'A traffic policy decides (which branch); the proxy acts. traffic/ imports nothing of the proxy, the status route, the events or the entry, and nothing from Fastify but the request type its options name (schema.ts).',
      from: { path: '^lib/traffic/' },
      to: { path: '^lib/(proxy/|status/|index\\.ts$|events\\.ts$)' }
    },
    {
      name: 'traffic-knows-no-fastify',
      severity: 'error',
      comment: 'The split and its rules read requests through MatchRequest; only the option schema types a rule function with Fastify\'s request.',
      from: { path: '^lib/traffic/', pathNot: '^lib/traffic/schema\\.ts$' },
      to: { path: '(^|/)node_modules/(fastify|fastify-plugin|@fastify/[^/]+)/' }
    },
    {
      name: 'etcd-is-a-source',
      severity: 'error',
      comment: 'etcd/ is where pools and targets come from: it knows no Fastify, nothing of the proxy, the status route, the events or the entry.',
      from: { path: '^lib/etcd/' },
      to: { path: '(^lib/(proxy/|status/|index\\.ts$|events\\.ts$))|((^|/)node_modules/(fastify|fastify-plugin|@fastify/[^/]+)/)' }
    },
    {
      name: 'balancers-stand-alone',
      severity: 'error',
      comment: 'A balancer sees targets only through balancers/types.ts: it reaches nothing of the plugin outside its folder but the schema helper.',
      from: { path: '^lib/balancers/' },
      to: { path: '^lib/', pathNot: '^lib/(balancers/|typed-schema\\.ts$)' }
    },
    {
      name: 'only-the-entry-wires',
      severity: 'error',
      comment: 'Nothing imports the entry file: it only wires the parts.',
      from: { path: '^lib/' },
      to: { path: '^lib/index\\.ts$' }
    }
  ],
  options: {
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^dist/' }
  }
}
