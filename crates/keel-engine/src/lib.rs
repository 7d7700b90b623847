//! keel's engine: topics, partitions, publishing with dedupe, reading.

pub mod event;
