//! Who listens on a TCP port of the host: read from `/proc/net/tcp` and `/proc/net/tcp6` (the
//! namespace of the reading thread), the owner found by the socket's inode among
//! `/proc/<pid>/fd`. Publishing a port somebody already listens on would take its new
//! connections away from it, so osvm refuses, naming the owner.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A listening TCP socket of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The address it is bound to (`0.0.0.0` or `::`: every address).
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// The process that holds it, with its command name, when it could be found.
    pub owner: Option<(i32, String)>,
}

impl Listener {
    /// Whether it takes connections to `addr` (IPv4) on its port.
    pub fn covers(&self, addr: Ipv4Addr) -> bool {
        match self.addr {
            IpAddr::V4(a) => a.is_unspecified() || addr.is_unspecified() || a == addr,
            // A dual-stack `::` listener takes IPv4 connections too; a v4-mapped one its own.
            IpAddr::V6(a) => {
                a.is_unspecified() || addr.is_unspecified() || a.to_ipv4_mapped() == Some(addr)
            }
        }
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.owner {
            Some((pid, comm)) => write!(f, "{comm} (pid {pid})"),
            None => f.write_str("a process osvm cannot name"),
        }
    }
}

/// The host's listening TCP sockets on `port`.
pub fn on_port(port: u16) -> Vec<Listener> {
    let mut found: Vec<(IpAddr, u64)> = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        found.extend(
            parse(&text, v6)
                .into_iter()
                .filter(|(_, p, _)| *p == port)
                .map(|(addr, _, inode)| (addr, inode)),
        );
    }
    if found.is_empty() {
        return Vec::new();
    }
    let owners = owners(&found.iter().map(|(_, i)| *i).collect::<Vec<_>>());
    found
        .into_iter()
        .map(|(addr, inode)| Listener {
            addr,
            port,
            owner: owners
                .iter()
                .find(|(i, _)| *i == inode)
                .map(|(_, o)| o.clone()),
        })
        .collect()
}

/// The listening sockets in a `/proc/net/tcp{,6}` table: address, port, inode.
fn parse(text: &str, v6: bool) -> Vec<(IpAddr, u16, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let (addr, port) = f[1].split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let addr = if v6 {
                // Four 32-bit words, each in host (little-endian) order.
                let mut bytes = [0u8; 16];
                for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                    let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                    chunk.copy_from_slice(&word.to_le_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            } else {
                IpAddr::V4(Ipv4Addr::from(
                    u32::from_str_radix(addr, 16).ok()?.to_le_bytes(),
                ))
            };
            Some((addr, port, f[9].parse().ok()?))
        })
        .collect()
}

/// The (pid, command name) holding each socket inode of `inodes` that could be found.
fn owners(inodes: &[u64]) -> Vec<(u64, (i32, String))> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) && !out.iter().any(|(i, _)| *i == inode) {
                let comm = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_default();
                out.push((inode, (pid, comm)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_read_from_the_kernels_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1\n   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 99 1\n";
        assert_eq!(
            parse(v4, false),
            [
                (IpAddr::V4(Ipv4Addr::LOCALHOST), 8080, 4242),
                (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 22, 17)
            ],
            "only LISTEN (0A) sockets"
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 78 1\n";
        assert_eq!(
            parse(v6, true),
            [
                (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 8080, 77),
                (IpAddr::V6(Ipv6Addr::LOCALHOST), 80, 78)
            ]
        );
    }

    #[test]
    fn a_wildcard_listener_covers_every_address_and_a_specific_one_its_own() {
        let l = |addr: &str| Listener {
            addr: addr.parse().unwrap(),
            port: 80,
            owner: None,
        };
        let local = Ipv4Addr::LOCALHOST;
        let other = Ipv4Addr::new(192, 0, 2, 1);
        assert!(l("0.0.0.0").covers(local) && l("0.0.0.0").covers(other));
        assert!(l("::").covers(local));
        assert!(l("127.0.0.1").covers(local) && !l("127.0.0.1").covers(other));
        assert!(
            l("127.0.0.1").covers(Ipv4Addr::UNSPECIFIED),
            "publishing on 0.0.0.0"
        );
        assert!(!l("::1").covers(local));
    }

    #[test]
    fn this_process_is_found_as_the_owner_of_its_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = on_port(port);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            found[0].owner.as_ref().map(|(pid, _)| *pid),
            Some(std::process::id() as i32)
        );
    }
}
