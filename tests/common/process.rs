//! The agent binary as a child process, for tests of what only a real process shows (signals,
//! `kill -9`, its log, its privileges).

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_acestream-agent");

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The environment a child agent starts from, the twin of `case_config`: it listens on
/// `127.0.0.1:<port>`, sees only the engines labelled `CASE_LABEL=<case>`, keeps its store at
/// `store`, and cleans nothing on stream end, measures nothing on a timer, watches no disk
/// pressure. Callers push what their test needs (`cleanup.interval` above all).
pub fn case_env(case: &str, port: u16, store: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("ACESTREAM_AGENT_HTTP__LISTEN", format!("127.0.0.1:{port}")),
        ("ACESTREAM_AGENT_STORE__PATH", store.display().to_string()),
        (
            "ACESTREAM_AGENT_DISCOVERY__LABELS",
            format!("{}={case}", super::CASE_LABEL),
        ),
        ("ACESTREAM_AGENT_DISCOVERY__IMAGES", "[]".to_string()),
        ("ACESTREAM_AGENT_CLEANUP__IDLE_GRACE", "off".to_string()),
        (
            "ACESTREAM_AGENT_CLEANUP__MEASURE_INTERVAL",
            "off".to_string(),
        ),
        ("ACESTREAM_AGENT_PRESSURE__MIN_FREE", "off".to_string()),
    ]
}

/// `acestream-agent run` with a clean environment: an empty `--config` file (so a host's
/// /etc/acestream-agent/config.toml cannot leak in), `RUST_LOG=info`, the given env overrides,
/// and stdout/stderr appended to `log`. `wrapper` (e.g. `setpriv …`) runs the binary.
pub fn agent_command_via(
    wrapper: &[&str],
    dir: &Path,
    env: &[(&str, String)],
    log: &Path,
) -> Command {
    let config = dir.join("empty.toml");
    std::fs::write(&config, "").expect("write the empty config");
    let mut cmd = match wrapper.split_first() {
        None => Command::new(BIN),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(BIN);
            c
        }
    };
    cmd.arg("run").arg("--config").arg(&config);
    cmd.env_clear();
    cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the agent's log");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log);
    cmd
}

/// [`agent_command_via`] without a wrapper.
pub fn agent_command(dir: &Path, env: &[(&str, String)], log: &Path) -> Command {
    agent_command_via(&[], dir, env, log)
}

/// Kills the child on drop so a failing test leaves no agent running.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of an agent's log that contain `needle`.
pub fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}
