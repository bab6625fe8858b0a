//! One integration binary for taper's end-to-end tests.

mod cli;
mod diagnostics;
mod fuzz;
mod hostile;
mod layering;
mod published_specs;
mod schema;
mod serve;
mod specs;
