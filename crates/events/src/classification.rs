//! Data classification: how sensitive an event is, and therefore who may see it.
//!
//! The order matters (`Public < Internal < Confidential < Restricted`): a
//! producer may raise an event above its type's default, never lower it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataClassification {
    /// Anyone, anonymous clients included (price feeds).
    Public,
    /// Operators only (system and presence events).
    Internal,
    /// The owning user only (orders, trades).
    Confidential,
    /// The owning user only, most sensitive (portfolio).
    Restricted,
}

impl DataClassification {
    pub const ALL: [DataClassification; 4] = [
        DataClassification::Public,
        DataClassification::Internal,
        DataClassification::Confidential,
        DataClassification::Restricted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataClassification::Public => "public",
            DataClassification::Internal => "internal",
            DataClassification::Confidential => "confidential",
            DataClassification::Restricted => "restricted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Confidential and restricted events belong to one user and must name them.
    pub fn requires_owner(self) -> bool {
        self >= DataClassification::Confidential
    }
}

impl std::fmt::Display for DataClassification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
