//! The Debian package, as operators install it (README "Install (Debian package)"):
//! `cargo deb` builds it, lintian has no errors, and in a throwaway Debian root (debootstrap'd
//! here, imported with `docker import`) it installs, its unit verifies and is enabled, the
//! binary runs, the config is a conffile, remove keeps config and state, purge drops them and
//! the user. Under systemd's journal (a real `systemd-journald` in that root) the agent's
//! cleanup lines arrive with their structured fields.
//!
//! One test builds the package once and walks through all of it, because the release build
//! and the root file system are the slow parts (about 2 and 0.5 minutes).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;

/// Lintian tags we accept, each with the reason (anything else fails the test).
const ACCEPTED_LINTIAN: &[(&str, &str)] = &[(
    "initial-upload-closes-no-bugs",
    "the first changelog entry closes no Debian bug: this package is not in Debian",
)];

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn require(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} is required for the packaging tests: apt-get install {package} (bash .ci/run installs it)"
    );
}

/// Builds the package once per process with `cargo deb`; returns its path.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        require("cargo-deb", "cargo-deb (cargo install cargo-deb)");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = run(Command::new(cargo)
            .args(["deb", "--locked"])
            .current_dir(env!("CARGO_MANIFEST_DIR")));
        assert!(
            out.status.success(),
            "cargo deb failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let path = text(&out.stdout)
            .lines()
            .rev()
            .find(|l| l.trim().ends_with(".deb"))
            .map(|l| PathBuf::from(l.trim()))
            .unwrap_or_else(|| panic!("cargo deb printed no .deb path:\n{}", text(&out.stdout)));
        assert!(path.is_file(), "{} missing", path.display());
        path
    })
}

/// A Debian 12 root file system as a local image, removed on drop.
struct Rootfs {
    tag: String,
}

impl Rootfs {
    fn build() -> Rootfs {
        require("debootstrap", "debootstrap");
        let dir = tempfile::tempdir().unwrap();
        let mirror = std::env::var("ACESTREAM_AGENT_TEST_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
        let out = run(Command::new("debootstrap").args([
            "--variant=minbase",
            "--include=adduser,systemd",
            "bookworm",
            dir.path().to_str().unwrap(),
            &mirror,
        ]));
        assert!(
            out.status.success(),
            "debootstrap failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let tag = format!("acestream-agent-rootfs:{}", unique_name("deb"));
        let out = run(Command::new("sh").args([
            "-c",
            &format!(
                "tar -C '{}' -c . | docker import --change 'LABEL acestream-agent.test=1' - '{tag}'",
                dir.path().display()
            ),
        ]));
        assert!(out.status.success(), "docker import: {}", text(&out.stderr));
        Rootfs { tag }
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

/// Runs `script` with `sh -eu` in a fresh container of the root file system, the package at
/// /tmp/pkg.deb; returns (exit code, stdout+stderr).
fn in_root(root: &Rootfs, extra: &[&str], script: &str) -> (i32, String) {
    let name = unique_name("deb-root");
    let mut cmd = Command::new("docker");
    cmd.args([
        "run",
        "--rm",
        "--name",
        &name,
        "--label",
        "acestream-agent.test=1",
    ])
    .arg("-v")
    .arg(format!("{}:/tmp/pkg.deb:ro", deb().display()))
    .args(extra)
    .args([&root.tag, "sh", "-euc", script]);
    let out = run(&mut cmd);
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn package_builds_lints_installs_and_purges_cleanly() {
    let deb = deb();

    // Contents: files where operators expect them.
    let out = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    let listing = text(&out.stdout);
    for path in [
        "./usr/bin/acestream-agent",
        "./etc/acestream-agent/config.toml",
        "./usr/lib/systemd/system/acestream-agent.service",
        "./usr/share/doc/acestream-agent/README.md",
        "./usr/share/doc/acestream-agent/changelog.Debian.gz",
        "./usr/share/doc/acestream-agent/copyright",
        "./usr/share/man/man8/acestream-agent.8.gz",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} not in the package:\n{listing}"
        );
    }
    let control = tempfile::tempdir().unwrap();
    let out = run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb)
        .arg(control.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(control.path().join("conffiles")).unwrap(),
        "/etc/acestream-agent/config.toml\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let s = std::fs::read_to_string(control.path().join(script)).unwrap();
        assert!(
            !s.contains("#DEBHELPER#"),
            "{script}: #DEBHELPER# was not replaced"
        );
        assert!(s.contains("deb-systemd"), "{script} has no systemd snippet");
    }

    // Lintian: no errors, and no warning we have not accepted with a reason.
    require("lintian", "lintian");
    let out = run(Command::new("lintian").args(["--allow-root"]).arg(deb));
    let report = text(&out.stdout);
    println!("lintian:\n{report}");
    let tags: Vec<(&str, &str)> = report
        .lines()
        .filter_map(|l| {
            let (kind, rest) = l.split_once(": ")?;
            let tag = rest.split(": ").nth(1)?.split_whitespace().next()?;
            Some((kind, tag))
        })
        .collect();
    for (kind, tag) in &tags {
        assert!(
            *kind != "E" && ACCEPTED_LINTIAN.iter().any(|(t, _)| t == tag),
            "lintian {kind}: {tag} is not accepted:\n{report}"
        );
    }

    // The man page renders.
    let man = control.path().join("man.8");
    let out = run(Command::new("sh").args([
        "-c",
        &format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -xO ./usr/share/man/man8/acestream-agent.8.gz | gzip -dc > '{}'",
            deb.display(),
            man.display()
        ),
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = std::fs::read_to_string(&man).unwrap();
    assert!(page.contains(".TH ACESTREAM-AGENT 8"), "{page}");
    assert!(page.contains("check-config"), "{page}");

    // Install, inspect, remove, purge in a throwaway Debian root.
    let root = Rootfs::build();
    let (code, log) = in_root(
        &root,
        &[],
        r#"
dpkg -i /tmp/pkg.deb
echo "VERSION $(acestream-agent --version)"
getent passwd acestream-agent >/dev/null && echo USER_CREATED
test -L /etc/systemd/system/multi-user.target.wants/acestream-agent.service && echo UNIT_ENABLED
echo "CONFFILES $(dpkg-query -W -f='${Conffiles}' acestream-agent | awk '{print $1}')"
systemd-analyze verify --man=no /lib/systemd/system/acestream-agent.service && echo UNIT_VERIFIED
echo "EXPOSURE $(systemd-analyze security --offline=yes /lib/systemd/system/acestream-agent.service | tail -1)"
acestream-agent check-config --config /etc/acestream-agent/config.toml >/dev/null && echo CONFIG_VALID
# An operator's edit and some state, then an upgrade (reinstall) and a remove.
echo '# edited by the operator' >> /etc/acestream-agent/config.toml
mkdir -p /var/lib/acestream-agent && echo state > /var/lib/acestream-agent/state.redb
dpkg -i /tmp/pkg.deb >/dev/null
grep -q 'edited by the operator' /etc/acestream-agent/config.toml && echo EDIT_SURVIVES_UPGRADE
dpkg -r acestream-agent >/dev/null
test ! -e /usr/bin/acestream-agent && echo BINARY_REMOVED
grep -q 'edited by the operator' /etc/acestream-agent/config.toml && echo CONFIG_KEPT_ON_REMOVE
test -f /var/lib/acestream-agent/state.redb && echo STATE_KEPT_ON_REMOVE
getent passwd acestream-agent >/dev/null && echo USER_KEPT_ON_REMOVE
dpkg -P acestream-agent >/dev/null
test ! -e /etc/acestream-agent/config.toml && echo CONFIG_PURGED
test ! -e /var/lib/acestream-agent && echo STATE_PURGED
getent passwd acestream-agent >/dev/null || echo USER_PURGED
test ! -e /etc/systemd/system/multi-user.target.wants/acestream-agent.service && echo UNIT_LINK_PURGED
"#,
    );
    println!("{log}");
    assert_eq!(code, 0, "install/remove/purge script failed:\n{log}");
    assert!(
        log.contains(&format!(
            "VERSION acestream-agent {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{log}"
    );
    assert!(
        log.contains("CONFFILES /etc/acestream-agent/config.toml"),
        "{log}"
    );
    for marker in [
        "USER_CREATED",
        "UNIT_ENABLED",
        "UNIT_VERIFIED",
        "CONFIG_VALID",
        "EDIT_SURVIVES_UPGRADE",
        "BINARY_REMOVED",
        "CONFIG_KEPT_ON_REMOVE",
        "STATE_KEPT_ON_REMOVE",
        "USER_KEPT_ON_REMOVE",
        "CONFIG_PURGED",
        "STATE_PURGED",
        "USER_PURGED",
        "UNIT_LINK_PURGED",
    ] {
        assert!(log.contains(marker), "{marker} missing:\n{log}");
    }
    let exposure = log
        .lines()
        .find(|l| l.starts_with("EXPOSURE"))
        .unwrap_or_default();
    let score: f64 = exposure
        .split("service: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in {exposure:?}"));
    println!("systemd-analyze security exposure: {score}");
    assert!(score <= 2.0, "{exposure}");

    journald_gets_structured_cleanup_lines(&root);
}

/// Under systemd (`JOURNAL_STREAM` naming our stderr) the agent logs to the journal, the
/// orchestrator's lines with their fields. Runs the packaged binary in the root with a real
/// `systemd-journald`, the host's Docker socket mounted (so this is also the "agent in a
/// container" case: the connection probe falls back to exec), cleaning a real engine.
fn journald_gets_structured_cleanup_lines(root: &Rootfs) {
    let case = unique_name("deb-journal");
    let engine = TestEngine::builder()
        .name_prefix("debj")
        .label("acestream-agent.test.case", &case)
        .start();
    engine.write_cache_file("big.chunk", 1024 * 1024);
    // Pressure off: the line watched is a sweep's, and a host disk below the shipped 10 % free
    // would have pressure clean the engine first.
    let script = format!(
        r#"
dpkg -i /tmp/pkg.deb >/dev/null 2>&1
mkdir -p /run/systemd/journal
/lib/systemd/systemd-journald >/dev/null 2>&1 &
for i in $(seq 50); do test -S /run/systemd/journal/socket && break; sleep 0.1; done
: > /tmp/agent.err
export JOURNAL_STREAM="$(stat -c '%d:%i' /tmp/agent.err)"
ACESTREAM_AGENT_DISCOVERY__LABELS='[acestream-agent.test.case={case}]' \
ACESTREAM_AGENT_DISCOVERY__IMAGES='[]' \
ACESTREAM_AGENT_HTTP__LISTEN=127.0.0.1:9477 \
ACESTREAM_AGENT_STORE__PATH=/tmp/state.redb \
ACESTREAM_AGENT_PRESSURE__MIN_FREE=off \
AUTOSCALE_INTERVAL_S=1 \
acestream-agent run --config /etc/acestream-agent/config.toml 2>>/tmp/agent.err &
for i in $(seq 150); do
  journalctl -q -o json SYSLOG_IDENTIFIER=acestream-agent 2>/dev/null | grep -q 'Successfully cleared' && break
  sleep 0.1
done
journalctl -q -o json SYSLOG_IDENTIFIER=acestream-agent | grep 'Successfully cleared'
echo "STDERR_BYTES $(wc -c < /tmp/agent.err)"
"#
    );
    let (code, log) = in_root(
        root,
        &["-v", "/var/run/docker.sock:/var/run/docker.sock"],
        &script,
    );
    println!("{log}");
    assert_eq!(code, 0, "journal script failed:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("Successfully cleared"))
        .unwrap_or_else(|| panic!("no cleanup line in the journal:\n{log}"));
    let entry: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let id12 = &engine.id[..12];
    assert_eq!(
        entry["MESSAGE"],
        format!("Successfully cleared AceStream cache for container {id12} (freed 1.00 MB)"),
        "{entry}"
    );
    assert_eq!(entry["CONTAINER_ID"], id12, "{entry}");
    assert_eq!(entry["CONTAINER_NAME"], engine.name.as_str(), "{entry}");
    assert_eq!(entry["TRIGGER"], "sweep", "{entry}");
    assert_eq!(entry["BYTES"], "1048576", "{entry}");
    let secs: f64 = entry["DURATION_SECONDS"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("DURATION_SECONDS: {entry}"));
    assert!(secs > 0.0 && secs < 60.0, "{entry}");
    assert_eq!(entry["PRIORITY"], "6", "info level: {entry}");
    // Nothing went to stderr: the journal got it all.
    assert!(log.contains("STDERR_BYTES 0"), "{log}");
}
