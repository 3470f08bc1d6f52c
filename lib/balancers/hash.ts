// 32-bit string hashing for consistent hashing: FNV-1a over UTF-16 code units, then the
// murmur3 finaliser so that similar keys (10.0.0.1, 10.0.0.2) spread over the table.

const FNV_OFFSET = 0x811c9dc5
const FNV_PRIME = 0x01000193

/** Hashes `text.slice(start, end)` without building the substring. */
export function hashRange (text: string, start: number, end: number, seed = 0): number {
  let h = (FNV_OFFSET ^ seed) >>> 0
  for (let i = start; i < end; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, FNV_PRIME)
  }
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

export function hashString (text: string, seed = 0): number {
  return hashRange(text, 0, text.length, seed)
}
