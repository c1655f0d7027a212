//! mapq: a message queue server built on memory-mapped, segmented log files.
//!
//! # Crate map
//!
//! Data flows down this list when producing and back up it when consuming:
//!
//! - [`log`]: the storage engine. The on-disk format (its rustdoc is the normative format
//!   document), segments, indexes, the partition log with its single writer and lock-free
//!   zero-copy readers, crash recovery and verification. It knows nothing of HTTP or tokio.
//! - [`cli`]: the `mapq` command line (`verify`; the server arrives with the HTTP layer).
//!
//! A local process that wants to read the log without the server uses [`log`] directly, or
//! implements the format document in any language.

pub mod auth;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod log;
pub mod maintenance;
pub mod metrics;
pub mod record_json;
pub mod server;
