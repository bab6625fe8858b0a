//! One runner per stage kind.

pub mod configure;
pub mod ml_common;
pub mod prepare_data;
pub mod select_model;
pub mod train_log;
