// Unit tests of the upstream path rule (isSafePath in lib/proxy/paths.ts), table-driven: no socket, no server.
import { test } from 'tap'
import { isSafePath } from '../../lib/proxy/paths'

// The rule (README "Paths: what the target gets", and isSafePath's comment): empty or
// starting with `/`, printable ASCII, valid percent-encoding of UTF-8; then the path as
// sent, each form reached by decoding it again (up to four times; still encoded after
// that is refused) and the NFKC form of each may hold no `.`/`..` segment (ended by `/`,
// `?`, `#`, `;` or the end), no encoded `/`, `\` or NUL, no backslash or NUL, and no `/`
// that NFKC made.

/** `text` percent-encoded `times` times (`.` once is `%2e`, twice `%252e`): each round after the first encodes the `%`s. */
function encode (text: string, times: number): string {
  let out = [...Buffer.from(text, 'utf8')].map((b) => '%' + b.toString(16).padStart(2, '0')).join('')
  for (let i = 1; i < times; i++) out = out.replace(/%/g, '%25')
  return out
}

/** `%` written as `%25` `times` times: a literal `%` once is `%25`, twice `%2525`. */
const percent = (times: number): string => '%' + '25'.repeat(times)

const SAFE: Array<[string, string]> = [
  ['', 'empty'],
  ['/', 'root'],
  ['/a/b/c', 'plain'],
  ['/users/42/orders', 'plain with digits'],
  ['/a/b/', 'trailing slash'],
  ['/a//b', 'double slash (not this rule\'s concern)'],
  ['/fine...name', 'dots inside a segment'],
  ['/a..b', 'two dots inside a segment'],
  ['/..a', 'segment starting with two dots'],
  ['/a..', 'segment ending with two dots'],
  ['/x/...', 'three dots is no dot segment'],
  ['/x/.../y', 'three dots in the middle'],
  ['/.well-known/acme', 'segment starting with a dot'],
  ['/a.b/c.d', 'dotted names'],
  ['/a;b=c', 'a ;parameter'],
  ['/a+b', 'a plus'],
  ['/a?x=1', 'a query mark'],
  ['/~user', 'tilde (0x7E, the last printable)'],
  ['/100%25', 'literal % as %25'],
  ['/a%25b', '%25 in the middle'],
  ['/%25', '%25 alone'],
  ['/%2525', '%25 encoded again: decodes to %25, then %'],
  ['/' + percent(4), 'a literal % four levels deep: the deepest allowed'],
  ['/' + encode('a', 4), 'a letter encoded four times'],
  ['/a%20b', 'encoded space'],
  ['/%41%42', 'encoded letters'],
  ['/a%2eb', 'encoded dot inside a segment'],
  ['/a%2e%2eb', 'encoded two dots inside a segment'],
  ['/%2e%2e%2e', 'encoded three dots'],
  ['/%2ewell-known', 'encoded dot starting a segment'],
  ['/%3F', 'encoded ?'],
  ['/caf%C3%A9', 'UTF-8 é encoded'],
  ['/%E2%82%AC', 'UTF-8 € encoded'],
  ['/%ef%bc%a1', 'fullwidth A, NFKC A'],
  ['/%E4%B8%AD%E6%96%87', 'CJK encoded']
]

const UNSAFE: Array<[string, string]> = [
  // shape
  ['x', 'no leading slash'],
  ['a/b', 'relative'],
  ['http://evil/x', 'absolute URL'],
  ['e/vil/x', 'starts with a letter'],
  // raw bytes
  ['/a b', 'raw space'],
  ['/a\tb', 'raw tab'],
  ['/a\x00', 'raw NUL'],
  ['/a\x7f', 'raw DEL'],
  ['/a\\b', 'raw backslash'],
  ['/..\\x', 'raw backslash after dots'],
  ['/caf\xe9', 'raw byte above 0x7E (é as latin-1)'],
  ['/caf\u00e9', 'raw é'],
  ['/\uff0e\uff0e/x', 'raw fullwidth dots'],
  ['/\u20ac', 'raw €'],
  // invalid encoding
  ['/%', 'lone %'],
  ['/%zz', 'invalid escape'],
  ['/%2', 'truncated escape'],
  ['/%c3', 'truncated UTF-8'],
  ['/%C0%AE%C0%AE/x', 'overlong UTF-8 dots (invalid UTF-8)'],
  // plain dot segments
  ['/..', '/.. alone'],
  ['/.', '/. alone'],
  ['/a/../b', '.. in the middle'],
  ['/../x', '.. first'],
  ['/a/..', '.. at the end'],
  ['/a/.', '. at the end'],
  ['/./x', '. first'],
  ['/a/./b', '. in the middle'],
  ['/..;/x', '..; (Tomcat)'],
  ['/.;x/y', '.; parameter'],
  ['/..?x', '.. before a query'],
  ['/..#x', '.. before a fragment'],
  ['/a/../../../etc/passwd', 'a climb'],
  // encoded dots
  ['/%2e%2e/x', '.. encoded, lower case'],
  ['/%2E%2E/x', '.. encoded, upper case'],
  ['/%2e%2E/x', '.. encoded, mixed case'],
  ['/.%2e/x', '.. half encoded'],
  ['/%2e./x', '.. half encoded, other half'],
  ['/%2e/x', '. encoded'],
  ['/a/%2e%2e', 'encoded .. at the end'],
  ['/a/%2e', 'encoded . at the end'],
  ['/%2e%2e;/x', 'encoded ..;'],
  ['/%2e%2e%3b/x', '.. then encoded ;'],
  ['/..%3fx', '.. then encoded ?'],
  ['/..%23x', '.. then encoded #'],
  // double and deeper encodings of dots
  ['/%252e%252e/x', '.. double-encoded'],
  ['/%252E%252E/x', '.. double-encoded, upper case'],
  ['/%252e%252E/x', '.. double-encoded, mixed case'],
  ['/%25%32%65%25%32%65/x', '.. double-encoded, escape digits encoded too'],
  ['/%2e%252e/x', 'one dot once, one twice encoded'],
  ['/' + encode('..', 3) + '/x', '.. triple-encoded'],
  ['/' + encode('..', 4) + '/x', '.. encoded four times'],
  ['/' + encode('..', 2) + encode('/', 2) + 'x', '.. and / double-encoded'],
  // encoded separators and NUL
  ['/a%2fb', 'encoded /'],
  ['/a%2Fb', 'encoded /, upper case'],
  ['/a%5cb', 'encoded \\'],
  ['/a%5Cb', 'encoded \\, upper case'],
  ['/a%00b', 'encoded NUL'],
  ['/a%00', 'encoded NUL at the end'],
  ['/a%252fb', 'double-encoded /'],
  ['/a%255cb', 'double-encoded \\'],
  ['/a%2500', 'double-encoded NUL'],
  ['/..%2fx', '.. then encoded /'],
  ['/..%5cx', '.. then encoded \\'],
  // Unicode that NFKC turns into `.`, `/` or `\`
  ['/%EF%BC%8E%EF%BC%8E/x', 'fullwidth .. (U+FF0E), upper-case escapes'],
  ['/%ef%bc%8e%ef%bc%8e/x', 'fullwidth .., lower-case escapes'],
  ['/a/%ef%bc%8e%ef%bc%8e', 'fullwidth .. at the end'],
  ['/%ef%bc%8e/x', 'fullwidth . alone'],
  ['/.%ef%bc%8e/x', 'one plain, one fullwidth dot'],
  ['/%ef%b9%92%ef%b9%92/x', 'small full stop .. (U+FE52)'],
  ['/%e2%80%a4%e2%80%a4/x', 'one dot leader .. (U+2024)'],
  ['/%e2%80%a5/x', 'two dot leader (U+2025): .. in one character'],
  ['/%25EF%25BC%258E%25EF%25BC%258E/x', 'fullwidth .. double-encoded'],
  ['/a%ef%bc%8fb', 'fullwidth / (U+FF0F)'],
  ['/a%ef%bc%bcb', 'fullwidth \\ (U+FF3C)'],
  ['/%ef%bc%852e%ef%bc%852e/x', 'fullwidth % (U+FF05) making %2e%2e after NFKC'],
  // deeper than allowed
  ['/' + percent(5), 'a literal % five levels deep'],
  ['/' + encode('a', 5), 'a letter encoded five times'],
  ['/' + encode('..', 5) + '/x', '.. encoded five times'],
  ['/' + percent(9) + '2e', 'escape nested far too deep']
]

test('isSafePath: safe paths pass', async (t) => {
  for (const [path, why] of SAFE) t.equal(isSafePath(path), true, `${JSON.stringify(path)}: ${why}`)
})

test('isSafePath: unsafe paths are refused', async (t) => {
  for (const [path, why] of UNSAFE) t.equal(isSafePath(path), false, `${JSON.stringify(path)}: ${why}`)
})

test('isSafePath: the encoding helpers build what the table says', async (t) => {
  // the table's generated rows are only worth something if the helpers are right
  t.equal(encode('.', 1), '%2e')
  t.equal(encode('.', 2), '%252e')
  t.equal(encode('..', 2), '%252e%252e')
  t.equal(percent(1), '%25')
  t.equal(percent(4), '%25252525')
  t.equal(decodeURIComponent(decodeURIComponent(decodeURIComponent(decodeURIComponent(encode('a', 4))))), 'a', 'four decodes reach the letter')
  t.equal(encode('..', 4), '%2525252e%2525252e', 'each round past the first adds 25 to every escape')
  t.equal(decodeURIComponent(decodeURIComponent(decodeURIComponent(decodeURIComponent(encode('..', 4))))), '..', 'four decodes reach the dots')
  t.equal(decodeURIComponent(decodeURIComponent(decodeURIComponent(decodeURIComponent(percent(5))))), '%25', 'a % five deep is still encoded after four decodes')
})

test('isSafePath: the depth limit is exactly four decodes', async (t) => {
  // each row: how deep, whether it passes
  for (let depth = 1; depth <= 8; depth++) {
    t.equal(isSafePath('/' + percent(depth)), depth <= 4, `literal % at depth ${depth}`)
    t.equal(isSafePath('/x' + encode('b', depth)), depth <= 4, `letter at depth ${depth}`)
    t.equal(isSafePath('/' + encode('..', depth) + '/x'), false, `.. at depth ${depth}: always refused`)
  }
})

test('isSafePath: a dot segment anywhere is refused, whatever ends it', async (t) => {
  for (const dots of ['.', '..', '%2e', '%2e%2e', '.%2e', '%252e%252e']) {
    for (const end of ['', '/', '/x', '?q', '#f', ';p', '%3f', '%23', '%3b']) {
      for (const before of ['', '/a', '/a/b']) {
        const path = `${before}/${dots}${end}`
        t.equal(isSafePath(path), false, JSON.stringify(path))
      }
    }
  }
  // and the same dots inside a segment are fine
  for (const dots of ['.', '..', '%2e', '%2e%2e']) {
    t.equal(isSafePath(`/a${dots}b/c`), true, `/a${dots}b/c`)
    t.equal(isSafePath(`/${dots}x/c`), true, `/${dots}x/c`)
  }
})
