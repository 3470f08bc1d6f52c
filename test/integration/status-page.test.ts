/// <reference lib="dom" />
import { existsSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium, type Browser } from 'playwright-core'
import { test } from 'tap'
import { load, startGateway, startUpstream, startUpstreams } from '../helpers'

// The HTML status page in a real browser: Debian's Chromium, driven by playwright-core.
// CI installs it; elsewhere the test is skipped when it is missing.
const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const available = existsSync(executablePath)

test('the status page shows pools, targets and states as they change', { skip: !available && `no browser at ${executablePath}` }, async (t) => {
  const ups = await startUpstreams(t, 3)
  const dead = await startUpstream(t, 'dead')
  await dead.close()
  const { app, url } = await startGateway(t, {
    upstreams: {
      users: { targets: [...ups.map((u) => u.url), { url: dead.url, backup: true }], balancer: 'least-request' },
      orders: { targets: [ups[0].url, dead.url], healthCheck: { passive: { consecutiveFailures: 1, ejectionTime: 60_000 } }, retry: { attempts: 0 } }
    },
    routes: [{ prefix: '/users', upstream: 'users' }, { prefix: '/orders', upstream: 'orders' }],
    statusRoute: '/_upstreams'
  })
  const browser: Browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.teardown(() => browser.close())
  await load(`${url}/users/x`, 30, 3)
  const page = await browser.newPage({ viewport: { width: 1100, height: 620 } })
  await page.goto(`${url}/_upstreams`)
  await page.waitForSelector('h2[data-pool="users"]')
  t.match(await page.textContent('h2[data-pool="users"]'), /users\s*least-request · 4 of 4 available/)
  const row = (pool: string, target: string): string => `h2[data-pool="${pool}"] + table tr[data-url="${target}"]`
  t.equal(await page.textContent(`${row('users', ups[0].url)} td.state`), 'healthy')

  // the targets change while the page is open; it refreshes by itself
  app.upstreams.get('users')?.setState(ups[1].url, 'disabled')
  await load(`${url}/orders/x`, 4, 1)
  await page.waitForFunction((selector) => document.querySelector(selector)?.textContent === 'disabled', `${row('users', ups[1].url)} td.state`, { timeout: 8000 })
  await page.waitForFunction((selector) => document.querySelector(selector)?.textContent === 'ejected', `${row('orders', dead.url)} td.state`, { timeout: 8000 })
  t.pass('the page shows the disabled and the ejected target without a reload')

  // what a person sees: state colours, the numbers, the headings
  const colour = async (selector: string): Promise<string> => await page.$eval(selector, (el) => getComputedStyle(el).backgroundColor)
  t.equal(await colour(`${row('users', ups[0].url)} td.state`), 'rgb(198, 246, 213)', 'healthy is green')
  t.equal(await colour(`${row('orders', dead.url)} td.state`), 'rgb(254, 235, 200)', 'ejected is orange')
  t.equal(await colour(`${row('users', ups[1].url)} td.state`), 'rgb(226, 232, 240)', 'disabled is grey')
  t.match(await page.textContent('h2[data-pool="users"]'), /3 of 4 available/, 'the heading counts the disabled target out')
  const cells = await page.$$eval(`${row('users', ups[0].url)} td`, (tds) => tds.map((td) => td.textContent))
  t.equal(cells[0], ups[0].url)
  t.equal(cells[6], '0', 'no WebSocket open')
  t.ok(Number(cells[7]) > 0, `requests are shown (${cells[7]})`)
  t.match(await page.textContent('#meta'), /updated .* refreshes every 2 s/)
  // the README's picture: STATUS_PAGE_SCREENSHOT=docs/status-page.png npx tap test/integration/status-page.test.ts
  const shot = process.env.STATUS_PAGE_SCREENSHOT ?? join(tmpdir(), 'fastify-upstream-status-page.png')
  await page.screenshot({ path: shot, fullPage: true })
  t.ok(statSync(shot).size > 10_000, 'a screenshot of what a person sees')
})
