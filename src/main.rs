//! Process edge: parse the command line, load config, set up logging and signals, map errors
//! to exit codes (2 for configuration, 1 for everything else). Everything else is library.

use std::process::ExitCode;

use acestream_agent::cli::{Cli, Command};
use acestream_agent::config::Config;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("acestream-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => {
            print!("{}", cfg.to_toml());
            return ExitCode::SUCCESS;
        }
        Some(Command::Healthcheck) => {
            return match acestream_agent::selfcheck::ready(cfg.http.listen) {
                Ok(body) => {
                    println!("{body}");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("acestream-agent: not ready: {why}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Run) | None => {}
    }
    acestream_agent::logging::init();
    raise_open_file_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("acestream-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A listen address in use is a configuration problem: exit 2 naming the key.
    let listener = match rt.block_on(tokio::net::TcpListener::bind(cfg.http.listen)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "acestream-agent: invalid value for `http.listen`: cannot listen on {}: {e}",
                cfg.http.listen
            );
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(serve(cfg, listener));
    // Dropping the runtime would wait without limit for blocking work still running: a host
    // walk stuck in a filesystem that stopped answering would keep the agent from exiting
    // until systemd kills it. Such work has been told to stop; it gets a moment, no more.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("acestream-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-file limit to the hard one. Every HTTP connection is a file: with the
/// 1024 a service gets by default, 2,000 idle clients would exhaust it and leave no descriptor
/// for `/healthz`, the Docker socket or the store. Best effort: the packaged unit sets
/// `LimitNOFILE` itself and forbids this call.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let r = getrlimit(Resource::Nofile);
    // `None` is no limit: nothing to raise, or no ceiling below 2^20.
    let Some(current) = r.current else { return };
    let ceiling = r.maximum.unwrap_or(u64::MAX).min(1 << 20);
    if current < ceiling {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(ceiling),
                maximum: r.maximum,
            },
        );
    }
}

async fn serve(cfg: Config, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    acestream_agent::run(cfg, listener, shutdown).await?;
    Ok(())
}
