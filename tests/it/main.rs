//! One integration binary for taper's end-to-end tests.

mod cli;
mod diagnostics;
mod fuzz;
mod schema;
