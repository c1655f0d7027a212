//! mapq: a message queue server built on memory-mapped, segmented log files.
//!
//! # Data flow
//!
//! ```text
//!  produce:  HTTP request
//!              -> server::routes::produce::produce   parse, authorize (server::access)
//!              -> broker::Broker::append             topic, partitions, all or nothing
//!              -> log::PartitionLog (AppendGuard)    writer lock, room, roll
//!              -> segment::SegmentWriter::append     frames above the committed end,
//!                                                    published by one Release store
//!              <- api::records::ProduceResponse      (durability=fsync: after
//!                                                    Broker::wait_appends_durable)
//!  consume:  HTTP request
//!              -> server::routes::consume::consume
//!              -> broker::Partition::read_or_wait    long-poll without a thread
//!              -> log::PartitionLog::read            segment snapshot, no lock
//!              -> segment reader (Mapped)            zero-copy Bytes of the mapping
//!              <- frames or api::records::ConsumeResponse
//!  tailer:   another process -> log::tailer::Tailer -> the same files, read-only
//! ```
//!
//! # Crate map
//!
//! The server, from the wire down:
//! - [`app`]: the server process: claim the data directory, listen, recover, serve, stop.
//! - [`server`]: the HTTP layer: the router with each route's declared access, middleware,
//!   the handlers ([`server::routes`]), metrics, transport (listener, HTTP/1.1, TLS).
//! - [`api`]: the wire vocabulary: request and response bodies, the error codes.
//! - [`broker`]: topics made of partitions, appends across partitions, reads that wait,
//!   durability waits, consumer group offsets, the data directory's lock, a stats snapshot.
//! - [`maintenance`]: the background task: flushes, rolls by age, retention, idle segments.
//! - [`log`]: the storage engine. The on-disk format (its rustdoc, `src/log/FORMAT.md`, is
//!   the normative format document), segments, indexes, the partition log with its single
//!   writer and lock-free zero-copy readers, recovery, the file worker, the disk quota, the
//!   tailer and verification. It knows nothing of HTTP or tokio.
//!
//! - [`cluster`]: several nodes coordinated by etcd: membership, the controller, partition
//!   leaders and in-sync sets, followers fetching from leaders, acks=all.
//!
//! Beside it:
//! - [`auth`]: bearer tokens and per-topic permissions; [`config`]: settings (embedded
//!   defaults, file, environment, flags).
//! - [`cli`]: the `mapq` command; [`client`]: its HTTP client commands and the load
//!   generator, over one client that carries tokens and certificates.
//! - `log::sys` (also [`sys`]): the system calls outside the mapped files (group lookup,
//!   the directory lock, limits, signals); with `log::mmap`, the only place with `unsafe`.

pub mod api;
pub mod app;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod kafka;
pub mod log;
pub mod maintenance;
pub mod server;

/// The system calls outside the mapped files: see [`log::sys`].
pub use log::sys;
