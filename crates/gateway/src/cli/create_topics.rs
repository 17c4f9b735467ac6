//! `moonx-ws create-topics`: the topic layout of SPEC section 4, idempotent.

use crate::config::KafkaArgs;
use crate::kafka::admin::{topic_layout, Admin, TopicOutcome};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Replication factor of created topics (1 for a single broker).
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: i32,
    /// Apply the layout's configs to existing topics that drifted, keeping
    /// their other overrides (and add missing partitions; Kafka cannot remove
    /// any: extra partitions are reported as DRIFT, not fixed).
    #[arg(long)]
    pub fix_drift: bool,
    /// Exit with status 3 when an existing topic drifted (for CI checks).
    #[arg(long)]
    pub fail_on_drift: bool,
    /// How long to wait for the broker.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let admin = Admin::connect(&args.kafka.brokers, Duration::from_secs(args.timeout_secs))?;
    let specs = topic_layout(&args.kafka.main_topic, &args.kafka.dlq_topic);
    let reports = admin
        .apply_layout(&specs, args.replication_factor, args.fix_drift)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (is Kafka reachable at KAFKA_BROKERS={}?)", args.kafka.brokers))?;
    let mut drift = false;
    for r in &reports {
        println!("{r}");
        drift |= matches!(&r.outcome, TopicOutcome::Drift { unfixed, .. } if !unfixed.is_empty());
    }
    if drift && !args.fix_drift {
        eprintln!("some topics differ from the layout; `--fix-drift` applies it");
    } else if drift {
        eprintln!("some differences cannot be fixed (see DRIFT above)");
    }
    Ok(if drift && args.fail_on_drift { ExitCode::from(3) } else { ExitCode::SUCCESS })
}
