//! A fleet of hosts on one machine: each a [`PrivateHost`] (its own Docker daemon in its own
//! network namespace, joined to the test by a veth pair) with its own agent, a child process
//! run inside that namespace on that daemon (`docker.host`), with its own store. Dropping the
//! fleet kills the agents first, then tears every host down (containers, daemon, mounts, veth,
//! namespace), also when the test panics.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::process::{agent_command_via, Running};
use super::PrivateHost;

/// The agent's port on every host, as in the shipped config.
pub const AGENT_PORT: u16 = 9477;

pub struct FleetHost {
    /// The host's name: its Prometheus `instance` in the tests' targets file.
    pub name: String,
    /// Field order matters: the agent is killed before its daemon goes.
    agent: Option<Running>,
    /// Loop filesystems mounted for this host; unmounted (and the image removed) with it.
    loops: Vec<PathBuf>,
    pub host: PrivateHost,
}

impl FleetHost {
    /// The agent's address as the test (and Prometheus) reaches it.
    pub fn agent_addr(&self) -> SocketAddr {
        SocketAddr::from((self.host.addr, AGENT_PORT))
    }

    /// The agent's log.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.host.dir().join("agent.log")).unwrap_or_default()
    }

    /// Starts this host's agent in the host's namespace, on its daemon, listening on its veth
    /// address, with `env` on top of the fleet defaults (see [`fleet_env`]).
    pub fn start_agent(&mut self, env: &[(&'static str, String)]) {
        let dir = self.host.dir().to_path_buf();
        let mut all = fleet_env(&self.host);
        all.extend(env.iter().cloned());
        let ns = format!("--net=/run/netns/{}", self.host.ns);
        let child = agent_command_via(&["nsenter", &ns], &dir, &all, &dir.join("agent.log"))
            .spawn()
            .expect("start the host's agent");
        self.agent = Some(Running(child));
    }

    /// Kills the agent (SIGKILL: a host that dies, not one that is stopped).
    pub fn kill_agent(&mut self) {
        self.agent = None;
    }

    /// Runs an engine on this host: the fake engine image, labelled as an engine, its HTTP port
    /// published (so a viewer from the test can reach it through the veth), `extra` docker run
    /// arguments before the image. Returns (container id, published port).
    pub fn engine(&self, image: &str, name: &str, extra: &[&str]) -> (String, u16) {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--label",
            "acestream.engine=true",
            "-p",
            "6878",
        ];
        args.extend_from_slice(extra);
        args.push(image);
        let id = self.host.run(&args);
        let port = self.host.run(&["port", &id, "6878/tcp"]);
        let port = port
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no published port for {name}: {port:?}"));
        (id, port)
    }

    /// A small ext4 filesystem of `mib` MiB on a loop device, mounted in this host's directory
    /// (for a cache whose free space a test controls). Returns the mountpoint.
    pub fn loop_fs(&mut self, mib: u64) -> PathBuf {
        let n = self.loops.len();
        let image = self.host.dir().join(format!("loop{n}.img"));
        let mnt = self.host.dir().join(format!("loop{n}"));
        std::fs::create_dir_all(&mnt).expect("mountpoint");
        let f = std::fs::File::create(&image).expect("loop image");
        f.set_len(mib << 20).expect("size the loop image");
        drop(f);
        sh(&["mkfs.ext4", "-q", "-F", image.to_str().unwrap()]);
        sh(&[
            "mount",
            "-o",
            "loop",
            image.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ]);
        // The engine runs as whoever its image says: let it write.
        sh(&["chmod", "1777", mnt.to_str().unwrap()]);
        self.loops.push(mnt.clone());
        mnt
    }
}

impl Drop for FleetHost {
    fn drop(&mut self) {
        self.agent = None;
        // The containers using the loop filesystems go first, then the filesystems (the
        // PrivateHost's own drop unmounts what is left, lazily).
        if let Ok(ids) = std::process::Command::new("docker")
            .args(["-H", &self.host.docker_host, "ps", "-aq"])
            .output()
        {
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let _ = std::process::Command::new("docker")
                    .args(["-H", &self.host.docker_host, "rm", "-f", id])
                    .output();
            }
        }
        for mnt in self.loops.drain(..) {
            let _ = std::process::Command::new("umount").arg(&mnt).status();
        }
    }
}

fn sh(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What every fleet agent runs with: listening on its host's veth address, on its host's
/// daemon, its store in its host's directory, engines found by the `acestream.engine=true`
/// label, advertised by that address (what a client dials), fast intervals for a test.
pub fn fleet_env(h: &PrivateHost) -> Vec<(&'static str, String)> {
    vec![
        (
            "ACESTREAM_AGENT_HTTP__LISTEN",
            format!("{}:{AGENT_PORT}", h.addr),
        ),
        ("ACESTREAM_AGENT_DOCKER__HOST", h.docker_host.clone()),
        (
            "ACESTREAM_AGENT_STORE__PATH",
            h.dir().join("state.redb").display().to_string(),
        ),
        (
            "ACESTREAM_AGENT_DISCOVERY__LABELS",
            "acestream.engine=true".to_string(),
        ),
        ("ACESTREAM_AGENT_DISCOVERY__IMAGES", "[]".to_string()),
        (
            "ACESTREAM_AGENT_DISCOVERY__ADVERTISE_HOST",
            h.addr.to_string(),
        ),
    ]
}

/// `n` hosts named `<prefix>-1` … `<prefix>-n`, each with `images` loaded and no agent yet.
pub struct Fleet {
    pub hosts: Vec<FleetHost>,
}

impl Fleet {
    pub fn start(prefix: &str, n: usize, images: &[&str]) -> Fleet {
        // Daemons start in parallel: each takes seconds, mostly waiting.
        let hosts: Vec<PrivateHost> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| {
                        let h = PrivateHost::start();
                        h.load(images);
                        h
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        Fleet {
            hosts: hosts
                .into_iter()
                .enumerate()
                .map(|(i, host)| FleetHost {
                    name: format!("{prefix}-{}", i + 1),
                    agent: None,
                    loops: vec![],
                    host,
                })
                .collect(),
        }
    }
}
