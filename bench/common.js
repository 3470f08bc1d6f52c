'use strict'

// Helpers shared by the benchmark scripts: argument parsing, statistics, formatting and
// child-process bookkeeping (every child is killed when the parent ends, however it ends).

const { fork, execFileSync } = require('node:child_process')
const os = require('node:os')

/** Parses `--name=value` and `--flag` arguments into an object. */
function parseArgs (argv) {
  const args = {}
  for (const arg of argv) {
    if (!arg.startsWith('--')) continue
    const eq = arg.indexOf('=')
    if (eq === -1) args[arg.slice(2)] = true
    else args[arg.slice(2, eq)] = arg.slice(eq + 1)
  }
  return args
}

function numberArg (args, name, fallback) {
  if (args[name] === undefined) return fallback
  const value = Number(args[name])
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} must be a positive number`)
  return value
}

function median (values) {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

function fmt (value, digits = 0) {
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

function pad (text, width) {
  const s = String(text)
  return s.length >= width ? s : ' '.repeat(width - s.length) + s
}

function padEnd (text, width) {
  const s = String(text)
  return s.length >= width ? s : s + ' '.repeat(width - s.length)
}

/** Prints rows (arrays of cells) as an aligned table; the first column left-aligned. */
function printTable (header, rows) {
  const all = [header, ...rows]
  const widths = header.map((_, c) => Math.max(...all.map((row) => String(row[c]).length)))
  const line = (row) => row.map((cell, c) => (c === 0 ? padEnd(cell, widths[c]) : pad(cell, widths[c]))).join('  ')
  console.log(line(header))
  console.log(widths.map((w) => '-'.repeat(w)).join('  '))
  for (const row of rows) console.log(line(row))
}

// ---- child processes ----------------------------------------------------------------

const children = new Set()
let hooked = false

function killAll () {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
  children.clear()
}

function hookExit () {
  if (hooked) return
  hooked = true
  // 'exit' handlers run synchronously: kill() is synchronous, so nothing outlives us
  process.on('exit', killAll)
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(signal, () => {
      console.error(`\nreceived ${signal}: stopping the child processes`)
      killAll()
      process.exit(130)
    })
  }
}

/** Forks a Node.js child with an IPC channel; it is killed when this process exits. */
function spawnChild (file, args = [], options = {}) {
  hookExit()
  const child = fork(file, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], ...options })
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}

/** Resolves with the first IPC message of `type` from `child`; rejects on exit or timeout. */
function waitMessage (child, type, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      clearTimeout(timer)
      child.off('message', onMessage)
      child.off('exit', onExit)
    }
    const onMessage = (message) => {
      if (message === null || typeof message !== 'object' || message.type !== type) return
      cleanup()
      resolve(message)
    }
    const onExit = (code, signal) => {
      cleanup()
      reject(new Error(`child ${child.pid} exited (${signal ?? code}) while waiting for "${type}"`))
    }
    const timer = setTimeout(() => {
      cleanup()
      reject(new Error(`child ${child.pid} sent no "${type}" within ${timeoutMs} ms`))
    }, timeoutMs)
    child.on('message', onMessage)
    child.on('exit', onExit)
  })
}

/** Asks a child to exit (so that --cpu-prof can write its profile), then kills it. */
async function stopChild (child, graceMs = 5000) {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  try {
    if (child.connected) child.send({ type: 'close' })
  } catch {}
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

// ---- CPU pinning (Linux, taskset) ----------------------------------------------------

/**
 * CPU sets for the proxy benchmark, or undefined when pinning is not possible: the proxy
 * under test gets a CPU of its own; the load generator (this process) and the upstream
 * servers share the rest (on a 2-CPU machine: CPU 0 for both, CPU 1 for the proxy).
 */
function cpuPlan () {
  const n = os.availableParallelism()
  if (process.platform !== 'linux' || n < 2) return undefined
  try {
    execFileSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' })
  } catch {
    return undefined
  }
  if (n === 2) return { parent: '0', upstreams: '0', proxy: '1' }
  return { parent: '0', upstreams: n >= 4 ? `1-${n - 2}` : '1', proxy: String(n - 1) }
}

/** Pins every thread of process `pid` to the CPU list `cpus` (taskset syntax). */
function pin (pid, cpus) {
  execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' })
}

// ---- load outside the benchmark ----------------------------------------------------------

/** CPU time of the whole machine so far, in microseconds (Linux /proc/stat), or undefined. */
function machineBusy () {
  try {
    const line = require('node:fs').readFileSync('/proc/stat', 'utf8').split('\n')[0]
    const f = line.trim().split(/\s+/).slice(1).map(Number)
    // user nice system idle iowait irq softirq steal: everything but idle and iowait
    const ticks = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
    return (ticks * 1e6) / 100 // USER_HZ is 100 on Linux
  } catch {
    return undefined
  }
}

/**
 * Waits (at most `maxSeconds`) until the machine has been nearly idle (< 10% of one CPU
 * busy) for three seconds in a row, so that a run does not start on top of other work.
 * Resolves with true when it is quiet, false when it gave up (or cannot tell).
 */
async function waitQuiet (maxSeconds) {
  if (machineBusy() === undefined) return false
  const deadline = Date.now() + maxSeconds * 1000
  let quiet = 0
  while (Date.now() < deadline) {
    const before = machineBusy()
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const cores = (machineBusy() - before) / 1e6
    quiet = cores < 0.1 ? quiet + 1 : 0
    if (quiet >= 3) return true
  }
  return false
}

module.exports = {
  machineBusy,
  waitQuiet,
  cpuPlan,
  pin,
  parseArgs,
  numberArg,
  median,
  fmt,
  pad,
  printTable,
  spawnChild,
  waitMessage,
  stopChild,
  killAll
}
