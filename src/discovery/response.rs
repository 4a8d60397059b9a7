//! What one `docker inspect` response says of a container, read without asking anything else:
//! whose network namespace it uses and what that namespace shows, its mounts, its main
//! process, its log. Pure; both the matcher and the inspector build on it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bollard::models::ContainerInspectResponse;

use crate::model::{Mount, MountKind};

/// Whose network namespace a container uses, as `HostConfig.NetworkMode` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetRef {
    Own,
    Host,
    /// `container:<id or name>` (compose's `service:<name>` arrives as this, with the id).
    Container(String),
}

pub fn network_of(c: &ContainerInspectResponse) -> NetRef {
    match c
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
    {
        Some("host") => NetRef::Host,
        Some(m) => match m.strip_prefix("container:") {
            Some(r) if !r.is_empty() => NetRef::Container(r.to_string()),
            _ => NetRef::Own,
        },
        None => NetRef::Own,
    }
}

/// What a network namespace shows of itself in its owner's inspect data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetView {
    /// On Docker's networks, sorted by network name.
    pub ips: Vec<IpAddr>,
    pub aliases: Vec<String>,
    /// Container TCP port → the first host port it is published on.
    pub published: BTreeMap<u16, u16>,
}

impl NetView {
    pub fn of(c: &ContainerInspectResponse) -> NetView {
        let mut v = NetView::default();
        let Some(net) = c.network_settings.as_ref() else {
            return v;
        };
        if let Some(nets) = net.networks.as_ref() {
            let mut nets: Vec<_> = nets.iter().collect();
            nets.sort_by(|a, b| a.0.cmp(b.0));
            for (_, ep) in nets {
                if let Some(ip) = ep.ip_address.as_deref().and_then(|s| s.parse().ok()) {
                    v.ips.push(ip);
                }
                for a in ep
                    .aliases
                    .iter()
                    .flatten()
                    .chain(ep.dns_names.iter().flatten())
                {
                    v.aliases.push(a.clone());
                }
            }
        }
        for (key, bindings) in net.ports.iter().flatten() {
            let Some(port) = key.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok()) else {
                continue;
            };
            let host = bindings
                .iter()
                .flatten()
                .find_map(|b| b.host_port.as_deref()?.parse::<u16>().ok());
            if let Some(h) = host {
                v.published.insert(port, h);
            }
        }
        v
    }
}

/// The namespace owner of a container in `container:` network mode, followed to the end of a
/// chain (an owner may itself use another's namespace), as far as the agent can read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The direct owner's full id: its events are followed.
    pub id: String,
    /// The chain ends in a container on the host's network.
    pub host_network: bool,
    /// What the namespace shows (IPs, published ports); `None` when the owner is not running.
    pub view: Option<NetView>,
    /// The owner's main process, 0 when not running.
    pub pid: u32,
}

/// The container's `json-file` log on the host and whether its config rotates it (`max-size`
/// set, as Docker merges the daemon's `log-opts` into each container's); `local` rotates by
/// itself.
pub(super) fn log_of(c: &ContainerInspectResponse) -> Option<(String, bool)> {
    let path = c.log_path.clone().filter(|p| !p.is_empty())?;
    let config = c.host_config.as_ref()?.log_config.as_ref()?;
    let rotated = config.typ.as_deref() == Some("local")
        || config
            .config
            .as_ref()
            .and_then(|m| m.get("max-size"))
            .is_some_and(|s| !matches!(s.trim(), "" | "-1" | "0"));
    Some((path, rotated))
}

/// The container's main process as Docker reports it; 0 when not running (or not known).
pub(super) fn pid_of(c: &ContainerInspectResponse) -> u32 {
    c.state
        .as_ref()
        .and_then(|s| s.pid)
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0)
}

/// The container's mounts: inspect's `Mounts` (bind, volume, `--mount type=tmpfs`) plus
/// `HostConfig.Tmpfs`, where `--tmpfs` mounts appear (they are not listed in `Mounts`).
pub fn mounts_of(c: &ContainerInspectResponse) -> Vec<Mount> {
    let mut out: Vec<Mount> = c
        .mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let kind = match m.typ.as_deref() {
                Some("bind") => MountKind::Bind,
                Some("volume") => MountKind::Volume,
                Some("tmpfs") => MountKind::Tmpfs,
                _ => MountKind::Other,
            };
            Some(Mount {
                kind,
                source: m.source.clone().unwrap_or_default(),
                destination: m.destination.clone()?,
            })
        })
        .collect();
    if let Some(tmpfs) = c.host_config.as_ref().and_then(|h| h.tmpfs.as_ref()) {
        let mut dests: Vec<&String> = tmpfs.keys().collect();
        dests.sort();
        for d in dests {
            out.push(Mount {
                kind: MountKind::Tmpfs,
                source: String::new(),
                destination: d.clone(),
            });
        }
    }
    out
}
