/** Typed errors of the client: the server's error codes, and the client's own. */
import type { ServerErrorCode } from './protocol.js';

/** An `{"type":"error"}` frame from the server. */
export class MoonxServerError extends Error {
  constructor(
    readonly code: ServerErrorCode,
    message: string,
    /** The `id` of the request it answers, if any. */
    readonly requestId?: string | number,
  ) {
    super(`${code}: ${message}`);
    this.name = 'MoonxServerError';
  }
}

export type ClientErrorCode =
  /** A request got no reply in time. */
  | 'timeout'
  /** The connection closed before the reply came. */
  | 'disconnected'
  /** `close()` was called. */
  | 'closed'
  /** A frame that is not protocol v1 JSON. */
  | 'bad_frame'
  /** A subscription handler threw. */
  | 'handler_failed'
  /** The token callback failed. */
  | 'token_refresh_failed'
  /**
   * The server closed with 4001: an operator revoked the user's sessions.
   * The token is refused from now on; the user must sign in again.
   */
  | 'session_revoked';

export class MoonxClientError extends Error {
  constructor(
    readonly code: ClientErrorCode,
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'MoonxClientError';
  }
}
