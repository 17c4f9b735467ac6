/**
 * The event contract's types (SPEC §3): the envelope, the 12 built-in event
 * types with their `data`, and the classifications. Field names and value
 * sets mirror `crates/events/src/payload.rs` and `validate.rs`.
 */

export const MAIN_TOPIC = 'moonx.ws.events';
export const DLQ_TOPIC = 'moonx.ws.events.dlq';
/** The pre-envelope topics, in the order price, order, portfolio, trade. */
export const LEGACY_TOPICS = ['moonx.price.updates', 'moonx.order.updates', 'moonx.portfolio.updates', 'moonx.trade.updates'] as const;

/** The 12 built-in types, in the order of the specification. */
export const EVENT_TYPES = [
  'price.updated',
  'order.created',
  'order.updated',
  'order.cancelled',
  'portfolio.updated',
  'trade.executed',
  'trade.failed',
  'user.connected',
  'user.disconnected',
  'session.revoked',
  'system.health_check',
  'system.error',
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** Ordered from least to most sensitive: a producer may raise, never lower. */
export const DATA_CLASSIFICATIONS = ['public', 'internal', 'confidential', 'restricted'] as const;
export type DataClassification = (typeof DATA_CLASSIFICATIONS)[number];

export const ORDER_TYPES = ['market', 'limit', 'stop_loss', 'take_profit'] as const;
export type OrderType = (typeof ORDER_TYPES)[number];
export const ORDER_STATUSES = ['pending', 'open', 'partially_filled', 'filled', 'cancelled', 'failed', 'expired'] as const;
export type OrderStatus = (typeof ORDER_STATUSES)[number];
export const HEALTH_STATUSES = ['healthy', 'degraded', 'unhealthy'] as const;
export type HealthStatus = (typeof HEALTH_STATUSES)[number];
export const SEVERITIES = ['warning', 'error', 'critical'] as const;
export type Severity = (typeof SEVERITIES)[number];

/** A decimal amount as a string (`"3000.00"`, `"-0.05"`): no precision lost in JSON. */
export type Decimal = string;
/** A non-negative integer (`bigint` for values beyond 2^53). */
export type UInt = number | bigint;

export interface EventMetadata {
  eventId: string;
  eventType: EventType | (string & {});
  eventVersion: string;
  correlationId: string;
  causationId?: string;
  /** Milliseconds since the Unix epoch. */
  timestamp: number;
  source: string;
  userId?: string;
  dataClassification: DataClassification;
  /** The Kafka record key (see `partitionKey`). */
  partition: string;
  /** The legacy topic a migrated message came from. */
  migratedFrom?: string;
}

export interface PriceUpdatedData {
  token: string;
  chainId: UInt;
  price: Decimal;
  priceUsd: Decimal;
  change24h: Decimal;
  volume24h: Decimal;
}
export interface OrderCreatedData {
  orderId: string;
  userId: string;
  tokenIn: string;
  tokenOut: string;
  amountIn: Decimal;
  amountOutExpected: Decimal;
  chainId: UInt;
  orderType: OrderType;
  status: OrderStatus;
  limitPrice?: Decimal;
}
export interface OrderUpdatedData {
  orderId: string;
  userId: string;
  status: OrderStatus;
  previousStatus?: OrderStatus;
  filledAmount?: Decimal;
  amountOut?: Decimal;
  txHash?: string;
}
export interface OrderCancelledData {
  orderId: string;
  userId: string;
  reason?: string;
  cancelledBy?: string;
}
export interface Holding {
  token: string;
  chainId: UInt;
  balance: Decimal;
  valueUsd: Decimal;
}
export interface PortfolioUpdatedData {
  userId: string;
  totalValueUsd: Decimal;
  holdings: Holding[];
  change24h?: Decimal;
}
export interface TradeExecutedData {
  tradeId: string;
  orderId: string;
  userId: string;
  tokenIn: string;
  tokenOut: string;
  amountIn: Decimal;
  amountOut: Decimal;
  price: Decimal;
  chainId: UInt;
  txHash: string;
  fee?: Decimal;
}
export interface TradeFailedData {
  orderId: string;
  userId: string;
  tokenIn: string;
  tokenOut: string;
  amountIn: Decimal;
  chainId: UInt;
  reason: string;
  tradeId?: string;
  errorCode?: string;
  txHash?: string;
}
export interface UserConnectedData {
  userId: string;
  connectionId: string;
  instanceId: string;
}
export interface UserDisconnectedData {
  userId: string;
  connectionId: string;
  instanceId: string;
  reason?: string;
  durationMs?: UInt;
}
/** `session.revoked`: an operator revoked every session of a user (`POST /api/sessions/revoke`). */
export interface SessionRevokedData {
  userId: string;
  /** Milliseconds since the epoch: tokens issued at or before it (and tokens without `iat`) are refused. */
  revokedAt: UInt;
  reason?: string;
  revokedBy?: string;
  /** The gateway instance that took the request. */
  instanceId?: string;
}
export interface SystemHealthCheckData {
  service: string;
  status: HealthStatus;
  uptimeSeconds?: UInt;
  details?: Record<string, unknown>;
}
export interface SystemErrorData {
  service: string;
  errorCode: string;
  message: string;
  severity: Severity;
  details?: Record<string, unknown>;
}

/** The `data` of each built-in type. */
export interface EventDataMap {
  'price.updated': PriceUpdatedData;
  'order.created': OrderCreatedData;
  'order.updated': OrderUpdatedData;
  'order.cancelled': OrderCancelledData;
  'portfolio.updated': PortfolioUpdatedData;
  'trade.executed': TradeExecutedData;
  'trade.failed': TradeFailedData;
  'user.connected': UserConnectedData;
  'user.disconnected': UserDisconnectedData;
  'session.revoked': SessionRevokedData;
  'system.health_check': SystemHealthCheckData;
  'system.error': SystemErrorData;
}

/** An envelope of a built-in type `T`: `metadata.eventType` narrows `data`. */
export interface EventEnvelope<T extends EventType = EventType> {
  metadata: EventMetadata & { eventType: T };
  data: EventDataMap[T];
}

/** Any built-in event, discriminated by `metadata.eventType`. */
export type AnyEvent = { [T in EventType]: EventEnvelope<T> }[EventType];

/** The default (and minimum) classification of each built-in type (SPEC §3). */
export const DEFAULT_CLASSIFICATION: Readonly<Record<EventType, DataClassification>> = {
  'price.updated': 'public',
  'order.created': 'confidential',
  'order.updated': 'confidential',
  'order.cancelled': 'confidential',
  'portfolio.updated': 'restricted',
  'trade.executed': 'confidential',
  'trade.failed': 'confidential',
  'user.connected': 'internal',
  'user.disconnected': 'internal',
  'session.revoked': 'internal',
  'system.health_check': 'internal',
  'system.error': 'internal',
};

export function isEventType(name: string): name is EventType {
  return (EVENT_TYPES as readonly string[]).includes(name);
}

export function isDataClassification(name: string): name is DataClassification {
  return (DATA_CLASSIFICATIONS as readonly string[]).includes(name);
}

/** The rank of a classification (public 0 … restricted 3). */
export function classificationRank(c: DataClassification): number {
  return DATA_CLASSIFICATIONS.indexOf(c);
}

/** Confidential and restricted events belong to one user and must name them. */
export function requiresOwner(c: DataClassification): boolean {
  return classificationRank(c) >= classificationRank('confidential');
}
