//! The storage layer's integration tests, in one test binary, one module per
//! area: model tests, simulated crashes, corruption, schema evolution and
//! transactions.

mod corruption;
mod crash;
mod evolution;
mod model;
mod transactions;
