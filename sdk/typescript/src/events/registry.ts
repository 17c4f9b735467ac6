/**
 * Custom event types registered at run time (mirrors `registry.rs`): a type
 * name with its default classification and partition rule. Validation
 * accepts a registered type (its `data` may be any object).
 */
import { DEFAULT_CLASSIFICATION, isEventType, requiresOwner, type DataClassification } from './types.js';

/** `{kind:'user'}`: keyed by userId (per-user order); `{kind:'fixed', key}`: one key for all. */
export type PartitionRule = { kind: 'user' } | { kind: 'fixed'; key: string };

export interface CustomType {
  name: string;
  defaultClassification: DataClassification;
  /** Defaults to `user` for owner-bearing classifications, else the fixed type name. */
  partitionRule?: PartitionRule;
}

export class TypeRegistry {
  private readonly custom = new Map<string, Required<CustomType>>();

  /** Registers a custom type; throws for a built-in or malformed name. */
  register(t: CustomType): this {
    if (isEventType(t.name)) throw new Error(`${JSON.stringify(t.name)} is a built-in event type`);
    if (!isValidTypeName(t.name)) {
      throw new Error(`${JSON.stringify(t.name)} is not a valid event type name (lowercase \`domain.action\`, [a-z0-9_.-])`);
    }
    const partitionRule: PartitionRule =
      t.partitionRule ?? (requiresOwner(t.defaultClassification) ? { kind: 'user' } : { kind: 'fixed', key: t.name });
    this.custom.set(t.name, { name: t.name, defaultClassification: t.defaultClassification, partitionRule });
    return this;
  }

  get(name: string): Required<CustomType> | undefined {
    return this.custom.get(name);
  }

  /** The default classification of a built-in or registered type. */
  defaultClassification(eventType: string): DataClassification | undefined {
    return isEventType(eventType) ? DEFAULT_CLASSIFICATION[eventType] : this.custom.get(eventType)?.defaultClassification;
  }

  isKnown(eventType: string): boolean {
    return this.defaultClassification(eventType) !== undefined;
  }
}

function isValidTypeName(name: string): boolean {
  return name.includes('.') && !name.startsWith('.') && !name.endsWith('.') && name.length <= 128 && /^[a-z0-9_.-]+$/.test(name);
}

/** The registry with no custom types. */
export const EMPTY_REGISTRY: TypeRegistry = new TypeRegistry();
