//! Sources: where records come from. The Kafka consumer (`kafka`) is the
//! production source, the embedded bus (`embedded`) the one of `moonx-ws
//! dev`; each hands every record to the pipeline in order
//! (`Pipeline::dispose`, which also writes any dead letter) and learns a
//! disposition (done, or hold this partition) before it moves its position. `publish` writes into either;
//! `revocations` reads the revocations still in force back at start-up.

pub mod embedded;
pub mod kafka;
pub mod kafka_history;
pub mod publish;
pub mod revocations;

/// The pipeline's input contract, re-exported for the sources' callers.
pub use crate::pipeline::Record;
