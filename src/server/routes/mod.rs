//! The handlers of the HTTP API, one module per resource. Each parses its request, calls
//! one broker operation and renders the answer; authorization is declared with the route
//! (see [`super::access`]).

pub mod cluster;
pub mod consume;
pub mod groups;
pub mod members;
pub mod ops;
pub mod produce;
pub mod queues;
pub mod topics;
