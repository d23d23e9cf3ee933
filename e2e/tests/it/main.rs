//! The end-to-end tests, one binary (one link): the Helm chart, the pipeline
//! of real binaries, the fault soak and the test servers themselves.

mod helm_chart;
mod pipeline;
mod soak;
mod test_servers;
