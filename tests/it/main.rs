//! Every integration test, as one test binary: one link of the dependency tree instead of one
//! per file, and `tests/common` compiled once for every test module. nextest still runs each test in a process of
//! its own, so a test's statics and environment stay its own. `cargo nextest run --profile
//! quick` leaves out the slow tiers (packaging, images, Swarm, the fleet); see
//! `.config/nextest.toml`.

// `bench_smoke` compiles the benchmark harness (benches/agent.rs) as a module, and the harness
// brings its own copy of the helpers: it is a bench target of its own too, where it needs them.
#![allow(clippy::duplicate_mod)]

#[path = "../common/mod.rs"]
mod common;

mod activity;
mod bench_smoke;
mod cli_config;
mod command_line;
mod container;
mod deployments;
mod discovery;
mod faults;
mod fixture_engine;
mod fleet;
mod heal;
mod hostile;
mod http_api;
mod janitor;
mod logs;
mod metrics_live;
mod monitoring;
mod packaging;
mod pid_namespace;
mod pressure;
mod privileges;
mod stats;
mod status_page;
mod store_restart;
mod swarm;
