/**
 * `@moonx/ws-sdk/client`: the WebSocket client for browsers and Node.js
 * (the platform `WebSocket` where there is one, else the `ws` package).
 */
export * from './protocol.js';
export * from './errors.js';
export * from './client.js';
export type { AnyEvent, EventEnvelope, EventType, EventMetadata } from '../events/types.js';
