import createError from '@fastify/error'

// Every error the plugin raises has a stable code; the HTTP status is part of the contract.

/** Thrown at register (and by runtime calls) when options are invalid; the message names the field. */
export const InvalidOptionError = createError('FST_UPSTREAM_INVALID_OPTION', 'Invalid fastify-upstream option: %s', 500, TypeError)
/** `reply.forward` named a pool that does not exist. */
export const UnknownPoolError = createError('FST_UPSTREAM_UNKNOWN_POOL', 'Unknown upstream pool "%s"', 500)
/** A runtime call named a target URL that is not in the pool. */
export const UnknownTargetError = createError('FST_UPSTREAM_UNKNOWN_TARGET', 'Pool "%s" has no target %s', 500)
/** The plugin was registered a second time, in the same scope or below one that has it. */
export const AlreadyRegisteredError = createError('FST_UPSTREAM_ALREADY_REGISTERED',
  'fastify-upstream is already registered in this scope or a parent scope: register it once (its reply.forward and app.upstreams serve every scope below), and add pools at run time with app.upstreams.add()', 500)
/** A pool or target was added twice. */
export const DuplicateError = createError('FST_UPSTREAM_DUPLICATE', '%s already exists', 500)
/** No target of the pool can take the request right now. */
export const NoTargetError = createError('FST_UPSTREAM_NO_TARGET', 'No available target in upstream pool "%s"', 503)
/** The connection to the target could not be made (refused, unreachable, TLS failure). */
export const ConnectError = createError('FST_UPSTREAM_CONNECT_FAILED', 'Could not connect to the upstream target: %s', 502)
/** The target did not connect or answer in time. */
export const TimeoutError = createError('FST_UPSTREAM_TIMEOUT', 'The upstream target timed out: %s', 504)
/** The target broke the exchange (reset, malformed response). */
export const BadGatewayError = createError('FST_UPSTREAM_BAD_GATEWAY', 'The upstream target failed: %s', 502)
/** The request path would leave the mount's upstream prefix. */
export const BadPathError = createError('FST_UPSTREAM_BAD_PATH', 'The request path is not allowed', 400)
/** Every target that could take the request is at its connection limit (`maxConnections` + `maxPending`). */
export const OverloadedError = createError('FST_UPSTREAM_OVERLOADED', 'Every target of upstream pool "%s" is at its connection limit', 503)
/** A proxied request body grew past the route's `bodyLimit`. */
export const BodyTooLargeError = createError('FST_UPSTREAM_BODY_TOO_LARGE', 'The request body is larger than %s bytes', 413)
/** The client sent nothing of a proxied request body for longer than the route's `bodyTimeout`. */
export const BodyTimeoutError = createError('FST_UPSTREAM_BODY_TIMEOUT', 'The request body stalled for more than %s ms', 408)
/**
 * A header the gateway itself produced (a `set` function, a `rewriteHeaders` or
 * `rewriteRequestHeaders` option) is not a valid header: the gateway's fault, not the
 * target's, so it is neither retried nor counted against any target.
 */
export const BadHeaderError = createError('FST_UPSTREAM_BAD_HEADER', 'Invalid header produced by the gateway: %s', 500)
/**
 * An attempt a hedge cancelled (the other attempt answered first, or the client went away):
 * never a client's answer, it shows on that attempt in `request.upstream`. 499, as NGINX
 * logs a request whose client closed it.
 */
export const HedgeCancelledError = createError('FST_UPSTREAM_HEDGE_CANCELLED', 'Hedged attempt cancelled: %s', 499)

/**
 * A gRPC call's deadline (its `grpc-timeout` header) passed while the gateway waited for
 * the target: the attempt is cancelled and the client gets DEADLINE_EXCEEDED. The
 * client's own limit, not the target's fault: neither retried nor counted against it.
 */
export const DeadlineExceededError = createError('FST_UPSTREAM_DEADLINE_EXCEEDED', 'The call\'s deadline of %s ms passed', 504)
