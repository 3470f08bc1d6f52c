import type { TSchema, TUnsafe } from '@sinclair/typebox'

/**
 * `schema` as it is checked, with the TypeScript type `T` where TypeBox cannot infer one
 * as precise: a function's parameters, a custom object's methods, a string pattern that
 * is a template literal type. The check stays the schema's; only the derived type changes.
 */
export function typed<T> (schema: TSchema): TUnsafe<T> {
  return schema as TUnsafe<T>
}
