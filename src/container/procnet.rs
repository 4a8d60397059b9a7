//! Parser for `/proc/<pid>/net/tcp` and `/proc/<pid>/net/tcp6` (the connection probe,
//! docs/architecture.md#activity).
//!
//! Pure: takes the file text, returns established connections; [`read_tables`] is given the
//! reading by its caller. Addresses are kernel-formatted hex: IPv4 as one little-endian
//! 32-bit word, IPv6 as four of them; IPv4-mapped IPv6 addresses (what a dual-stack listener
//! such as busybox `nc` on `::` sees for IPv4 clients) are turned back into IPv4 so one client
//! has one name whichever table it shows up in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP state `01` in the kernel's table.
const ESTABLISHED: &str = "01";
/// TCP state `0A`: a listening socket.
const LISTEN: &str = "0A";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Established connections in one table. Malformed lines are skipped: the kernel's format is
/// stable, and a probe must not fail because of one odd line.
pub fn parse_established(text: &str) -> Vec<Conn> {
    // Header lines fail to parse as addresses and drop out, so the two tables may be
    // concatenated (the exec fallback prints both).
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let _sl = f.next()?;
            let local = parse_addr(f.next()?)?;
            let remote = parse_addr(f.next()?)?;
            (f.next()? == ESTABLISHED).then_some(Conn { local, remote })
        })
        .collect()
}

/// Established connections whose local port is `port` (clients of the engine's HTTP port).
pub fn clients_of(text: &str, port: u16) -> Vec<SocketAddr> {
    parse_established(text)
        .into_iter()
        .filter(|c| c.local.port() == port)
        .map(|c| c.remote)
        .collect()
}

/// Whether a table (or both, concatenated) has a socket listening on `port`: the engine's
/// server is up in its namespace, whatever stops a probe from reaching it.
pub fn listening(text: &str, port: u16) -> bool {
    text.lines().any(|line| {
        let mut f = line.split_whitespace();
        let (Some(_sl), Some(local), Some(_remote), Some(state)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            return false;
        };
        state == LISTEN && parse_addr(local).is_some_and(|a| a.port() == port)
    })
}

/// The established-connection tables of one network namespace, as one text for
/// [`clients_of`]. `read` reads a file of `/proc/<pid>/` (`net/snmp`, `net/tcp`, `net/tcp6`),
/// so the activity probe and the janitor's live-connection guard share one rule: the
/// namespace's `CurrEstab` first, and no table read at all when it is 0; a kernel without IPv6
/// has no `tcp6`, which is not an error.
pub fn read_tables(read: impl FnMut(&str) -> std::io::Result<String>) -> std::io::Result<String> {
    read_tables_unless(read, |_| false)
}

/// [`read_tables`], and no table read either when `all_ours(CurrEstab)` says every
/// established connection of the namespace is one of the agent's own (the connection probe:
/// its health checks and statistics requests would otherwise cost each engine they are
/// connected to a walk of the kernel's TCP hash table, ~0.5 ms, for nothing).
pub fn read_tables_unless(
    mut read: impl FnMut(&str) -> std::io::Result<String>,
    mut all_ours: impl FnMut(u64) -> bool,
) -> std::io::Result<String> {
    match curr_estab(&read("net/snmp")?) {
        Some(0) => return Ok(String::new()),
        Some(n) if all_ours(n) => return Ok(String::new()),
        _ => {}
    }
    let mut text = read("net/tcp")?;
    if let Ok(t6) = read("net/tcp6") {
        text.push('\n');
        text.push_str(&t6);
    }
    Ok(text)
}

/// `CurrEstab` of the `Tcp:` lines of `/proc/<pid>/net/snmp`: the established TCP connections
/// of that network namespace. Reading the tcp tables walks the kernel's TCP hash table, which
/// every container shares (about 4 ms a read on a busy host); this counter costs nothing, and
/// 0 means there is no client to look for.
pub fn curr_estab(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let i = names.split_whitespace().position(|n| n == "CurrEstab")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.swap_bytes(),
        )),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(octets);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1AEE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0200A8C0:1AEE 0100A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0200A8C0:1AEE 0100A8C0:D432 06 00000000:00000000 00:00000000 00000000     0        0 0 3 0000000000000000
   3: 0200A8C0:9C40 0100A8C0:0050 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
";

    // Captured from a busybox nc listening on `::` with one IPv4 client (172.17.0.1:40000)
    // and one IPv6 client (fd00::1:40001).
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1AEE 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000200110A:1AEE 0000000000000000FFFF00000100110A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 20 4 30 10 -1
   2: 000000FD000000000000000002000000:1AEE 000000FD000000000000000001000000:9C41 01 00000000:00000000 00:00000000 00000000     0        0 6 1 0000000000000000 20 4 30 10 -1
   3: garbage
";

    #[test]
    fn ipv4_established_only() {
        let conns = parse_established(TCP);
        assert_eq!(conns.len(), 2);
        assert_eq!(conns[0].local, "192.168.0.2:6894".parse().unwrap());
        assert_eq!(conns[0].remote, "192.168.0.1:54321".parse().unwrap());
    }

    #[test]
    fn clients_of_filters_by_local_port() {
        let c = clients_of(TCP, 6894);
        assert_eq!(c, vec!["192.168.0.1:54321".parse::<SocketAddr>().unwrap()]);
        assert!(clients_of(TCP, 80).is_empty());
    }

    #[test]
    fn ipv4_mapped_ipv6_becomes_ipv4() {
        let c = clients_of(TCP6, 6894);
        assert_eq!(
            c,
            vec![
                "10.17.0.1:40000".parse::<SocketAddr>().unwrap(),
                "[fd00::1]:40001".parse::<SocketAddr>().unwrap(),
            ]
        );
    }

    #[test]
    fn curr_estab_from_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs\nTcp: 1 200 120000 -1 0 3 0 0 2 1234\nUdp: InDatagrams\nUdp: 0\n";
        assert_eq!(curr_estab(snmp), Some(2));
        assert_eq!(curr_estab("Tcp: CurrEstab\nTcp: 0\n"), Some(0));
        assert_eq!(curr_estab("garbage"), None);
        assert_eq!(curr_estab("Tcp: CurrEstab\n"), None);
    }

    /// No table read when nothing is established; tcp6 optional; snmp or tcp unreadable is an
    /// error (the guard must not take an unreadable namespace for an idle one).
    #[test]
    fn read_tables_reads_only_what_it_needs() {
        use std::io::{Error, ErrorKind};
        let files = |estab: u32, tcp6: bool| {
            move |f: &str| -> std::io::Result<String> {
                match f {
                    "net/snmp" => Ok(format!("Tcp: CurrEstab\nTcp: {estab}\n")),
                    "net/tcp" => Ok("tcp\n".into()),
                    "net/tcp6" if tcp6 => Ok("tcp6\n".into()),
                    _ => Err(Error::from(ErrorKind::NotFound)),
                }
            }
        };
        let mut asked = vec![];
        let text = read_tables(|f| {
            asked.push(f.to_string());
            files(0, true)(f)
        })
        .unwrap();
        assert_eq!((text.as_str(), asked), ("", vec!["net/snmp".to_string()]));
        assert_eq!(read_tables(files(2, true)).unwrap(), "tcp\n\ntcp6\n");
        assert_eq!(read_tables(files(2, false)).unwrap(), "tcp\n");
        assert!(read_tables(|_| Err(Error::from(ErrorKind::NotFound))).is_err());
        // Two established, both the agent's own: no table; one more than ours: the tables.
        assert_eq!(read_tables_unless(files(2, true), |n| n <= 2).unwrap(), "");
        assert_eq!(
            read_tables_unless(files(3, true), |n| n <= 2).unwrap(),
            "tcp\n\ntcp6\n"
        );
    }

    #[test]
    fn listening_sockets_by_port() {
        // The IPv4 table listens on 6894 (0x1AEE); 40000 (0x9C40) is only a connection's port.
        assert!(listening(TCP, 6894));
        assert!(!listening(TCP, 40000));
        assert!(!listening(TCP, 80));
        // A dual-stack listener on `::` is in tcp6 only.
        assert!(listening(TCP6, 6894));
        assert!(listening(&format!("{TCP}\n{TCP6}"), 6894));
        assert!(!listening("", 6894));
        assert!(!listening(TCP.lines().next().unwrap(), 6894));
    }

    #[test]
    fn empty_and_header_only_tables() {
        assert!(parse_established("").is_empty());
        assert!(parse_established(TCP.lines().next().unwrap()).is_empty());
    }
}
