'use strict'

// tap 21 enforces all-or-nothing coverage; this project holds lib/ to a line threshold.
const { readFileSync } = require('node:fs')
const { join } = require('node:path')

const minimum = Number(process.env.COVERAGE_LINES ?? 90)
const summary = JSON.parse(readFileSync(join(__dirname, '..', '.tap', 'report', 'coverage-summary.json'), 'utf8'))
let covered = 0
let total = 0
for (const [file, figures] of Object.entries(summary)) {
  if (!file.replace(/\\/g, '/').includes('/lib/')) continue
  covered += figures.lines.covered
  total += figures.lines.total
}
const percent = total === 0 ? 0 : (covered / total) * 100
console.log(`lib/ line coverage: ${percent.toFixed(2)}% (${covered}/${total} lines; minimum ${minimum}%)`)
if (percent < minimum) process.exit(1)
