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
    if let Some(Command::CheckConfig) = cli.command {
        print!("{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    acestream_agent::logging::init();
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
    match rt.block_on(serve(cfg, listener)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("acestream-agent: {e:#}");
            ExitCode::FAILURE
        }
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
