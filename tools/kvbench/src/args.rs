//! Command-line arguments: what the user can ask for, and the validated [`Plan`] the load
//! generator runs.
//!
//! Invariant: every `Plan` field is in range (at least one client and one connection, no more
//! connections than clients, a positive duration or total, a key space the key size can encode),
//! so the load code never has to re-check its inputs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::keys::key_space_max;

/// Values are bounded so that a typo cannot make kvbench allocate gigabytes: etcd's own request
/// limit is 1.5 MiB, so nothing larger is a useful request anyway.
pub const VALUE_BYTES_MAX: usize = 1536 * 1024;
/// Keys share the request limit with values; etcd has no lower key limit of its own.
pub const KEY_BYTES_MAX: usize = 64 * 1024;
/// More worker threads than this only adds context switches for a client of this kind.
pub const THREADS_MAX: usize = 256;
/// The run length when neither `--total` nor `--duration` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// An etcd v3 KV load generator: puts or ranges from N clients over M HTTP/2 connections,
/// closed loop or at a fixed offered rate; prints throughput and latency percentiles.
#[derive(Parser, Debug, Clone)]
#[command(name = "kvbench", version)]
pub struct Args {
    /// Endpoints, comma separated: `host:port` or `http://host:port`.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// `leader`: send every request to the leader's endpoint (found with Maintenance.Status on
    /// each endpoint); `all`: spread the connections over the endpoints round-robin.
    #[arg(long, value_enum, default_value_t = Target::Leader)]
    pub target: Target,
    /// Concurrent clients; each has at most one request outstanding.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// HTTP/2 connections; client i uses connection i mod conns.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Stop after this many measured requests (successful or not).
    #[arg(long, conflicts_with = "duration")]
    pub total: Option<u64>,
    /// Measure for this many seconds (default 10 when --total is not given).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Run the same load for this many seconds first, without recording it.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Key size in bytes (keys are lowercase hex of the key number, zero padded).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes (puts).
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Keys are numbered 0..key-space.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// `seq`: request n uses key n mod key-space (n counts over all clients), so a run of at least
    /// key-space puts writes every key; `random`: uniform over the key space.
    #[arg(long, value_enum, default_value_t = KeyOrder::Random)]
    pub keys: KeyOrder,
    /// Fixed offered rate in requests/s over all clients (open loop). Latency is measured from
    /// each request's intended send time, so a stall is not hidden (no coordinated omission).
    /// Without it: closed loop, each client sends its next request when the previous one answered.
    #[arg(long)]
    pub rate: Option<f64>,
    /// The operation.
    #[arg(long, value_enum, default_value_t = Op::Put)]
    pub op: Op,
    /// Ranges: `l` linearizable (etcd's default), `s` serializable (served locally).
    #[arg(long, value_enum, default_value_t = Consistency::L)]
    pub consistency: Consistency,
    /// Write the latency histogram (successful requests) to this file.
    #[arg(long)]
    pub hist_out: Option<PathBuf>,
    /// `hgrm`: HdrHistogram's percentile distribution text, values in milliseconds (plottable
    /// with HdrHistogram's plotter); `v2`: the HdrHistogram V2 binary encoding, values in µs.
    #[arg(long, value_enum, default_value_t = HistFormat::Hgrm)]
    pub hist_format: HistFormat,
    /// With `--target leader`: how long to wait for the endpoints to report a leader, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub leader_wait: f64,
    /// Per-request timeout, seconds; a timed-out request counts as an error.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Seed of the random key choice (printed; default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads of kvbench's tokio multi-thread runtime (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also print one line per second of the measured phase (requests by due time: ok, errors,
    /// mean and max latency), to see when a stall happened.
    #[arg(long)]
    pub timeline: bool,
    /// Probe mode instead of a load: wait until the first endpoint serves the store at this
    /// revision or later. Repeats one single-key Range (key number 0) every `--probe-interval-ms`,
    /// reconnecting while the endpoint refuses connections: first serializable until an answer's
    /// header revision reaches the target, then linearizable until one succeeds with it. Gives up
    /// after `--duration` seconds (exit 1). Prints the wall-clock time of each milestone (Unix
    /// µs) on a `kvbench-wait` line, so a script can measure a restart from the process spawn.
    /// `--wait-revision 0` prints the endpoint's current revision at once.
    #[arg(long, conflicts_with_all = ["total", "rate", "warmup", "hist_out", "timeline"])]
    pub wait_revision: Option<i64>,
    /// Probe mode: milliseconds between two attempts.
    #[arg(long, default_value_t = 5)]
    pub probe_interval_ms: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Leader,
    All,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    Seq,
    Random,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Range,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistFormat {
    Hgrm,
    V2,
}

/// When a measured run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many requests.
    Total(u64),
    /// After this long.
    Duration(Duration),
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Normalized to `http://host:port`.
    pub endpoints: Vec<String>,
    pub target: Target,
    pub clients: usize,
    pub conns: usize,
    pub stop: Stop,
    pub warmup: Duration,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
    pub keys: KeyOrder,
    /// Requests/s over all clients; `None` is closed loop.
    pub rate: Option<f64>,
    pub op: Op,
    pub consistency: Consistency,
    pub hist_out: Option<PathBuf>,
    pub hist_format: HistFormat,
    pub leader_wait: Duration,
    pub timeout: Duration,
    pub seed: u64,
    /// `None`: tokio's default, one worker per core.
    pub threads: Option<usize>,
    pub timeline: bool,
    /// Probe mode (`--wait-revision`): the revision to wait for; `None` is a load run.
    pub wait_revision: Option<i64>,
    pub probe_interval: Duration,
}

/// A bad argument, with the flag and the value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgsError {
    #[error("--{flag} {value}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--endpoints {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

fn invalid(flag: &'static str, value: impl ToString, reason: impl Into<String>) -> ArgsError {
    ArgsError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A seconds flag as a `Duration`: finite and not negative (and positive unless `zero_ok`).
fn seconds(flag: &'static str, value: f64, zero_ok: bool) -> Result<Duration, ArgsError> {
    if !value.is_finite() || value < 0.0 || (!zero_ok && value == 0.0) {
        let reason = if zero_ok {
            "must be a number of seconds >= 0"
        } else {
            "must be a number of seconds > 0"
        };
        return Err(invalid(flag, value, reason));
    }
    // Bounded so that Duration::from_secs_f64 cannot panic on overflow; a week is plenty.
    if value > 7.0 * 86_400.0 {
        return Err(invalid(flag, value, "longer than a week"));
    }
    Ok(Duration::from_secs_f64(value))
}

/// `host:port` or `http://host:port` (a trailing `/` allowed) → `http://host:port`.
/// `https` is refused: kvbench speaks plaintext HTTP/2 only, as both benchmarked servers do here.
pub fn normalize_endpoint(endpoint: &str) -> Result<String, ArgsError> {
    let bad = |reason: &str| ArgsError::Endpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = endpoint.trim();
    let rest = if let Some(rest) = trimmed.strip_prefix("http://") {
        rest
    } else if trimmed.starts_with("https://") {
        return Err(bad("TLS is not supported; use a plaintext endpoint"));
    } else if trimmed.contains("://") {
        return Err(bad("unknown scheme; use host:port or http://host:port"));
    } else {
        trimmed
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() || host.contains('/') {
        return Err(bad("expected host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("http://{host}:{p}")),
        _ => Err(bad("the port must be a number in 1..=65535")),
    }
}

impl Args {
    /// Checks every flag and its relations to the others. `clock_seed` is used when `--seed` is
    /// not given (passed in so that validation itself is deterministic).
    pub fn plan(&self, clock_seed: u64) -> Result<Plan, ArgsError> {
        let endpoints = self
            .endpoints
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| normalize_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(invalid(
                "endpoints",
                "\"\"",
                "at least one endpoint is needed",
            ));
        }
        if self.clients == 0 {
            return Err(invalid("clients", 0, "at least one client is needed"));
        }
        if self.conns == 0 {
            return Err(invalid("conns", 0, "at least one connection is needed"));
        }
        if self.conns > self.clients {
            return Err(invalid(
                "conns",
                self.conns,
                format!(
                    "more connections than --clients {}: a connection without a client carries no load",
                    self.clients
                ),
            ));
        }
        let stop = match (self.total, self.duration) {
            (Some(0), _) => return Err(invalid("total", 0, "must be at least 1")),
            (Some(total), _) => Stop::Total(total),
            (None, Some(secs)) => Stop::Duration(seconds("duration", secs, false)?),
            (None, None) => Stop::Duration(DEFAULT_DURATION),
        };
        if self.key_size == 0 || self.key_size > KEY_BYTES_MAX {
            return Err(invalid(
                "key-size",
                self.key_size,
                format!("must be in 1..={KEY_BYTES_MAX}"),
            ));
        }
        if self.val_size > VALUE_BYTES_MAX {
            return Err(invalid(
                "val-size",
                self.val_size,
                format!("must be at most {VALUE_BYTES_MAX} (etcd's request limit is 1.5 MiB)"),
            ));
        }
        if self.key_space == 0 {
            return Err(invalid("key-space", 0, "must be at least 1"));
        }
        if let Some(max) = key_space_max(self.key_size) {
            if self.key_space > max {
                return Err(invalid(
                    "key-space",
                    self.key_space,
                    format!(
                        "{}-byte hex keys can name only {max} keys; raise --key-size",
                        self.key_size
                    ),
                ));
            }
        }
        if let Some(rate) = self.rate {
            if !rate.is_finite() || rate <= 0.0 {
                return Err(invalid("rate", rate, "must be a number of requests/s > 0"));
            }
        }
        Ok(Plan {
            endpoints,
            target: self.target,
            clients: self.clients,
            conns: self.conns,
            stop,
            warmup: seconds("warmup", self.warmup, true)?,
            key_size: self.key_size,
            val_size: self.val_size,
            key_space: self.key_space,
            keys: self.keys,
            rate: self.rate,
            op: self.op,
            consistency: self.consistency,
            hist_out: self.hist_out.clone(),
            hist_format: self.hist_format,
            leader_wait: seconds("leader-wait", self.leader_wait, true)?,
            timeout: seconds("timeout", self.timeout, false)?,
            seed: self.seed.unwrap_or(clock_seed),
            threads: match self.threads {
                Some(0) => return Err(invalid("threads", 0, "at least one thread is needed")),
                Some(n) if n > THREADS_MAX => {
                    return Err(invalid("threads", n, format!("at most {THREADS_MAX}")))
                }
                other => other,
            },
            timeline: self.timeline,
            wait_revision: match self.wait_revision {
                Some(rev) if rev < 0 => {
                    return Err(invalid("wait-revision", rev, "must be a revision >= 0"))
                }
                other => other,
            },
            probe_interval: match self.probe_interval_ms {
                0 => return Err(invalid("probe-interval-ms", 0, "must be at least 1")),
                ms if ms > 60_000 => return Err(invalid("probe-interval-ms", ms, "at most 60000")),
                ms => Duration::from_millis(ms),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(argv: &[&str]) -> Result<Plan, ArgsError> {
        let mut full = vec!["kvbench"];
        full.extend_from_slice(argv);
        Args::try_parse_from(full)
            .expect("clap accepts the arguments")
            .plan(42)
    }

    #[test]
    fn defaults_are_one_closed_loop_client_putting_for_ten_seconds() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(p.target, Target::Leader);
        assert_eq!((p.clients, p.conns), (1, 1));
        assert_eq!(p.stop, Stop::Duration(Duration::from_secs(10)));
        assert_eq!((p.key_size, p.val_size, p.key_space), (8, 256, 100_000));
        assert_eq!(p.rate, None);
        assert_eq!(p.op, Op::Put);
        assert_eq!(p.consistency, Consistency::L);
        assert_eq!(p.seed, 42, "the clock seed is used when --seed is absent");
        assert!(!p.timeline);
        assert_eq!(p.wait_revision, None);
    }

    #[test]
    fn wait_revision_is_a_probe_plan() {
        let p = plan(&[
            "--wait-revision",
            "12",
            "--probe-interval-ms",
            "2",
            "--duration",
            "30",
        ])
        .unwrap();
        assert_eq!(p.wait_revision, Some(12));
        assert_eq!(p.probe_interval, Duration::from_millis(2));
        assert_eq!(p.stop, Stop::Duration(Duration::from_secs(30)));
        assert!(plan(&["--wait-revision=-1"]).is_err());
        assert!(plan(&["--wait-revision", "1", "--probe-interval-ms", "0"]).is_err());
        let err =
            Args::try_parse_from(["kvbench", "--wait-revision", "1", "--total", "1"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn every_flag_reaches_the_plan() {
        let p = plan(&[
            "--endpoints",
            "http://127.0.0.1:1,localhost:2/,",
            "--target",
            "all",
            "--clients",
            "16",
            "--conns",
            "4",
            "--total",
            "5000",
            "--warmup",
            "0.5",
            "--key-size",
            "4",
            "--val-size",
            "0",
            "--key-space",
            "65536",
            "--keys",
            "seq",
            "--rate",
            "1500.5",
            "--op",
            "range",
            "--consistency",
            "s",
            "--hist-out",
            "/tmp/h.hgrm",
            "--hist-format",
            "v2",
            "--leader-wait",
            "0",
            "--timeout",
            "2",
            "--seed",
            "7",
            "--threads",
            "1",
            "--timeline",
        ])
        .unwrap();
        assert_eq!(
            p.endpoints,
            vec!["http://127.0.0.1:1", "http://localhost:2"]
        );
        assert_eq!(p.target, Target::All);
        assert_eq!((p.clients, p.conns), (16, 4));
        assert_eq!(p.stop, Stop::Total(5000));
        assert_eq!(p.warmup, Duration::from_millis(500));
        assert_eq!((p.key_size, p.val_size, p.key_space), (4, 0, 65536));
        assert_eq!(p.keys, KeyOrder::Seq);
        assert_eq!(p.rate, Some(1500.5));
        assert_eq!((p.op, p.consistency), (Op::Range, Consistency::S));
        assert_eq!(p.hist_out, Some(PathBuf::from("/tmp/h.hgrm")));
        assert_eq!(p.hist_format, HistFormat::V2);
        assert_eq!(p.leader_wait, Duration::ZERO);
        assert_eq!(p.timeout, Duration::from_secs(2));
        assert_eq!(p.seed, 7);
        assert_eq!(p.threads, Some(1));
        assert!(p.timeline);
    }

    #[test]
    fn total_and_duration_are_exclusive() {
        let err = Args::try_parse_from(["kvbench", "--total", "1", "--duration", "1"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn out_of_range_values_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--clients", "0"], "--clients 0"),
            (&["--conns", "0"], "--conns 0"),
            (&["--clients", "2", "--conns", "3"], "--conns 3"),
            (&["--total", "0"], "--total 0"),
            (&["--duration", "0"], "--duration 0"),
            (&["--duration=-1"], "--duration -1"),
            (&["--duration", "NaN"], "--duration NaN"),
            (&["--warmup=-0.5"], "--warmup -0.5"),
            (&["--key-size", "0"], "--key-size 0"),
            (&["--val-size", "2000000"], "--val-size 2000000"),
            (&["--key-space", "0"], "--key-space 0"),
            (
                &["--key-size", "2", "--key-space", "257"],
                "--key-space 257",
            ),
            (&["--rate", "0"], "--rate 0"),
            (&["--rate", "inf"], "--rate inf"),
            (&["--timeout", "0"], "--timeout 0"),
            (&["--threads", "0"], "--threads 0"),
        ];
        for (argv, expected) in cases {
            let err = plan(argv).unwrap_err().to_string();
            assert!(
                err.starts_with(expected),
                "{argv:?}: expected an error starting with {expected:?}, got {err:?}"
            );
        }
    }

    #[test]
    fn endpoints_are_normalized_or_refused() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint(" http://[::1]:2379/ ").unwrap(),
            "http://[::1]:2379"
        );
        for bad in [
            "https://127.0.0.1:2379",
            "unix://x:1",
            "127.0.0.1",
            ":2379",
            "h:0",
            "h:65536",
            "h:port",
            "h/x:1",
        ] {
            assert!(
                matches!(normalize_endpoint(bad), Err(ArgsError::Endpoint { .. })),
                "{bad:?} must be refused"
            );
        }
        assert!(plan(&["--endpoints", ","]).is_err());
    }
}
