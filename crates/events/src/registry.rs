//! Custom event types registered at run time.
//!
//! A producer or the gateway registers a type name with its default
//! classification and its partition rule; validation then accepts it (its
//! `data` must be a JSON object) and the partition-key strategy applies the rule.

use crate::{DataClassification, EventType};
use std::collections::HashMap;

/// How a custom type chooses its Kafka partition key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionRule {
    /// `metadata.userId` (per-user order), falling back to the type name.
    User,
    /// One fixed key: all events of the type in one ordered partition.
    Fixed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomType {
    pub name: String,
    pub default_classification: DataClassification,
    pub partition_rule: PartitionRule,
}

impl CustomType {
    /// A type whose events of owner-bearing classifications are keyed by user,
    /// and all others by the type name.
    pub fn new(name: impl Into<String>, default_classification: DataClassification) -> Self {
        let name = name.into();
        let partition_rule = if default_classification.requires_owner() {
            PartitionRule::User
        } else {
            PartitionRule::Fixed(name.clone())
        };
        CustomType {
            name,
            default_classification,
            partition_rule,
        }
    }

    pub fn with_partition_rule(mut self, rule: PartitionRule) -> Self {
        self.partition_rule = rule;
        self
    }
}

#[derive(Debug, Clone, Default)]
pub struct TypeRegistry {
    custom: HashMap<String, CustomType>,
}

/// Why a type could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{0:?} is a built-in event type")]
    BuiltIn(String),
    #[error("{0:?} is not a valid event type name (lowercase `domain.action`, [a-z0-9_.-])")]
    BadName(String),
}

impl TypeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, custom: CustomType) -> Result<(), RegistryError> {
        if EventType::parse(&custom.name).is_built_in() {
            return Err(RegistryError::BuiltIn(custom.name));
        }
        if !is_valid_type_name(&custom.name) {
            return Err(RegistryError::BadName(custom.name));
        }
        self.custom.insert(custom.name.clone(), custom);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&CustomType> {
        self.custom.get(name)
    }

    pub fn custom_types(&self) -> impl Iterator<Item = &CustomType> {
        self.custom.values()
    }

    /// The default classification of a built-in or registered type.
    pub fn default_classification(&self, t: &EventType) -> Option<DataClassification> {
        match t {
            EventType::Custom(name) => self.get(name).map(|c| c.default_classification),
            built_in => built_in.default_classification(),
        }
    }

    pub fn is_known(&self, t: &EventType) -> bool {
        self.default_classification(t).is_some()
    }
}

fn is_valid_type_name(name: &str) -> bool {
    name.contains('.')
        && !name.starts_with('.')
        && !name.ends_with('.')
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_custom_and_refuses_built_in() {
        let mut r = TypeRegistry::new();
        r.register(CustomType::new("reward.granted", DataClassification::Confidential))
            .unwrap();
        assert!(r.is_known(&EventType::parse("reward.granted")));
        assert_eq!(
            r.register(CustomType::new("price.updated", DataClassification::Public)),
            Err(RegistryError::BuiltIn("price.updated".into()))
        );
        assert!(r.register(CustomType::new("Bad Name", DataClassification::Public)).is_err());
    }
}
