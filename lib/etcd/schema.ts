import { Type, type Static } from '@sinclair/typebox'

/** How to reach etcd, as the options take it (pools from etcd, etcd discovery, registerTarget). */

const Pem = Type.Union([Type.String(), Type.Uint8Array()], { errorMessage: 'must be a PEM string or Buffer' })
const Ms = Type.Integer({ minimum: 1, maximum: 2_147_483_647, errorMessage: 'must be a positive integer (milliseconds)' })

export const EtcdConnectionFields = {
  endpoints: Type.Array(Type.String({ pattern: '^https?://[^/?#]+/?$', errorMessage: "must be an etcd client URL such as 'http://127.0.0.1:2379'" }), {
    minItems: 1, errorMessage: "must be a non-empty array of etcd client URLs ('http://127.0.0.1:2379')"
  }),
  /** every key under it is read (keys are bytes: '/gateway/pools/', 'services/api/') */
  prefix: Type.String({ minLength: 1, errorMessage: 'must be a non-empty key prefix' }),
  username: Type.Optional(Type.String({ minLength: 1, errorMessage: 'must be a user name' })),
  password: Type.Optional(Type.String({ errorMessage: 'must be a string' })),
  tls: Type.Optional(Type.Object({
    ca: Type.Optional(Pem),
    cert: Type.Optional(Pem),
    key: Type.Optional(Pem),
    servername: Type.Optional(Type.String({ minLength: 1, errorMessage: 'must be a host name' }))
  }, { additionalProperties: false })),
  /** longest wait for one call to one member */
  timeout: Type.Optional(Ms)
}

/** The plugin option `etcd`: pools read from keys under `prefix`. */
export const EtcdPoolsSchema = Type.Object({
  ...EtcdConnectionFields,
  /** how long `ready()` waits for etcd before it starts with the pools in code */
  startTimeout: Type.Optional(Type.Integer({ minimum: 0, maximum: 2_147_483_647, errorMessage: 'must be an integer >= 0 (milliseconds)' }))
}, { additionalProperties: false })

/** The discovery source `{ type: 'etcd' }`: a pool's targets read from keys under `prefix`. */
export const EtcdDiscoverySchema = Type.Object({
  type: Type.Literal('etcd'),
  ...EtcdConnectionFields
}, { additionalProperties: false })

export type EtcdPoolsOptions = Static<typeof EtcdPoolsSchema>
export type EtcdDiscoveryOptions = Static<typeof EtcdDiscoverySchema>
