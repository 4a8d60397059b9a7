//! Where the agent itself runs: on the host, or in a container (the image,
//! docs/deployments.md#agent-in-a-container). In a container it must never take itself for an
//! engine (its image, `acestream-agent`, matches the default `*acestream*` glob), and its hostname
//! is its container's, which no client can dial: `advertise_host` then defaults to the Docker
//! host's name.

/// The agent's own container id, from its mount table (Docker bind-mounts
/// `/var/lib/docker/containers/<id>/hostname` and friends into every container) or its cgroup
/// (`/docker/<id>`, `docker-<id>.scope`); `None` on the host.
pub fn own_container_id() -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    container_id_in(&mountinfo, &cgroup)
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id named by a mount table (the source of `/etc/hostname` lies in
/// `…/containers/<id>/`) or a cgroup file.
pub fn container_id_in(mountinfo: &str, cgroup: &str) -> Option<String> {
    for line in mountinfo.lines() {
        let mut f = line.split(' ');
        let root = f.nth(3).unwrap_or("");
        let mountpoint = f.next().unwrap_or("");
        if !matches!(
            mountpoint,
            "/etc/hostname" | "/etc/hosts" | "/etc/resolv.conf"
        ) {
            continue;
        }
        let mut parts = root.split('/');
        while let Some(p) = parts.next() {
            if p == "containers" {
                if let Some(id) = parts.next().filter(|id| is_id(id)) {
                    return Some(id.to_string());
                }
            }
        }
    }
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for c in path.split('/').rev() {
            let c = c
                .strip_prefix("docker-")
                .and_then(|c| c.strip_suffix(".scope"))
                .unwrap_or(c);
            if is_id(c) {
                return Some(c.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6987647a9864175e795ee6e9a3cdb6ae83d421b6f26562dbc33c845ea754bdaa";

    #[test]
    fn the_own_id_comes_from_the_hostname_mount_or_the_cgroup() {
        let mi = format!(
            "600 500 0:51 / / rw - overlay overlay rw\n\
             610 600 254:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw - ext4 /dev/vda rw\n"
        );
        assert_eq!(container_id_in(&mi, "0::/\n").as_deref(), Some(ID));
        assert_eq!(
            container_id_in("", &format!("4:memory:/docker/{ID}\n")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            container_id_in("", &format!("0::/system.slice/docker-{ID}.scope\n")).as_deref(),
            Some(ID)
        );
        // The host: a systemd service, no container mounts.
        let host = "27 1 254:0 / / rw - ext4 /dev/vda rw\n";
        assert_eq!(
            container_id_in(host, "0::/system.slice/acestream-agent.service\n"),
            None
        );
    }
}
