//! Command line (README "Running it"): `acestream-agent [run] [--config FILE]`,
//! `acestream-agent check-config [--config FILE]`, `--version`, `--help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "acestream-agent",
    version,
    about = "Per-host agent for AceStream engine containers: discovers engines, tracks idleness, cleans their caches, serves /engines and /metrics"
)]
pub struct Cli {
    /// Config file (default: /etc/acestream-agent/config.toml if it exists).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Print the effective configuration and exit (2 on an invalid value).
    CheckConfig,
    /// Ask the running agent (on `http.listen`) whether it is ready (`GET /readyz`): exit 0 if
    /// so, 1 if not or not answering. For a container's HEALTHCHECK: needs no shell or curl.
    Healthcheck,
}
