//! [`Shutdown`]: the shutdown signal as every task sees it, so each finishes
//! its current unit of work before it exits. One type for the three
//! binaries, in `hookline_api::runtime`.

pub use hookline_api::runtime::Shutdown;
