//! mapq: a message queue server built on memory-mapped, segmented log files.
//!
//! # Crate map
//!
//! A produced record travels up this list from the HTTP layer to the files; a consumed one
//! travels back down; a local tailer reads the files through [`log::tailer`] alone.
//!
//! - [`log`]: the storage engine. The on-disk format (its rustdoc is the normative format
//!   document), segments, indexes, the partition log with its single writer and lock-free
//!   zero-copy readers, recovery, the prefaulter, the disk quota, the tailer and
//!   verification. It knows nothing of HTTP or tokio.
//! - [`broker`]: topics made of partitions, their metadata, the partitioner, consumer group
//!   offsets, the data directory's lock.
//! - [`maintenance`]: the background task: flushes, rolls by age, retention, idle segments.
//! - [`server`]: the axum handlers of the HTTP API, authorization, limits, tracing,
//!   graceful shutdown; [`record_json`] is the JSON form of a record it serves.
//! - [`auth`]: bearer tokens and per-topic permissions.
//! - [`metrics`]: the Prometheus metrics.
//! - [`config`]: settings: embedded defaults, file, environment, flags.
//! - [`cli`], [`client`], [`bench`](mod@bench): the `mapq` command, its HTTP client commands and the
//!   load generator.
//! - [`sys`]: the system calls outside the mapped files (group lookup, the directory lock,
//!   limits, signals); with `log::mmap`, the only place with `unsafe`.

pub mod api;
pub mod app;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod log;
pub mod maintenance;
pub mod server;
pub mod sys;
