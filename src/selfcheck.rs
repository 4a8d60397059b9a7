//! `acestream-agent healthcheck`: asks the agent running on `http.listen` whether it is ready
//! (`GET /readyz`), for a container's `HEALTHCHECK`, which has no shell or curl to do it with in
//! an image built `FROM scratch`. Plain blocking std networking: a process that lives a moment.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Deadline of the whole exchange.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Where to reach an agent listening on `listen`: an unspecified address (`0.0.0.0`, `::`) is
/// reached on loopback of its family.
pub fn target(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// `Ok(body)` when `/readyz` answers 200; the reason otherwise (503 and its body, refused,
/// timed out).
pub fn ready(listen: SocketAddr) -> Result<String, String> {
    let addr = target(listen);
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /readyz HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut reply = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut reply)
        .map_err(|e| format!("{addr}: {e}"))?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    if status == 200 {
        Ok(body.trim().to_string())
    } else {
        Err(format!("{addr}/readyz: HTTP {status} {}", body.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_reached_on_loopback() {
        assert_eq!(
            target("0.0.0.0:9477".parse().unwrap()),
            "127.0.0.1:9477".parse().unwrap()
        );
        assert_eq!(
            target("[::]:9477".parse().unwrap()),
            "[::1]:9477".parse().unwrap()
        );
        assert_eq!(
            target("10.0.0.2:80".parse().unwrap()),
            "10.0.0.2:80".parse().unwrap()
        );
    }

    #[test]
    fn ready_only_on_200() {
        let serve = |reply: &'static str| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            std::thread::spawn(move || {
                let (mut c, _) = l.accept().unwrap();
                // The whole request first: closing with unread input makes the kernel send a
                // reset, which can destroy the reply before the client has read it.
                let mut req = vec![];
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(reply.as_bytes());
            });
            addr
        };
        let ok = serve("HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\n{\"ready\":true}");
        assert_eq!(ready(ok).unwrap(), "{\"ready\":true}");
        let down = serve("HTTP/1.1 503 Service Unavailable\r\n\r\n{\"ready\":false}");
        assert!(ready(down).unwrap_err().contains("HTTP 503"));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(ready(closed).is_err());
    }
}
