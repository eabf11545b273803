//! End-to-end tests against a real server on free ports, with real clients.
//!
//! One test binary, one module per area: every integration test binary links
//! the whole engine (hundreds of MB in a debug build), so a binary per file
//! costs CI minutes of linking and gigabytes of disk.

mod auth;
mod copy;
mod extended_protocol;
mod flight_ingest;
mod hostile;
mod protocol_fuzz;
mod protocols;
mod recovery;
mod s3;
mod subscribe;
mod views_differential;
