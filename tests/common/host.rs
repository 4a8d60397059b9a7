//! A second "host" on this machine for the tests that need one (Swarm, a fleet): a private
//! Docker daemon in a network namespace of its own, joined to the test's namespace by a veth
//! pair, as DEVELOPERS.md's recipe has it. Never `--bridge none` in the host's namespace (it
//! deletes the system daemon's docker0), and never the system daemon as a swarm node: other
//! tests share it. Everything is torn down on drop (swarm left, daemon killed, mounts under its
//! directories unmounted, veth and namespace deleted), also when the test panics.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct PrivateHost {
    /// The network namespace (`/run/netns/<ns>`).
    pub ns: String,
    /// `unix://…` of the daemon.
    pub docker_host: String,
    /// The namespace's end of the veth pair: the host's address as the test reaches it.
    pub addr: Ipv4Addr,
    /// The test's end.
    pub peer: Ipv4Addr,
    dir: tempfile::TempDir,
    veth: String,
    daemon: Option<Child>,
    swarm: bool,
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn must(cmd: &mut Command) -> String {
    sh(cmd).unwrap_or_else(|e| panic!("{e}"))
}

impl PrivateHost {
    /// Starts a daemon in a new namespace; panics (after tearing down what was made) if it does
    /// not answer within 60 s.
    pub fn start() -> PrivateHost {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{n}", pid % 0xfffff);
        // A /30 per host, from a range Docker does not use by default.
        let k = (pid.wrapping_mul(7).wrapping_add(n * 13)) % 16000;
        let (a, b) = ((k / 64) as u8, ((k % 64) * 4) as u8);
        let peer = Ipv4Addr::new(10, 231 + (a / 250), a % 250, b + 1);
        let addr = Ipv4Addr::new(10, 231 + (a / 250), a % 250, b + 2);
        // Short paths: containerd's socket under the exec root must fit a sockaddr_un.
        let dir = tempfile::Builder::new()
            .prefix("ah")
            .tempdir_in("/tmp")
            .expect("a directory for the private daemon");
        let mut h = PrivateHost {
            ns: format!("ace-{tag}"),
            docker_host: format!("unix://{}/s", dir.path().display()),
            addr,
            peer,
            veth: format!("va{tag}"),
            dir,
            daemon: None,
            swarm: false,
        };
        h.setup();
        h
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn in_ns(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns));
        c
    }

    fn setup(&mut self) {
        let (ns, veth, inner) = (
            &self.ns.clone(),
            &self.veth.clone(),
            format!("{}n", self.veth),
        );
        must(Command::new("ip").args(["netns", "add", ns]));
        must(self.in_ns().args(["ip", "link", "set", "lo", "up"]));
        must(
            Command::new("ip").args(["link", "add", veth, "type", "veth", "peer", "name", &inner]),
        );
        must(Command::new("ip").args(["link", "set", &inner, "netns", ns]));
        must(Command::new("ip").args(["addr", "add", &format!("{}/30", self.peer), "dev", veth]));
        must(Command::new("ip").args(["link", "set", veth, "up"]));
        must(self.in_ns().args([
            "ip",
            "addr",
            "add",
            &format!("{}/30", self.addr),
            "dev",
            &inner,
        ]));
        must(self.in_ns().args(["ip", "link", "set", &inner, "up"]));
        for d in ["d", "e"] {
            std::fs::create_dir_all(self.path(d)).unwrap();
        }
        // The system daemon's daemon.json sets data-root: this one reads an empty config.
        std::fs::write(self.path("f.json"), "{}").unwrap();
        let log = std::fs::File::create(self.path("dockerd.log")).unwrap();
        let child = self
            .in_ns()
            .arg("dockerd")
            .arg("--config-file")
            .arg(self.path("f.json"))
            .arg("--data-root")
            .arg(self.path("d"))
            .arg("--exec-root")
            .arg(self.path("e"))
            .arg("--pidfile")
            .arg(self.path("p"))
            .arg("-H")
            .arg(&self.docker_host)
            // iptables on, as on a real host: its rules live in this namespace, and Docker's
            // isolation of its networks from each other holds here as it does there.
            .args(["--iptables=true", "--storage-driver", "fuse-overlayfs"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd");
        self.daemon = Some(child);
        let t0 = Instant::now();
        while sh(self.docker().args(["info", "-f", "{{.ID}}"])).is_err() {
            if t0.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(self.path("dockerd.log")).unwrap_or_default();
                panic!("the private daemon did not answer in 60 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker -H <this host>`.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.args(["-H", &self.docker_host]);
        c
    }

    /// The path of the daemon's socket (to bind-mount into its containers).
    pub fn socket(&self) -> PathBuf {
        self.path("s")
    }

    /// Runs `docker -H <this host> ARGS`; panics with stderr on failure.
    pub fn run(&self, args: &[&str]) -> String {
        must(self.docker().args(args))
    }

    /// Copies images of the system daemon to this one.
    pub fn load(&self, images: &[&str]) {
        let mut save = Command::new("docker")
            .arg("save")
            .args(images)
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let out = self
            .docker()
            .arg("load")
            .stdin(save.stdout.take().unwrap())
            .output()
            .expect("docker load");
        assert!(save.wait().unwrap().success(), "docker save {images:?}");
        assert!(
            out.status.success(),
            "docker load: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Makes this daemon a one-node swarm, advertised on its veth address.
    pub fn swarm_init(&mut self) {
        self.swarm = true;
        self.run(&["swarm", "init", "--advertise-addr", &self.addr.to_string()]);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivateHost {
    fn drop(&mut self) {
        if self.swarm {
            let _ = sh(self.docker().args(["swarm", "leave", "--force"]));
        }
        if let Ok(ids) = sh(self.docker().args(["ps", "-aq"])) {
            for id in ids.lines() {
                let _ = sh(self.docker().args(["rm", "-f", id]));
            }
        }
        if let Some(mut d) = self.daemon.take() {
            // SIGTERM first (it stops its containerd), SIGKILL after 15 s.
            let _ = Command::new("kill").arg(d.id().to_string()).status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = d.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        // Whatever is left of it (containerd, shims): by its directory on their command line.
        let _ = Command::new("pkill")
            .args(["-9", "-f", &self.dir.path().display().to_string()])
            .status();
        // Mounts below its directories, deepest first.
        let prefix = format!("{} ", self.dir.path().display());
        let prefix_dir = format!("{}/", self.dir.path().display());
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix_dir) || format!("{m} ") == prefix)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
