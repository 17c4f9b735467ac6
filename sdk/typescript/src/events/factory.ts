/**
 * The event factory (mirrors `factory.rs`): builds complete envelopes from
 * data. It fills what producers should not have to: a UUID v7 `eventId`,
 * the `timestamp`, the type's default classification, a `correlationId`
 * when none is given, and the partition key. Every event it returns has
 * passed `validateEvent`; otherwise it throws `EventValidationError` listing
 * every error.
 */
import { v7 as uuidv7 } from 'uuid';
import { partitionKey } from './partition.js';
import { EMPTY_REGISTRY, type TypeRegistry } from './registry.js';
import type {
  DataClassification,
  EventDataMap,
  EventEnvelope,
  EventMetadata,
  EventType,
  OrderCancelledData,
  OrderCreatedData,
  OrderUpdatedData,
  PortfolioUpdatedData,
  PriceUpdatedData,
  SessionRevokedData,
  SystemErrorData,
  SystemHealthCheckData,
  TradeExecutedData,
  TradeFailedData,
  UserConnectedData,
  UserDisconnectedData,
} from './types.js';
import { validateEvent, type ValidationError } from './validate.js';

export const DEFAULT_EVENT_VERSION = '1.0';
export const DEFAULT_SOURCE = 'moonx-ws';

/** Per-event options, all optional. */
export interface EventOptions {
  /** Owning user; taken from `data.userId` when not given. */
  userId?: string;
  /** Generated (a UUID v7) when not given. */
  correlationId?: string;
  causationId?: string;
  /** Overrides the factory's source service. */
  source?: string;
  /** Defaults to `"1.0"`. */
  eventVersion?: string;
  /** Raises the classification above the type's default (a lower one is refused). */
  classification?: DataClassification;
  /** A chosen id (e.g. for idempotent publishing); a UUID v7 by default. */
  eventId?: string;
}

/** Thrown by the factory for data that would make an invalid event. */
export class EventValidationError extends Error {
  constructor(readonly errors: ValidationError[]) {
    super('invalid event: ' + errors.map((e) => `${e.path || '/'}: ${e.message}`).join('; '));
    this.name = 'EventValidationError';
  }
}

/** Builds events for one producing service. */
export class EventFactory {
  constructor(
    readonly source: string = DEFAULT_SOURCE,
    readonly registry: TypeRegistry = EMPTY_REGISTRY,
  ) {}

  /** Builds a built-in event; `data` is checked against the type. */
  create<T extends EventType>(eventType: T, data: EventDataMap[T], options?: EventOptions): EventEnvelope<T>;
  /** Builds an event of a registered custom type. */
  create(eventType: string, data: Record<string, unknown>, options?: EventOptions): { metadata: EventMetadata; data: Record<string, unknown> };
  create(eventType: string, data: object, options: EventOptions = {}): { metadata: EventMetadata; data: unknown } {
    const dataUser = (data as { userId?: unknown }).userId;
    const userId = options.userId ?? (typeof dataUser === 'string' ? dataUser : undefined);
    const metadata: EventMetadata = {
      eventId: options.eventId ?? uuidv7(),
      eventType,
      eventVersion: options.eventVersion ?? DEFAULT_EVENT_VERSION,
      correlationId: options.correlationId ?? uuidv7(),
      ...(options.causationId !== undefined ? { causationId: options.causationId } : {}),
      timestamp: Date.now(),
      source: options.source ?? this.source,
      ...(userId !== undefined ? { userId } : {}),
      dataClassification: options.classification ?? this.registry.defaultClassification(eventType) ?? 'restricted',
      partition: partitionKey(eventType, userId, this.registry),
    };
    const event = { metadata, data };
    const { errors } = validateEvent(event, { registry: this.registry });
    if (errors.length) throw new EventValidationError(errors);
    return event;
  }
}

const defaultFactory = new EventFactory();

/** Builds an event with the default factory (source `moonx-ws`); pass `options.source` for yours. */
export function createEvent<T extends EventType>(eventType: T, data: EventDataMap[T], options?: EventOptions): EventEnvelope<T> {
  return defaultFactory.create(eventType, data, options);
}

export const createPriceUpdatedEvent = (data: PriceUpdatedData, options?: EventOptions) => createEvent('price.updated', data, options);
export const createOrderCreatedEvent = (data: OrderCreatedData, options?: EventOptions) => createEvent('order.created', data, options);
export const createOrderUpdatedEvent = (data: OrderUpdatedData, options?: EventOptions) => createEvent('order.updated', data, options);
export const createOrderCancelledEvent = (data: OrderCancelledData, options?: EventOptions) => createEvent('order.cancelled', data, options);
export const createPortfolioUpdatedEvent = (data: PortfolioUpdatedData, options?: EventOptions) => createEvent('portfolio.updated', data, options);
export const createTradeExecutedEvent = (data: TradeExecutedData, options?: EventOptions) => createEvent('trade.executed', data, options);
export const createTradeFailedEvent = (data: TradeFailedData, options?: EventOptions) => createEvent('trade.failed', data, options);
export const createUserConnectedEvent = (data: UserConnectedData, options?: EventOptions) => createEvent('user.connected', data, options);
export const createUserDisconnectedEvent = (data: UserDisconnectedData, options?: EventOptions) => createEvent('user.disconnected', data, options);
export const createSessionRevokedEvent = (data: SessionRevokedData, options?: EventOptions) => createEvent('session.revoked', data, options);
export const createSystemHealthCheckEvent = (data: SystemHealthCheckData, options?: EventOptions) => createEvent('system.health_check', data, options);
export const createSystemErrorEvent = (data: SystemErrorData, options?: EventOptions) => createEvent('system.error', data, options);
