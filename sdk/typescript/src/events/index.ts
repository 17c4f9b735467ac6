/**
 * `@moonx/ws-sdk/events`: the event contract for producers. Types of the
 * envelope and the 12 event types, the factory and its helpers, validation
 * with the Rust model's error paths and codes, the partition-key strategy,
 * and legacy migration with the same deterministic ids.
 */
export * from './types.js';
export * from './registry.js';
export * from './partition.js';
export * from './validate.js';
export * from './factory.js';
export * from './legacy.js';
export * from './decode.js';
export { JsonNumber, JsonSyntaxError, parseJsonTree, toJsonTree, fromJsonTree, canonicalJson, stringifyJson, type JsonTree, type JsonObject } from './json.js';
