import { test } from 'tap'
import { isSafePath } from '../../lib/proxy/paths'
import { rawExchange, readings, startGateway, startUpstream } from '../helpers'

// The rule (see isSafePath): the path as sent, each form reached by decoding it again (up to
// four rounds; deeper is refused) and the NFKC form of each must hold no dot segment, no
// encoded separator and no backslash or NUL. Tested by class: every way of writing a dot,
// a slash or a backslash, through a target that decodes several times and normalises.

const hex = (text: string): string => [...Buffer.from(text, 'utf8')].map((b) => '%' + b.toString(16).padStart(2, '0')).join('')
const upperHex = (text: string): string => hex(text).toUpperCase()

/** Every way to write `char` that some target reads as `char`. */
function spellings (char: string, lookalikes: string[]): string[] {
  const once = hex(char)
  return [
    once, upperHex(char),
    // twice: %25 then the escape; the escape's digits encoded too; mixed
    '%25' + once.slice(1), '%25' + hex(once.slice(1, 2)) + hex(once.slice(2)), '%25' + once.slice(1, 2) + hex(once.slice(2)),
    // three and five times
    '%2525' + once.slice(1), '%2525252525' + once.slice(1),
    // Unicode that NFKC turns into the character, once and twice encoded
    ...lookalikes.flatMap((l) => [hex(l), hex(l).replace(/%/g, '%25')])
  ]
}

const DOTS = ['.', ...spellings('.', ['\uff0e', '\ufe52', '\u2024'])]
const TWO_DOTS = ['\u2025'].flatMap((l) => [hex(l), hex(l).replace(/%/g, '%25')])
const SEPARATORS = ['/', ...spellings('/', ['\uff0f']), ...spellings('\\', ['\uff3c', '\ufe68'])]

/** `..` written every way, then a separator written every way: the classic climb. */
function climbs (): string[] {
  const paths: string[] = []
  for (const dot of DOTS) {
    for (const separator of SEPARATORS) paths.push(`/${dot}${dot}${separator}secret`)
    paths.push(`/${dot}${dot}/secret`, `/${dot}${dot}`, `/${dot}${dot};x/secret`)
  }
  for (const pair of TWO_DOTS) paths.push(`/${pair}/secret`, `/${pair}${hex('/')}secret`)
  return paths
}

test('isSafePath: every spelling of a climb is refused, decoded any number of times', async (t) => {
  const all = climbs()
  t.ok(all.length > 150, `${all.length} spellings`)
  for (const path of all) t.notOk(isSafePath(path), path)
  // a lone dot segment does not climb, but is no path a client needs either
  for (const dot of DOTS) t.notOk(isSafePath(`/x/${dot}/secret`), `/x/${dot}/secret`)
  // and each one really is a climb for some reader: the corpus tests something
  for (const path of all) t.ok(readings('/files' + path).some((read) => !read.startsWith('/files/')), `${path} climbs for a lenient reader`)
})

test('isSafePath: what is fine stays fine', async (t) => {
  for (const path of ['', '/', '/a/b', '/fine...name', '/.well-known/x', '/a.b/c.d', '/100%25', '/a%25b', '/%2525', '/caf%C3%A9', '/%E2%82%AC',
    '/a%20b', '/a;b=c', '/x/...', '/x/.../y', '/%3F', '/a+b', '/%ef%bc%a1']) {
    t.ok(isSafePath(path), path)
  }
  for (const path of ['x', 'http://evil/x', '/a\\b', '/a\x00', '/a b', '/a\x7f', '/caf\xe9', '/%zz', '/%c3', '/%C0%AE%C0%AE/x', '/a%2fb', '/a%5cb', '/a%00',
    '/%25252525252e', '/..;/x', '/%2e%2e%3b/x', '/..%3fx', '/..%23x']) {
    t.notOk(isSafePath(path), JSON.stringify(path))
  }
})

test('through a mount: every spelling gets 400, and a target that decodes and normalises never leaves its prefix', async (t) => {
  let escaped: string[] = []
  const up = await startUpstream(t, 'files', (req, res) => {
    const url = req.url as string
    if (readings(url).some((read) => !read.startsWith('/v1/files'))) escaped.push(url)
    res.end('ok')
  })
  const { url } = await startGateway(t, {
    upstreams: { files: { targets: [up.url] } },
    routes: [{ prefix: '/files', upstream: 'files', rewritePrefix: '/v1/files' }, { prefix: '/orgs/:org', upstream: 'files', rewritePrefix: '/v1/files/:org' }]
  })
  for (const path of climbs()) {
    t.equal((await rawExchange(url, '/files' + path)).status, 400, `/files${path}`)
    t.equal((await rawExchange(url, '/orgs' + path)).status, 400, `/orgs${path} (through a param)`)
  }
  t.equal(up.hits, 0, 'none reached the target')
  t.same(escaped, [])
  escaped = []
  // what is fine is proxied and stays under the prefix for the same reader
  for (const path of ['/a/b', '/100%25', '/%2525', '/caf%C3%A9', '/a;b=c/d', '/x/y...']) {
    t.equal((await rawExchange(url, '/files' + path)).status, 200, `/files${path}`)
  }
  t.same(escaped, [], 'no proxied path leaves /v1/files for a lenient target')
})
