/**
 * The partition-key strategy (mirrors `partition.rs`): the Kafka key an event
 * is produced with, which decides what stays ordered end to end.
 *
 * | event types | key |
 * |---|---|
 * | `order.*`, `portfolio.updated`, `trade.*`, `user.*`, `session.revoked` | `userId` |
 * | `price.updated` | `"prices"` |
 * | `system.*` | `"system"` |
 * | registered custom types | their rule (default: `userId` for owned data, else the type name) |
 * | anything else | `userId` if present, else the type name |
 *
 * A user-scoped event without a userId falls back to the type name, so the
 * function is total.
 */
import { EMPTY_REGISTRY, type TypeRegistry } from './registry.js';

export const PRICES_KEY = 'prices';
export const SYSTEM_KEY = 'system';

export function partitionKey(eventType: string, userId?: string | null, registry: TypeRegistry = EMPTY_REGISTRY): string {
  const byUser = () => (typeof userId === 'string' ? userId : eventType);
  switch (eventType) {
    case 'price.updated':
      return PRICES_KEY;
    case 'system.health_check':
    case 'system.error':
      return SYSTEM_KEY;
    case 'order.created':
    case 'order.updated':
    case 'order.cancelled':
    case 'portfolio.updated':
    case 'trade.executed':
    case 'trade.failed':
    case 'user.connected':
    case 'user.disconnected':
    case 'session.revoked':
      return byUser();
  }
  const rule = registry.get(eventType)?.partitionRule;
  return rule?.kind === 'fixed' ? rule.key : byUser();
}
