//! Where the nodes' packets go: one network namespace per node, joined by a bridge that the
//! runner (the clients) also sits on, and nftables rules inside each namespace for partitions.
//!
//! ```text
//!   runner (clients) 10.X.Y.254 ── bridge chaos<tag> ─┬─ veth ── netns chaos<tag>n1: 10.X.Y.1
//!                                                     ├─ veth ── netns chaos<tag>n2: 10.X.Y.2
//!                                                     └─ veth ── netns chaos<tag>n3: 10.X.Y.3
//! ```
//!
//! A partition drops, in the receiving node's namespace, packets whose source is another node's
//! address; the bridge address (the clients) is never dropped, so a node cut off from its peers
//! stays reachable by clients (the "isolated leader" case). A one-way cut `a -> b` drops only what
//! `a` sends to `b` (TCP then cannot open a connection either way, but `b`'s bytes still reach `a`),
//! as iptables-based partitions in Jepsen do.
//!
//! Invariants: [`Network::create`] either builds everything or removes what it built; `Drop`
//! deletes the namespaces and the bridge (which removes the veths and the rules with them).
//! Without root (or without `ip`/`nft`), [`Network::loopback`] gives every node 127.0.0.1 and
//! partitions are refused.

use std::net::Ipv4Addr;
use std::process::Command;

/// Why the network could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
    #[error("partitions need network namespaces (run as root with `ip` and `nft` installed)")]
    NoNamespaces,
}

/// The nodes' network.
pub struct Network {
    /// Per node (index 0 is node 1): its namespace (None on loopback) and address.
    nodes: Vec<(Option<String>, Ipv4Addr)>,
    bridge: Option<String>,
    client_ip: Ipv4Addr,
}

/// Runs a command; its output on failure.
fn run(args: &[&str]) -> Result<(), NetError> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| NetError::Command {
            command: args.join(" "),
            output: e.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            command: args.join(" "),
            output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Runs `nft -f -` inside a namespace with `script` on stdin.
fn nft(ns: &str, script: &str) -> Result<(), NetError> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Command {
            command: format!("ip netns exec {ns} nft -f -"),
            output: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let output = child.wait_with_output().map_err(|e| NetError::Command {
        command: format!("ip netns exec {ns} nft -f -"),
        output: e.to_string(),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            command: format!("ip netns exec {ns} nft -f - <<< {script:?}"),
            output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Whether namespaces can be made here: root, `ip` and `nft`.
pub fn namespaces_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    root && has("nft") && Command::new("ip").arg("-V").output().is_ok()
}

/// A subnet index for a new network: `preferred`, or the next one (wrapping) that no interface of
/// this machine uses yet. Two runs on one subnet would route each other's clients to the wrong
/// nodes (seen once: a CI test's clients read another run's keys), so the addresses in use are
/// looked up, not guessed from a process id alone.
pub fn free_subnet(preferred: u8) -> u8 {
    let used = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    (0..250u16)
        .map(|step| ((u16::from(preferred) + step) % 250) as u8)
        .find(|subnet| !used.contains(&format!(" 10.213.{subnet}.")))
        .unwrap_or(preferred)
}

impl Network {
    /// Every node on 127.0.0.1 (no partitions).
    pub fn loopback(size: usize) -> Network {
        Network {
            nodes: vec![(None, Ipv4Addr::LOCALHOST); size],
            bridge: None,
            client_ip: Ipv4Addr::LOCALHOST,
        }
    }

    /// One namespace per node on a new bridge. `tag` (a few letters or digits) keeps the names of
    /// concurrent runs apart; the subnet is 10.213.<subnet>.0/24.
    pub fn create(size: usize, tag: &str, subnet: u8) -> Result<Network, NetError> {
        let bridge = format!("ch{tag}");
        let mut net = Network {
            nodes: Vec::new(),
            bridge: None,
            client_ip: Ipv4Addr::new(10, 213, subnet, 254),
        };
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        net.bridge = Some(bridge.clone());
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.client_ip),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for i in 1..=size {
            let ns = format!("ch{tag}n{i}");
            let ip = Ipv4Addr::new(10, 213, subnet, i as u8);
            run(&["ip", "netns", "add", &ns])?;
            net.nodes.push((Some(ns.clone()), ip));
            let outside = format!("ch{tag}v{i}");
            let inside = format!("ch{tag}p{i}");
            run(&[
                "ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            run(&["ip", "link", "set", &inside, "netns", &ns])?;
            run(&["ip", "link", "set", &outside, "master", &bridge])?;
            run(&["ip", "link", "set", &outside, "up"])?;
            let in_ns = |args: &[&str]| {
                let mut all = vec!["ip", "netns", "exec", ns.as_str()];
                all.extend_from_slice(args);
                run(&all)
            };
            in_ns(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &inside])?;
            in_ns(&["ip", "link", "set", &inside, "up"])?;
            in_ns(&["ip", "link", "set", "lo", "up"])?;
            nft(
                &ns,
                "table inet chaos {\n chain input {\n  type filter hook input priority 0;\n }\n}\n",
            )?;
        }
        Ok(net)
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Node `id`'s address (ids from 1).
    pub fn ip(&self, id: u32) -> Ipv4Addr {
        self.nodes[id as usize - 1].1
    }

    /// The namespace node `id` runs in (None on loopback).
    pub fn namespace(&self, id: u32) -> Option<&str> {
        self.nodes[id as usize - 1].0.as_deref()
    }

    /// The clients' address.
    pub fn client_ip(&self) -> Ipv4Addr {
        self.client_ip
    }

    pub fn partitions_supported(&self) -> bool {
        self.bridge.is_some()
    }

    /// Drops every packet node `from` sends to node `to` (in `to`'s namespace).
    pub fn cut(&self, from: u32, to: u32) -> Result<(), NetError> {
        let ns = self.namespace(to).ok_or(NetError::NoNamespaces)?;
        nft(
            ns,
            &format!(
                "add rule inet chaos input ip saddr {} drop\n",
                self.ip(from)
            ),
        )
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), NetError> {
        for (ns, _) in &self.nodes {
            if let Some(ns) = ns {
                nft(ns, "flush chain inet chaos input\n")?;
            }
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for (ns, _) in &self.nodes {
            if let Some(ns) = ns {
                let _ = run(&["ip", "netns", "del", ns]);
            }
        }
        if let Some(bridge) = &self.bridge {
            let _ = run(&["ip", "link", "del", bridge]);
        }
    }
}
