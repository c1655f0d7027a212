//! The wire vocabulary of the HTTP API: request and response bodies and the error codes,
//! shared by the server's handlers, the client commands and the OpenAPI document. `API.md`
//! is the contract these types implement.

pub mod cluster;
pub mod error;
pub mod groups;
pub mod records;
pub mod topics;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
