import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'tap'

// Both module shapes, checked against the built package as a user would load it by name.
const root = join(__dirname, '..', '..')
const built = existsSync(join(root, 'dist', 'index.js'))

function run (args: string[]): string {
  return execFileSync(process.execPath, args, { cwd: root, encoding: 'utf8' }).trim()
}

test('require() gives the plugin itself, with default and named exports', { skip: !built && 'run npm run build first' }, async (t) => {
  const out = run(['-e', `
    const plugin = require('fastify-upstream')
    console.log(JSON.stringify({
      fn: typeof plugin,
      same: plugin.default === plugin && plugin.fastifyUpstream === plugin,
      name: plugin[Symbol.for('fastify.display-name')],
      errors: typeof plugin.errors.NoTargetError
    }))`])
  t.same(JSON.parse(out), { fn: 'function', same: true, name: 'fastify-upstream', errors: 'function' })
})

test('import gives the plugin as default and as a named export', { skip: !built && 'run npm run build first' }, async (t) => {
  const out = run(['--input-type=module', '-e', `
    import plugin, { fastifyUpstream, RoundRobinBalancer } from 'fastify-upstream'
    import Fastify from 'fastify'
    const app = Fastify()
    await app.register(plugin, { upstreams: { a: { targets: ['http://127.0.0.1:1'] } } })
    await app.ready()
    console.log(JSON.stringify({ same: plugin === fastifyUpstream, balancer: typeof RoundRobinBalancer, pool: app.upstreams.get('a').name }))
    await app.close()`])
  t.same(JSON.parse(out), { same: true, balancer: 'function', pool: 'a' })
})
