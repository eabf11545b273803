//! The engine's integration tests, in one test binary (each binary links the
//! whole engine), one module per area.

mod dynamic_tables;
mod execution_modes;
mod refresh_schedule;
mod support;
