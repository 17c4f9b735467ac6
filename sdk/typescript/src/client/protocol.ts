/**
 * Protocol v1 (+ v1.1 resume) of the moonx-ws WebSocket API, as types:
 * the channels, the error codes and close codes, and every client and
 * server message (`crates/gateway/src/deliver/protocol.rs`, SPEC §6, §6.1).
 */
import type { AnyEvent, EventEnvelope } from '../events/types.js';

export const CHANNELS = ['prices', 'orders', 'portfolio', 'trades', 'system'] as const;
export type Channel = (typeof CHANNELS)[number];

/** Channels whose events carry `pos` and can be resumed (prices has its snapshot instead). */
export const RESUMABLE_CHANNELS: readonly Channel[] = ['orders', 'portfolio', 'trades', 'system'];

/** The event types each channel carries (a raised classification may route others to a user channel). */
export interface ChannelEventMap {
  prices: EventEnvelope<'price.updated'>;
  orders: EventEnvelope<'order.created'> | EventEnvelope<'order.updated'> | EventEnvelope<'order.cancelled'>;
  portfolio: EventEnvelope<'portfolio.updated'>;
  trades: EventEnvelope<'trade.executed'> | EventEnvelope<'trade.failed'>;
  system: EventEnvelope<'user.connected'> | EventEnvelope<'user.disconnected'> | EventEnvelope<'session.revoked'> | EventEnvelope<'system.health_check'> | EventEnvelope<'system.error'>;
}

/** Stable codes of `{"type":"error"}` frames. */
export const SERVER_ERROR_CODES = [
  'bad_request',
  'unknown_channel',
  'unauthorized',
  'forbidden',
  'rate_limited',
  'slow_consumer',
  'limit_exceeded',
] as const;
export type ServerErrorCode = (typeof SERVER_ERROR_CODES)[number];

/** WebSocket close codes the server uses. */
export const CLOSE_CODES = {
  /** Server shutting down (or closing the connection itself). */
  GOING_AWAY: 1001,
  /** The client broke the WebSocket protocol (RFC 6455). */
  PROTOCOL_ERROR: 1002,
  /** A text frame that is not valid UTF-8 (RFC 6455). */
  INVALID_PAYLOAD: 1007,
  /** Persistent misbehaviour (too many invalid messages in a row). */
  POLICY_VIOLATION: 1008,
  /** A frame above the hard size cap. */
  MESSAGE_TOO_BIG: 1009,
  /** The client could not keep up: reconnect and resume. */
  SLOW_CONSUMER: 3008,
  /** An operator revoked the user's sessions: the same token is refused; sign in again (a new token works). */
  SESSION_REVOKED: 4001,
} as const;

/** The message types a client sends. */
export const CLIENT_MESSAGE_TYPES = ['subscribe', 'unsubscribe', 'auth', 'ping'] as const;
/** The message types the server sends. */
export const SERVER_MESSAGE_TYPES = ['subscribed', 'unsubscribed', 'authenticated', 'event', 'error', 'pong'] as const;

export type RequestId = string | number;

export type ClientMessage =
  | { type: 'subscribe'; channel: Channel; tokens?: string[]; since?: string; id?: RequestId }
  | { type: 'unsubscribe'; channel: Channel; id?: RequestId }
  | { type: 'auth'; token: string; id?: RequestId }
  | { type: 'ping'; id?: RequestId };

export type ServerMessage =
  | { type: 'subscribed'; channel: Channel; tokens?: string[]; recovered?: boolean; missed?: number; id?: RequestId }
  | { type: 'unsubscribed'; channel: Channel; id?: RequestId }
  | { type: 'authenticated'; userId: string; admin: boolean; expiresAt: number; id?: RequestId }
  | { type: 'event'; channel: Channel; event: AnyEvent; pos?: string; snapshot?: boolean }
  | { type: 'error'; code: ServerErrorCode; message: string; id?: RequestId }
  | { type: 'pong'; id?: RequestId };
