import { execFile } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'tap'

// Every file in examples/ runs as it is (against the built package, as a user would).
const root = join(__dirname, '..', '..')
const built = existsSync(join(root, 'dist', 'index.js'))

for (const file of readdirSync(join(root, 'examples')).filter((f) => f.endsWith('.js'))) {
  test(`examples/${file} runs`, { skip: !built && 'run npm run build first' }, async (t) => {
    const output = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, [join('examples', file), '--once'], { cwd: root, env: { ...process.env, PORT: '0' }, timeout: 30_000 }, (error, stdout, stderr) => {
        if (error !== null) reject(new Error(`${error.message}\n${stderr}`))
        else resolve(stdout)
      })
    })
    t.match(output, /listening on http:\/\/127\.0\.0\.1:\d+/)
    t.notMatch(output, /-> (5\d\d)/, 'no request failed')
  })
}
