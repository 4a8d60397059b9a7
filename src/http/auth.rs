//! Who may write (docs/safety.md#http-writes): with `http.token`, a matching bearer token
//! (compared in constant time); without one, loopback only.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};

use super::reply::{error, Resp};

/// docs/safety.md#http-writes: a token requires `Authorization: Bearer <token>`; without one,
/// writes come only from loopback.
pub(super) fn authorize(
    req: &Request<Incoming>,
    peer: SocketAddr,
    token: Option<&str>,
) -> Result<(), Resp> {
    match token {
        Some(t) => {
            let given = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if constant_time_eq(given.as_bytes(), t.as_bytes()) {
                Ok(())
            } else {
                Err(error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token",
                ))
            }
        }
        None if is_loopback(peer) => Ok(()),
        None => Err(error(
            StatusCode::FORBIDDEN,
            "writes are accepted only from loopback when no http.token is set",
        )),
    }
}

pub(super) fn is_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback("[::1]:1".parse().unwrap()));
        assert!(is_loopback("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1:1".parse().unwrap()));
    }

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
