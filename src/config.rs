//! The cluster configuration: the seed's YAML format, its defaults, and validation.
//!
//! This module owns the translation from `cluster_config.yaml` to a [`ClusterConfig`] that the rest
//! of the program may trust. Invariants of a config returned by [`ClusterConfig::load`] or
//! [`ClusterConfig::from_yaml`]:
//! - node ids are unique and addresses (`ip_address:port`) are unique, ports are not 0;
//! - `0 < heartbeat_interval < election_timeout_range.min <= election_timeout_range.max`;
//! - `snapshot_catchup_entries <= SNAPSHOT_CATCHUP_ENTRIES_MAX`;
//! - `snapshot_log_percent <= SNAPSHOT_LOG_PERCENT_MAX`;
//! - `1 <= learners_max <= LEARNERS_MAX_LIMIT`;
//! - `watch_progress_notify_interval > 0`;
//! - `log_segment_size` is one the storage engine opens (`storage::format::check_segment_size`:
//!   a multiple of 8 in [64 KiB, 4 GiB - 8 bytes]), checked by the same function the log uses;
//! - a node's `metrics_address`, when given, is an `ip:port` (port not 0) used by no other
//!   metrics or gRPC address of the file;
//! - every field name was known: a typo is an error, never a silent fall-back to a default.
//!
//! ```yaml
//! nodes:
//!   - node_id: 1
//!     ip_address: "127.0.0.1"
//!     port: 18001
//!     metrics_address: "127.0.0.1:19001"  # optional: /metrics and health; absent: off
//! cluster_settings:              # optional, every field optional
//!   log_directory: "./raft_logs"
//!   log_segment_size: 67108864   # bytes
//!   max_entries_per_query: 1000
//!   election_timeout_range: { min: 150, max: 500 }  # milliseconds; either may be left out
//!   heartbeat_interval: 50       # milliseconds
//!   snapshot_entries: 10000      # a snapshot every this many applied entries; 0: never
//!   snapshot_catchup_entries: 5000  # entries kept before the newest snapshot
//!   snapshot_log_percent: 50     # and not before the log since the newest has grown by this % of its size
//!   watch_progress_notify_interval: 600000  # milliseconds; etcd's default (10 minutes)
//!   learners_max: 1              # learners at once (etcd's --max-learners)
//! tls:                           # optional; absent: plaintext (see TlsSettings, docs/SECURITY.md)
//!   cert_file: "certs/node{id}.pem"
//!   key_file: "certs/node{id}-key.pem"
//!   peer_ca_file: "certs/ca.pem"
//!   client_cert_auth: false
//!   client_ca_file: null         # null: the peer CA
//!   handshake_timeout_ms: 5000
//! ```

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::storage::format::{check_segment_size, entry_payload_max_bytes};
use crate::types::NodeId;

/// Election timeouts above a minute are almost certainly a unit mistake (seconds vs milliseconds).
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 60_000;
/// An upper bound on one replication message's entry count.
pub const MAX_ENTRIES_PER_QUERY_MAX: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The seed's message, verbatim: `Configuration file not found: missing_config.yaml`.
    #[error("Configuration file not found: {}", .0.display())]
    NotFound(PathBuf),
    #[error("Failed to read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Invalid configuration file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("Invalid configuration: {0}")]
    Invalid(String),
    /// The seed's message, verbatim: `Node ID 99 not found in configuration file`.
    #[error("Node ID {0} not found in configuration file")]
    NodeNotFound(u32),
}

/// One member of the cluster, as written in `nodes:`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: u32,
    pub ip_address: String,
    pub port: u16,
    /// See "Metrics" below: `ip:port` of the node's HTTP listener for `/metrics` and the health
    /// endpoints; absent (the default) means no listener and no recording.
    #[serde(default)]
    pub metrics_address: Option<String>,
}

impl NodeConfig {
    pub fn id(&self) -> NodeId {
        NodeId(self.node_id)
    }

    /// The node's gRPC address. Valid after validation (the IP was parsed then).
    pub fn address(&self) -> SocketAddr {
        let ip: IpAddr = self
            .ip_address
            .parse()
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        SocketAddr::new(ip, self.port)
    }
}

/// Either bound may be left out: it takes its default (150 and 500 ms), as every other setting.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ElectionTimeoutRange {
    /// Milliseconds.
    pub min: u64,
    /// Milliseconds.
    pub max: u64,
}

impl Default for ElectionTimeoutRange {
    fn default() -> Self {
        ElectionTimeoutRange { min: 150, max: 500 }
    }
}

/// Default of `snapshot_entries` (see README.md, "Snapshots and log compaction", for why).
pub const SNAPSHOT_ENTRIES_DEFAULT: u64 = 10_000;
/// Default of `snapshot_catchup_entries` (etcd's `SnapshotCatchUpEntries`).
pub const SNAPSHOT_CATCHUP_ENTRIES_DEFAULT: u64 = 5_000;

/// Most entries `snapshot_catchup_entries` may keep (a bound on the log a snapshot leaves).
pub const SNAPSHOT_CATCHUP_ENTRIES_MAX: u64 = 10_000_000;

/// Default of `snapshot_log_percent` (`node::snapshots::SnapshotPolicy::log_percent` says why).
pub const SNAPSHOT_LOG_PERCENT_DEFAULT: u32 = 50;
/// The most `snapshot_log_percent` may ask: a log 100 times the store's size between snapshots
/// is a unit mistake, not a policy (the restart replays all of it).
pub const SNAPSHOT_LOG_PERCENT_MAX: u32 = 10_000;

/// Default of `watch_progress_notify_interval` (etcd's: 10 minutes).
pub const WATCH_PROGRESS_NOTIFY_INTERVAL_MS_DEFAULT: u64 = 600_000;

/// Default of `learners_max` (etcd's `--max-learners`): one learner at a time.
pub const LEARNERS_MAX_DEFAULT: u32 = 1;
/// The most `learners_max` may allow (each learner costs the leader a replication stream).
pub const LEARNERS_MAX_LIMIT: u32 = 64;

/// `cluster_settings:` with the seed's defaults.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    pub log_directory: PathBuf,
    /// Bytes per segment file.
    pub log_segment_size: u64,
    pub max_entries_per_query: u64,
    pub election_timeout_range: ElectionTimeoutRange,
    /// Milliseconds.
    pub heartbeat_interval: u64,
    /// A snapshot every this many applied entries; 0 turns snapshots (and log compaction) off.
    pub snapshot_entries: u64,
    /// Entries the log keeps before its newest snapshot, so that a follower a little behind
    /// catches up from the log instead of receiving a snapshot.
    pub snapshot_catchup_entries: u64,
    /// And no snapshot before the payload bytes applied since the newest one reach this
    /// percentage of its size (0: `snapshot_entries` alone decides), so that a large store is
    /// not rewritten whole for a small amount of new log.
    pub snapshot_log_percent: u32,
    /// Milliseconds between the progress notifications of an idle watcher that asked for them
    /// (etcd's `--experimental-watch-progress-notify-interval`, 10 minutes by default).
    pub watch_progress_notify_interval: u64,
    /// The most learners the configuration may hold: `member add --learner` beyond it is
    /// refused with etcd's `etcdserver: too many learner members in cluster` (etcd's
    /// `--max-learners`, default 1). Read by the leader that serves the add.
    pub learners_max: u32,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            log_directory: PathBuf::from("./raft_logs"),
            log_segment_size: 64 * 1024 * 1024,
            max_entries_per_query: 1000,
            election_timeout_range: ElectionTimeoutRange::default(),
            heartbeat_interval: 50,
            snapshot_entries: SNAPSHOT_ENTRIES_DEFAULT,
            snapshot_catchup_entries: SNAPSHOT_CATCHUP_ENTRIES_DEFAULT,
            snapshot_log_percent: SNAPSHOT_LOG_PERCENT_DEFAULT,
            watch_progress_notify_interval: WATCH_PROGRESS_NOTIFY_INTERVAL_MS_DEFAULT,
            learners_max: LEARNERS_MAX_DEFAULT,
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub cluster_settings: ClusterSettings,
    /// `tls:`; `None` (the section is absent): every connection is plaintext.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

// ---- tls: (issue 16) --------------------------------------------------------------------------

/// The longest a TLS handshake may take (a unit mistake guard, as for the election timeout).
pub const TLS_HANDSHAKE_TIMEOUT_MS_MAX: u64 = 60_000;

/// `tls:`: TLS on the node's one gRPC port, for clients and peers alike (docs/SECURITY.md).
///
/// Paths may contain `{id}`, replaced by the node's id, so that one file serves every node
/// ([`TlsSettings::path_for`]). Every field has a default (the layout docs/SECURITY.md
/// generates), so `tls: {}` turns TLS on with `certs/`. Relative paths are relative to the
/// node's working directory, as `log_directory` is.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// This node's certificate chain (PEM, leaf first). Served to clients and peers, and
    /// presented as the client certificate on this node's own connections to peers, so it must
    /// name the member (DNS SAN `raftlog-node-<id>`) and the addresses clients dial (IP SANs).
    pub cert_file: String,
    /// The private key of `cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// The CA (PEM, one or more certificates) every member's certificate chains to. Peers are
    /// authenticated against it in both directions.
    pub peer_ca_file: String,
    /// Clients must present a certificate chaining to `client_ca_file` (etcd's
    /// `--client-cert-auth`); `false`: clients may connect without one.
    pub client_cert_auth: bool,
    /// The CA client certificates chain to; `None`: `peer_ca_file`.
    pub client_ca_file: Option<String>,
    /// A connection that has not finished its handshake by then is closed (a plaintext client
    /// or a silent one must not hold a connection open).
    pub handshake_timeout_ms: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert_file: "certs/node{id}.pem".into(),
            key_file: "certs/node{id}-key.pem".into(),
            peer_ca_file: "certs/ca.pem".into(),
            client_cert_auth: false,
            client_ca_file: None,
            handshake_timeout_ms: 5_000,
        }
    }
}

impl TlsSettings {
    /// `path` with `{id}` replaced by `node_id`.
    pub fn path_for(path: &str, node_id: u32) -> PathBuf {
        PathBuf::from(path.replace("{id}", &node_id.to_string()))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        for (field, value) in [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("peer_ca_file", Some(&self.peer_ca_file)),
            ("client_ca_file", self.client_ca_file.as_ref()),
        ] {
            if value.is_some_and(|v| v.is_empty()) {
                return invalid(format!("tls.{field}: must not be empty"));
            }
        }
        if !(1..=TLS_HANDSHAKE_TIMEOUT_MS_MAX).contains(&self.handshake_timeout_ms) {
            return invalid(format!(
                "tls.handshake_timeout_ms: {} is outside [1, {TLS_HANDSHAKE_TIMEOUT_MS_MAX}]",
                self.handshake_timeout_ms
            ));
        }
        Ok(())
    }
}

// ---- end of tls: ------------------------------------------------------------------------------

impl ClusterConfig {
    /// Reads, parses and validates the file at `path`.
    ///
    /// # Errors
    /// `NotFound` if the file does not exist, `Read` for other I/O errors, `Parse` for YAML that
    /// does not match the format (unknown fields included), `Invalid` for values that break the
    /// module's invariants.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotFound(path.to_path_buf()))
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text (errors name the path as `<input>`).
    pub fn from_yaml(text: &str) -> Result<ClusterConfig, ConfigError> {
        let config: ClusterConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<input>"),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every invariant listed in the module docs; the message names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.nodes.is_empty() {
            return invalid("nodes: at least one node is required".into());
        }
        let mut ids = HashSet::new();
        let mut addresses: HashMap<SocketAddr, u32> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            // 0 is reserved: the state file stores "voted for nobody" as 0 (docs/FORMAT.md).
            if node.node_id == 0 {
                return invalid(format!("nodes[{i}].node_id: 0 is reserved; ids start at 1"));
            }
            if !ids.insert(node.node_id) {
                return invalid(format!(
                    "nodes[{i}].node_id: duplicate node id {}",
                    node.node_id
                ));
            }
            let ip: IpAddr = match node.ip_address.parse() {
                Ok(ip) => ip,
                Err(_) => {
                    return invalid(format!(
                        "nodes[{i}].ip_address: {:?} is not an IPv4 or IPv6 address",
                        node.ip_address
                    ))
                }
            };
            if node.port == 0 {
                return invalid(format!(
                    "nodes[{i}].port: port 0 is not allowed (node {})",
                    node.node_id
                ));
            }
            let address = SocketAddr::new(ip, node.port);
            if let Some(other) = addresses.insert(address, node.node_id) {
                return invalid(format!(
                    "nodes[{i}]: address {address} of node {} is already used by node {other}",
                    node.node_id
                ));
            }
        }

        let s = &self.cluster_settings;
        if s.log_directory.as_os_str().is_empty() {
            return invalid("cluster_settings.log_directory: must not be empty".into());
        }
        if let Err(e) = check_segment_size(s.log_segment_size) {
            return invalid(format!("cluster_settings.log_segment_size: {e}"));
        }
        if !(1..=MAX_ENTRIES_PER_QUERY_MAX).contains(&s.max_entries_per_query) {
            return invalid(format!(
                "cluster_settings.max_entries_per_query: {} is outside [1, {MAX_ENTRIES_PER_QUERY_MAX}]",
                s.max_entries_per_query
            ));
        }
        let range = s.election_timeout_range;
        if range.min == 0 {
            return invalid(
                "cluster_settings.election_timeout_range.min: must be at least 1 ms".into(),
            );
        }
        if range.min > range.max {
            return invalid(format!(
                "cluster_settings.election_timeout_range: min ({} ms) must not exceed max ({} ms; \
                 a bound left out takes its default, min {} ms and max {} ms)",
                range.min,
                range.max,
                ElectionTimeoutRange::default().min,
                ElectionTimeoutRange::default().max
            ));
        }
        if range.max > ELECTION_TIMEOUT_MS_MAX {
            return invalid(format!(
                "cluster_settings.election_timeout_range.max: {} ms is above {ELECTION_TIMEOUT_MS_MAX} ms (milliseconds, not seconds?)",
                range.max
            ));
        }
        if s.heartbeat_interval == 0 {
            return invalid("cluster_settings.heartbeat_interval: must be at least 1 ms".into());
        }
        if s.heartbeat_interval >= range.min {
            return invalid(format!(
                "cluster_settings.heartbeat_interval: {} ms must be below election_timeout_range.min ({} ms)",
                s.heartbeat_interval, range.min
            ));
        }
        if s.watch_progress_notify_interval == 0 {
            return invalid(
                "cluster_settings.watch_progress_notify_interval: must be above 0".into(),
            );
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if s.learners_max == 0 || s.learners_max > LEARNERS_MAX_LIMIT {
            return invalid(format!(
                "cluster_settings.learners_max: {} is outside 1..={LEARNERS_MAX_LIMIT} (members \
                 are added as learners first, one at a time by default)",
                s.learners_max
            ));
        }
        if s.snapshot_catchup_entries > SNAPSHOT_CATCHUP_ENTRIES_MAX {
            return invalid(format!(
                "cluster_settings.snapshot_catchup_entries: {} is above the limit of {}",
                s.snapshot_catchup_entries, SNAPSHOT_CATCHUP_ENTRIES_MAX
            ));
        }
        if s.snapshot_log_percent > SNAPSHOT_LOG_PERCENT_MAX {
            return invalid(format!(
                "cluster_settings.snapshot_log_percent: {} is above the limit of {} (the log \
                 between two snapshots would be over 100 times the store's size)",
                s.snapshot_log_percent, SNAPSHOT_LOG_PERCENT_MAX
            ));
        }
        self.validate_metrics()
    }

    // ---- Metrics (issue 16): the per-node `metrics_address` -------------------------------------
    //
    // Like etcd's `--listen-metrics-urls`: Prometheus and health checks get their own listener,
    // so a scraper needs no access to the client or peer port. Off unless configured; the sample
    // config puts it on loopback. Addresses must parse and differ from every gRPC address and
    // from each other (two nodes of one host cannot share a port).

    fn validate_metrics(&self) -> Result<(), ConfigError> {
        let mut used: HashMap<SocketAddr, String> = self
            .nodes
            .iter()
            .map(|n| {
                (
                    n.address(),
                    format!("the gRPC address of node {}", n.node_id),
                )
            })
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(text) = &node.metrics_address else {
                continue;
            };
            let address: SocketAddr = text.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "nodes[{i}].metrics_address: {text:?} is not an ip:port address \
                     (e.g. \"127.0.0.1:19001\")"
                ))
            })?;
            if address.port() == 0 {
                return Err(ConfigError::Invalid(format!(
                    "nodes[{i}].metrics_address: port 0 is not allowed (node {})",
                    node.node_id
                )));
            }
            if let Some(other) = used.insert(
                address,
                format!("the metrics address of node {}", node.node_id),
            ) {
                return Err(ConfigError::Invalid(format!(
                    "nodes[{i}].metrics_address: {address} is already {other}"
                )));
            }
        }
        Ok(())
    }

    /// Where node `id` serves `/metrics` and the health endpoints, if it does (validated).
    pub fn metrics_address(&self, id: u32) -> Option<SocketAddr> {
        let node = self.nodes.iter().find(|n| n.node_id == id)?;
        node.metrics_address.as_deref()?.parse().ok()
    }

    // ---- end of the metrics block ------------------------------------------------------------

    /// The entry for `id`.
    ///
    /// # Errors
    /// `NodeNotFound` (the seed's message) if no node has that id.
    pub fn node(&self, id: u32) -> Result<&NodeConfig, ConfigError> {
        self.nodes
            .iter()
            .find(|n| n.node_id == id)
            .ok_or(ConfigError::NodeNotFound(id))
    }

    /// `<log_directory>/node_<id>`: where one node keeps its state file and segments.
    pub fn node_directory(&self, id: u32) -> PathBuf {
        self.cluster_settings
            .log_directory
            .join(format!("node_{id}"))
    }

    /// The cluster's id: a hash (FNV-1a, 64 bits) of the sorted member list (`<id>=<address>`
    /// lines). Stable for a given member list; the etcd API reports it, and every node's state
    /// file records it (docs/FORMAT.md, "Identity"), so a data directory of another cluster is
    /// refused.
    pub fn cluster_id(&self) -> u64 {
        let mut members: Vec<(u32, SocketAddr)> = self
            .nodes
            .iter()
            .map(|n| (n.node_id, n.address()))
            .collect();
        members.sort();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (id, address) in members {
            for b in format!("{id}={address}\n").bytes() {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        hash
    }

    /// The largest payload one log entry may carry with this config's segment size
    /// (`storage::format::entry_payload_max_bytes`): the node derives every request size limit
    /// from it, so no client request can reach a durable write that must fail.
    pub fn entry_payload_max_bytes(&self) -> usize {
        entry_payload_max_bytes(self.cluster_settings.log_segment_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_NODES: &str = "nodes:
  - node_id: 1
    ip_address: \"127.0.0.1\"
    port: 18001
  - node_id: 2
    ip_address: \"127.0.0.1\"
    port: 18002
  - node_id: 3
    ip_address: \"127.0.0.1\"
    port: 18003
";

    fn with_settings(settings: &str) -> String {
        format!("{THREE_NODES}cluster_settings:\n{settings}")
    }

    fn invalid_message(text: &str) -> String {
        match ClusterConfig::from_yaml(text) {
            Err(ConfigError::Invalid(m)) => m,
            other => panic!("expected an Invalid error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_seed() {
        let config = ClusterConfig::from_yaml(THREE_NODES).expect("valid config");
        let s = &config.cluster_settings;
        assert_eq!(s.log_directory, PathBuf::from("./raft_logs"));
        assert_eq!(s.log_segment_size, 67_108_864);
        assert_eq!(s.max_entries_per_query, 1000);
        assert_eq!(
            s.election_timeout_range,
            ElectionTimeoutRange { min: 150, max: 500 }
        );
        assert_eq!(s.heartbeat_interval, 50);
        assert_eq!(
            config.node(2).expect("node 2").address().to_string(),
            "127.0.0.1:18002"
        );
        assert_eq!(
            config.node_directory(3),
            PathBuf::from("./raft_logs/node_3")
        );
    }

    #[test]
    fn partial_settings_keep_the_other_defaults() {
        let config =
            ClusterConfig::from_yaml(&with_settings("  heartbeat_interval: 75\n")).expect("valid");
        assert_eq!(config.cluster_settings.heartbeat_interval, 75);
        assert_eq!(config.cluster_settings.max_entries_per_query, 1000);
    }

    #[test]
    fn unknown_fields_are_rejected_not_defaulted() {
        let text = with_settings("  heartbeat_intervall: 75\n");
        match ClusterConfig::from_yaml(&text) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains("heartbeat_intervall"), "{message}")
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        let text = THREE_NODES.replace("port: 18003", "port: 18003\n    portt: 1");
        assert!(matches!(
            ClusterConfig::from_yaml(&text),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn duplicate_ids_and_addresses_are_rejected() {
        let m = invalid_message(&THREE_NODES.replace("node_id: 3", "node_id: 2"));
        assert!(
            m.contains("nodes[2].node_id") && m.contains("duplicate"),
            "{m}"
        );
        let m = invalid_message(&THREE_NODES.replace("port: 18003", "port: 18002"));
        assert!(m.contains("127.0.0.1:18002") && m.contains("node 2"), "{m}");
    }

    #[test]
    fn port_zero_and_bad_ip_are_rejected() {
        let m = invalid_message(&THREE_NODES.replace("port: 18001", "port: 0"));
        assert!(m.contains("nodes[0].port"), "{m}");
        let m = invalid_message(&THREE_NODES.replace(
            "\"127.0.0.1\"\n    port: 18002",
            "\"localhostt\"\n    port: 18002",
        ));
        assert!(m.contains("nodes[1].ip_address"), "{m}");
    }

    #[test]
    fn timing_relations_are_checked() {
        let m = invalid_message(&with_settings(
            "  election_timeout_range:\n    min: 600\n    max: 500\n",
        ));
        assert!(
            m.contains("election_timeout_range") && m.contains("600"),
            "{m}"
        );
        let m = invalid_message(&with_settings("  heartbeat_interval: 150\n"));
        assert!(m.contains("heartbeat_interval") && m.contains("150"), "{m}");
        let m = invalid_message(&with_settings("  heartbeat_interval: 0\n"));
        assert!(m.contains("heartbeat_interval"), "{m}");
    }

    #[test]
    fn segment_size_and_batch_limits_are_checked() {
        let m = invalid_message(&with_settings("  log_segment_size: 4096\n"));
        assert!(m.contains("log_segment_size"), "{m}");
        // Sizes the log itself would refuse at open are refused here, by the same check: 4 GiB
        // (offsets inside a segment are u32) and a size that is not a multiple of 8.
        let m = invalid_message(&with_settings("  log_segment_size: 4294967296\n"));
        assert!(
            m.contains("log_segment_size") && m.contains("4294967296"),
            "{m}"
        );
        let m = invalid_message(&with_settings("  log_segment_size: 1048577\n"));
        assert!(
            m.contains("log_segment_size") && m.contains("multiple of 8"),
            "{m}"
        );
        let ok = ClusterConfig::from_yaml(&with_settings("  log_segment_size: 4294967288\n"))
            .expect("the largest segment size is accepted");
        assert!(ok.entry_payload_max_bytes() > 0);
        let small = ClusterConfig::from_yaml(&with_settings("  log_segment_size: 1048576\n"))
            .expect("1 MiB segments");
        assert_eq!(small.entry_payload_max_bytes(), 1048576 - 64 - 40);
        let m = invalid_message(&with_settings("  max_entries_per_query: 0\n"));
        assert!(m.contains("max_entries_per_query"), "{m}");
    }

    #[test]
    fn learners_max_defaults_to_one_and_is_bounded() {
        let config = ClusterConfig::from_yaml(THREE_NODES).expect("valid");
        assert_eq!(config.cluster_settings.learners_max, 1);
        let config =
            ClusterConfig::from_yaml(&with_settings("  learners_max: 3\n")).expect("valid");
        assert_eq!(config.cluster_settings.learners_max, 3);
        for bad in ["0", "65"] {
            let m = invalid_message(&with_settings(&format!("  learners_max: {bad}\n")));
            assert!(m.contains("learners_max") && m.contains(bad), "{m}");
        }
    }

    #[test]
    fn snapshot_log_percent_defaults_to_fifty_and_is_bounded() {
        let config = ClusterConfig::from_yaml(THREE_NODES).expect("valid");
        assert_eq!(config.cluster_settings.snapshot_log_percent, 50);
        let config =
            ClusterConfig::from_yaml(&with_settings("  snapshot_log_percent: 0\n")).expect("valid");
        assert_eq!(config.cluster_settings.snapshot_log_percent, 0);
        let m = invalid_message(&with_settings("  snapshot_log_percent: 10001\n"));
        assert!(
            m.contains("snapshot_log_percent") && m.contains("10001"),
            "{m}"
        );
    }

    #[test]
    fn missing_node_uses_the_seed_message() {
        let config = ClusterConfig::from_yaml(THREE_NODES).expect("valid");
        let err = config.node(99).expect_err("node 99 is absent");
        assert_eq!(
            err.to_string(),
            "Node ID 99 not found in configuration file"
        );
    }

    #[test]
    fn node_id_zero_is_rejected() {
        let m = invalid_message(&THREE_NODES.replace("node_id: 2", "node_id: 0"));
        assert!(
            m.contains("nodes[1].node_id") && m.contains("reserved"),
            "{m}"
        );
    }

    #[test]
    fn tls_is_off_by_default_and_every_tls_field_defaults() {
        let config = ClusterConfig::from_yaml(THREE_NODES).expect("valid");
        assert_eq!(config.tls, None);
        let config = ClusterConfig::from_yaml(&format!("{THREE_NODES}tls: {{}}\n")).expect("valid");
        let tls = config.tls.expect("tls: {} turns TLS on");
        assert_eq!(tls, TlsSettings::default());
        assert_eq!(
            TlsSettings::path_for(&tls.cert_file, 2),
            PathBuf::from("certs/node2.pem")
        );
        let text =
            format!("{THREE_NODES}tls:\n  client_cert_auth: true\n  client_ca_file: c.pem\n");
        let tls = ClusterConfig::from_yaml(&text)
            .expect("valid")
            .tls
            .expect("on");
        assert!(tls.client_cert_auth);
        assert_eq!(tls.client_ca_file.as_deref(), Some("c.pem"));
        let m = invalid_message(&format!("{THREE_NODES}tls:\n  handshake_timeout_ms: 0\n"));
        assert!(m.contains("tls.handshake_timeout_ms"), "{m}");
        let m = invalid_message(&format!("{THREE_NODES}tls:\n  key_file: \"\"\n"));
        assert!(m.contains("tls.key_file"), "{m}");
        assert!(matches!(
            ClusterConfig::from_yaml(&format!("{THREE_NODES}tls:\n  cert: x\n")),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn one_election_bound_alone_takes_the_other_default() {
        let config =
            ClusterConfig::from_yaml(&with_settings("  election_timeout_range: {min: 200}\n"))
                .expect("min alone is accepted");
        assert_eq!(
            config.cluster_settings.election_timeout_range,
            ElectionTimeoutRange { min: 200, max: 500 }
        );
        let config =
            ClusterConfig::from_yaml(&with_settings("  election_timeout_range: {max: 900}\n"))
                .expect("max alone is accepted");
        assert_eq!(config.cluster_settings.election_timeout_range.min, 150);
        // A bound alone that crosses the other's default is refused, and the message says so.
        let m = invalid_message(&with_settings("  election_timeout_range: {min: 600}\n"));
        assert!(m.contains("600") && m.contains("default"), "{m}");
    }

    #[test]
    fn metrics_addresses_are_optional_parsed_and_distinct() {
        let config = ClusterConfig::from_yaml(THREE_NODES).expect("valid");
        assert_eq!(config.metrics_address(1), None);
        let text = THREE_NODES.replace(
            "port: 18001",
            "port: 18001\n    metrics_address: \"127.0.0.1:19001\"",
        );
        let config = ClusterConfig::from_yaml(&text).expect("valid");
        assert_eq!(
            config.metrics_address(1).map(|a| a.to_string()),
            Some("127.0.0.1:19001".to_string())
        );
        let clash = THREE_NODES.replace(
            "port: 18001",
            "port: 18001\n    metrics_address: \"127.0.0.1:18002\"",
        );
        let m = invalid_message(&clash);
        assert!(
            m.contains("nodes[0].metrics_address") && m.contains("node 2"),
            "{m}"
        );
        let bad = THREE_NODES.replace(
            "port: 18001",
            "port: 18001\n    metrics_address: \"localhost\"",
        );
        let m = invalid_message(&bad);
        assert!(m.contains("nodes[0].metrics_address"), "{m}");
    }

    #[test]
    fn empty_node_list_is_rejected() {
        let m = invalid_message("nodes: []\n");
        assert!(m.contains("nodes"), "{m}");
    }
}
