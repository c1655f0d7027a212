//! Connections: the listener with its limits, HTTP/1.1 serving with its timeouts, and TLS.

pub mod http;
pub mod listener;
pub mod tls;
