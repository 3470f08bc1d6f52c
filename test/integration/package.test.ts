import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, relative, sep } from 'node:path'
import { test } from 'tap'

// The package as a user meets it: `npm pack`, the tarball installed into a fresh app
// without the network, then used from CommonJS, an ES module and strict TypeScript.
const root = join(__dirname, '..', '..')
const repoModules = join(root, 'node_modules')
const fixtures = join(__dirname, '..', 'fixtures', 'consumers')
const hasNpm = spawnSync('npm', ['--version'], { encoding: 'utf8' }).status === 0

// npm's own variables (set when this runs under `npm test`) would point the child npm at
// this repository; the test runner's NODE_OPTIONS hooks are not wanted in the apps either
const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^npm_/i.test(name) && name !== 'NODE_OPTIONS'))

interface Run { status: number | null, stdout: string, output: string }

function run (command: string, args: string[], cwd: string): Run {
  const result = spawnSync(command, args, { cwd, env, encoding: 'utf8', timeout: 60_000 })
  const output = `${result.stdout ?? ''}${result.stderr ?? ''}${result.error === undefined ? '' : String(result.error)}`
  return { status: result.status, stdout: result.stdout ?? '', output }
}

function lastLine (text: string): unknown {
  try {
    return JSON.parse(text.trim().split('\n').pop() ?? '')
  } catch {
    return { unparsed: text }
  }
}

function posix (path: string): string {
  return path.split(sep).join('/')
}

/**
 * Copies `names` and everything they depend on from this repository's node_modules into
 * `app`, at the same relative places, so that Node and npm find them there. Copies, not
 * symlinks: npm runs the `prepare` script of a linked package, inside this repository.
 */
function copyDependencies (names: string[], app: string): void {
  const seen = new Set<string>()
  const locate = (name: string, from: string): string | undefined => {
    for (let dir = from; dir.startsWith(root); dir = dirname(dir)) {
      const candidate = join(dir, 'node_modules', name)
      if (existsSync(join(candidate, 'package.json'))) return candidate
      if (dir === root) break
    }
    return undefined
  }
  const visit = (dir: string): void => {
    if (seen.has(dir)) return
    seen.add(dir)
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
    const optional = pkg.peerDependenciesMeta ?? {}
    const wanted = [
      ...Object.keys(pkg.dependencies ?? {}),
      ...Object.keys(pkg.optionalDependencies ?? {}),
      ...Object.keys(pkg.peerDependencies ?? {}).filter((name) => optional[name]?.optional !== true)
    ]
    for (const name of wanted) {
      const found = locate(name, dir)
      if (found !== undefined) visit(found)
    }
  }
  for (const name of names) visit(join(repoModules, name))
  for (const dir of seen) {
    const nested = join(dir, 'node_modules')
    cpSync(dir, join(app, relative(root, dir)), { recursive: true, filter: (source) => !source.startsWith(nested) })
  }
}

test('the packed tarball installs offline and serves CommonJS, ES module and TypeScript apps', { skip: !hasNpm && 'npm is not on PATH' }, async (t) => {
  if (!existsSync(join(root, 'dist', 'index.js'))) {
    t.fail('dist/ is missing: run `npm run build` first (npm test does)')
    return
  }
  const work = mkdtempSync(join(tmpdir(), 'fastify-upstream-package-'))
  t.teardown(() => rmSync(work, { recursive: true, force: true }))

  // --ignore-scripts: packing here must not rebuild dist/
  const pack = run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], root)
  t.equal(pack.status, 0, 'npm pack', { output: pack.output })
  const [{ filename, files }] = JSON.parse(pack.stdout) as Array<{ filename: string, files: Array<{ path: string }> }>
  const shipped = new Set(files.map((file) => file.path))
  t.ok(shipped.has('LICENSE'), 'LICENSE is in the tarball')

  const app = join(work, 'app')
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer-app', version: '1.0.0', private: true }))
  const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  copyDependencies([...Object.keys(manifest.dependencies), ...Object.keys(manifest.peerDependencies)], app)

  const install = run('npm', ['install', '--offline', '--no-audit', '--no-fund', join(work, filename)], app)
  t.equal(install.status, 0, 'npm install of the tarball', { output: install.output })
  const ours = install.output.split('\n').filter((line) => /^npm (warn|error)/i.test(line) && /fastify-upstream|install-scripts/.test(line))
  t.same(ours, [], 'installing prints no warning about this package or its scripts')
  const installed = join(app, 'node_modules', 'fastify-upstream')
  const scripts = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8')).scripts ?? {}
  t.same(['preinstall', 'install', 'postinstall', 'prepare'].filter((name) => name in scripts), [], 'no script runs when it is installed')

  const dangling: string[] = []
  for (const path of shipped) {
    if (path.endsWith('.js')) {
      const url = /\/\/# sourceMappingURL=(\S+)\s*$/.exec(readFileSync(join(installed, path), 'utf8'))?.[1]
      if (url !== undefined && !shipped.has(posix(join(dirname(path), url)))) dangling.push(`${path} -> ${url}`)
    } else if (path.endsWith('.map')) {
      const map = JSON.parse(readFileSync(join(installed, path), 'utf8')) as { sources: string[], sourceRoot?: string }
      for (const source of map.sources) {
        const target = posix(join(dirname(path), map.sourceRoot ?? '', source))
        if (!shipped.has(target)) dangling.push(`${path} -> ${target}`)
      }
    }
  }
  t.same(dangling, [], 'every source map and every file a map points at is in the tarball')

  // types for the TypeScript apps, linked only now that npm is done with node_modules
  mkdirSync(join(app, 'node_modules', '@types'), { recursive: true })
  symlinkSync(join(repoModules, '@types', 'node'), join(app, 'node_modules', '@types', 'node'), 'junction')
  cpSync(fixtures, join(app, 'consumers'), { recursive: true })

  const expected = (from: string): unknown => ({ status: 200, body: { served: 'upstream', url: `/hello?from=${from}` } })

  const cjs = run(process.execPath, [join('consumers', 'require.cjs')], app)
  t.equal(cjs.status, 0, 'CommonJS app runs', { output: cjs.output })
  t.same(lastLine(cjs.stdout), {
    ...expected('cjs') as object,
    exports: { plugin: 'function', default: true, named: true, errors: 'function', balancer: 'function' }
  }, 'CommonJS app')

  const esm = run(process.execPath, [join('consumers', 'import.mjs')], app)
  t.equal(esm.status, 0, 'ES module app runs', { output: esm.output })
  t.same(lastLine(esm.stdout), { ...expected('esm') as object, exports: { plugin: 'function', named: true, unset: 0 } }, 'ES module app')

  const tsc = join(repoModules, 'typescript', 'bin', 'tsc')
  for (const variant of ['nodenext', 'commonjs']) {
    const dir = join(app, 'consumers', 'typescript', variant)
    cpSync(join(app, 'consumers', 'typescript', 'app.ts'), join(dir, 'app.ts'))
    const check = run(process.execPath, [tsc, '-p', dir], app)
    t.equal(check.status, 0, `TypeScript app, module ${variant}, type-checks`, { output: check.output })
    if (check.status !== 0) continue
    const ts = run(process.execPath, [join(dir, 'out', 'app.js')], app)
    t.equal(ts.status, 0, `TypeScript app, module ${variant}, runs`, { output: ts.output })
    t.same(lastLine(ts.stdout), {
      ...expected('ts') as object,
      exports: { plugin: 'function', named: true, balancer: true },
      targets: 1
    }, `TypeScript app, module ${variant}`)
  }
})
