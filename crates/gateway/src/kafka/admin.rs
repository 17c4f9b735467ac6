//! The topic layout (SPEC section 4) and `create-topics`: creates what is
//! missing and reports existing topics, with any drift from the layout.

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

/// One topic as the gateway wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub configs: Vec<(&'static str, String)>,
}

/// `max.message.bytes` of the main topic: the largest record a producer may write.
pub const MAIN_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// Room for what a dead letter adds to the original record: the bounded
/// `dlq.*` headers (`pipeline::dead_letter`, well under 32 KiB) and batch framing.
pub const DLQ_HEADER_HEADROOM_BYTES: usize = 64 * 1024;
/// `max.message.bytes` of the DLQ topic, and the DLQ producer's
/// `message.max.bytes`: any record the main topic accepts fits as a dead letter.
pub const DLQ_MAX_MESSAGE_BYTES: usize = MAIN_MAX_MESSAGE_BYTES + DLQ_HEADER_HEADROOM_BYTES;

/// Partitions of each legacy topic (documented in the README).
pub const LEGACY_PARTITIONS: i32 = 3;

/// Main topic, DLQ, and the four legacy topics.
pub fn topic_layout(main_topic: &str, dlq_topic: &str) -> Vec<TopicSpec> {
    let mut specs = vec![
        TopicSpec {
            name: main_topic.into(),
            partitions: 6,
            configs: vec![
                ("cleanup.policy", "delete".into()),
                ("retention.ms", "604800000".into()),
                ("compression.type", "gzip".into()),
                ("max.message.bytes", MAIN_MAX_MESSAGE_BYTES.to_string()),
            ],
        },
        TopicSpec {
            name: dlq_topic.into(),
            partitions: 2,
            configs: vec![
                ("retention.ms", "2592000000".into()),
                ("max.message.bytes", DLQ_MAX_MESSAGE_BYTES.to_string()),
            ],
        },
    ];
    specs.extend(moonx_events::LEGACY_TOPICS.iter().map(|t| TopicSpec {
        name: (*t).into(),
        partitions: LEGACY_PARTITIONS,
        configs: vec![("cleanup.policy", "delete".into()), ("retention.ms", "604800000".into())],
    }));
    specs
}

/// What `create-topics` did or found for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    /// Exists and matches the layout.
    Unchanged,
    /// Exists but differs; each entry says how: `fixed` what `--fix-drift`
    /// repaired, `unfixed` what still differs (not asked to fix, or that
    /// Kafka cannot change, like removing partitions).
    Drift { fixed: Vec<String>, unfixed: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct TopicReport {
    pub spec: TopicSpec,
    pub outcome: TopicOutcome,
}

impl std::fmt::Display for TopicReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.spec;
        match &self.outcome {
            TopicOutcome::Created => write!(f, "created   {} (partitions={})", s.name, s.partitions),
            TopicOutcome::Unchanged => write!(f, "exists    {} (matches the layout)", s.name),
            TopicOutcome::Drift { fixed, unfixed } => {
                if !fixed.is_empty() {
                    write!(f, "fixed      {}: {}", s.name, fixed.join("; "))?;
                    if !unfixed.is_empty() {
                        writeln!(f)?;
                    }
                }
                if !unfixed.is_empty() {
                    write!(f, "DRIFT      {}: {}", s.name, unfixed.join("; "))?;
                }
                Ok(())
            }
        }
    }
}

pub struct Admin {
    client: AdminClient<DefaultClientContext>,
    timeout: Duration,
}

impl Admin {
    pub fn connect(brokers: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = super::client_config(brokers).create()?;
        Ok(Admin { client, timeout })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new().operation_timeout(Some(self.timeout)).request_timeout(Some(self.timeout))
    }

    /// Partition count per existing topic name.
    pub fn existing_topics(&self) -> anyhow::Result<std::collections::HashMap<String, i32>> {
        let md = self.client.inner().fetch_metadata(None, self.timeout)?;
        Ok(md.topics().iter().filter(|t| t.error().is_none()).map(|t| (t.name().to_owned(), t.partitions().len() as i32)).collect())
    }

    /// The current value of each of `keys` for a topic.
    pub async fn topic_configs(&self, topic: &str) -> anyhow::Result<std::collections::HashMap<String, String>> {
        let res = self.client.describe_configs(&[ResourceSpecifier::Topic(topic)], &self.options()).await?;
        let resource = res.into_iter().next().ok_or_else(|| anyhow::anyhow!("no config returned for {topic}"))?;
        let resource = resource.map_err(|e| anyhow::anyhow!("describe {topic}: {e}"))?;
        Ok(resource.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect())
    }

    /// Creates missing topics, reports (and with `fix_drift` repairs) the rest.
    pub async fn apply_layout(
        &self,
        specs: &[TopicSpec],
        replication: i32,
        fix_drift: bool,
    ) -> anyhow::Result<Vec<TopicReport>> {
        let existing = self.existing_topics()?;
        let mut reports = Vec::new();
        for spec in specs {
            let outcome = match existing.get(&spec.name) {
                None => self.create(spec, replication).await?,
                Some(&partitions) => self.check(spec, partitions, fix_drift).await?,
            };
            reports.push(TopicReport { spec: spec.clone(), outcome });
        }
        Ok(reports)
    }

    async fn create(&self, spec: &TopicSpec, replication: i32) -> anyhow::Result<TopicOutcome> {
        let mut topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(replication));
        for (k, v) in &spec.configs {
            topic = topic.set(k, v);
        }
        let results = self.client.create_topics(&[topic], &self.options()).await?;
        match results.into_iter().next() {
            Some(Ok(_)) => Ok(TopicOutcome::Created),
            // Created by someone else in between: compare like any existing topic.
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
                let partitions = self.existing_topics()?.get(&spec.name).copied().unwrap_or(spec.partitions);
                self.check(spec, partitions, false).await
            }
            Some(Err((name, code))) => anyhow::bail!("creating {name} failed: {code}"),
            None => anyhow::bail!("the broker returned no result for {}", spec.name),
        }
    }

    /// The topic's dynamic (per-topic) overrides: what an AlterConfigs call
    /// must send again so as not to reset them.
    pub async fn topic_overrides(&self, topic: &str) -> anyhow::Result<Vec<(String, String)>> {
        let res = self.client.describe_configs(&[ResourceSpecifier::Topic(topic)], &self.options()).await?;
        let resource = res.into_iter().next().ok_or_else(|| anyhow::anyhow!("no config returned for {topic}"))?;
        let resource = resource.map_err(|e| anyhow::anyhow!("describe {topic}: {e}"))?;
        Ok(resource
            .entries
            .into_iter()
            .filter(|e| e.source == ConfigSource::DynamicTopic && !e.is_sensitive)
            .filter_map(|e| Some((e.name, e.value?)))
            .collect())
    }

    async fn check(&self, spec: &TopicSpec, partitions: i32, fix_drift: bool) -> anyhow::Result<TopicOutcome> {
        let current = self.topic_configs(&spec.name).await?;
        let mut differences = Vec::new();
        let mut unfixable = Vec::new();
        if partitions != spec.partitions {
            let d = format!("partitions is {partitions} (expected {})", spec.partitions);
            if partitions > spec.partitions {
                unfixable.push(format!("{d}: cannot fix, Kafka cannot remove partitions"));
            } else {
                differences.push(d);
            }
        }
        let config_drift: Vec<_> = spec
            .configs
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(v))
            .collect();
        for (k, v) in &config_drift {
            let now = current.get(*k).map(String::as_str).unwrap_or("unset");
            differences.push(format!("{k} is {now} (expected {v})"));
        }
        if differences.is_empty() && unfixable.is_empty() {
            return Ok(TopicOutcome::Unchanged);
        }
        if fix_drift {
            if !config_drift.is_empty() {
                // rdkafka 0.39 has no IncrementalAlterConfigs, and AlterConfigs
                // replaces the topic's whole set of overrides: send the
                // existing overrides again, with the layout's on top.
                let mut merged: Vec<(String, String)> = self
                    .topic_overrides(&spec.name)
                    .await?
                    .into_iter()
                    .filter(|(k, _)| !spec.configs.iter().any(|(name, _)| name == k))
                    .collect();
                merged.extend(spec.configs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
                let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&spec.name));
                for (k, v) in &merged {
                    alter = alter.set(k, v);
                }
                for r in self.client.alter_configs(&[alter], &self.options()).await? {
                    r.map_err(|(_, code)| anyhow::anyhow!("altering {}: {code}", spec.name))?;
                }
            }
            // Kafka can add partitions but never remove them.
            if partitions < spec.partitions {
                let np = NewPartitions::new(&spec.name, spec.partitions as usize);
                for r in self.client.create_partitions(&[np], &self.options()).await? {
                    r.map_err(|(_, code)| anyhow::anyhow!("adding partitions to {}: {code}", spec.name))?;
                }
            }
        }
        Ok(if fix_drift {
            TopicOutcome::Drift { fixed: differences, unfixed: unfixable }
        } else {
            TopicOutcome::Drift { fixed: Vec::new(), unfixed: [differences, unfixable].concat() }
        })
    }
}
