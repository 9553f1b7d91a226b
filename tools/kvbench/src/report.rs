//! What a run prints: the human summary, the one-line machine-readable result that
//! `benches/compare_etcd.sh` parses, and the histogram file.
//!
//! Latencies are recorded in microseconds; the summary prints milliseconds with three decimals
//! (µs resolution), the result line prints µs.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;

/// The largest latency the histogram holds, in µs (one hour; larger values are clamped to it).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// A histogram of latencies in µs with 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant bounds are valid")
}

/// The percentiles kvbench reports, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    /// All zero for an empty histogram.
    pub fn of(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50_us: hist.value_at_quantile(0.50),
            p90_us: hist.value_at_quantile(0.90),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
        }
    }
}

/// The requests that were due in one second of a phase (`--timeline`): enough to see when a
/// stall happened, without a histogram per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    pub ok: u64,
    pub errors: u64,
    /// Sum and maximum of the successful requests' latencies, µs.
    pub latency_sum_us: u64,
    pub latency_max_us: u64,
}

impl Second {
    fn add(&mut self, other: &Second) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latency_sum_us += other.latency_sum_us;
        self.latency_max_us = self.latency_max_us.max(other.latency_max_us);
    }
}

/// What one measured phase produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Latencies of the successful requests, µs.
    pub hist: Histogram<u64>,
    /// Failed requests by kind (gRPC code name or `timeout`): count and the first message seen.
    pub errors: BTreeMap<String, (u64, String)>,
    /// Ranges that answered without any key-value (a key never written, or a wrong answer).
    pub ranges_empty: u64,
    /// Per second of the phase, by due time; empty unless `--timeline`.
    pub timeline: Vec<Second>,
    /// From the phase's start to its last completion.
    pub elapsed: Duration,
    /// User + system CPU time of the whole kvbench process during the phase.
    pub cpu: Duration,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            hist: latency_histogram(),
            errors: BTreeMap::new(),
            ranges_empty: 0,
            timeline: Vec::new(),
            elapsed: Duration::ZERO,
            cpu: Duration::ZERO,
        }
    }
}

impl Outcome {
    pub fn ok(&self) -> u64 {
        self.hist.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().map(|(n, _)| n).sum()
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok() as f64 / secs
        } else {
            0.0
        }
    }

    /// Client CPU per request (successful or not), µs.
    pub fn cpu_us_per_request(&self) -> f64 {
        let n = self.ok() + self.error_count();
        if n == 0 {
            0.0
        } else {
            self.cpu.as_secs_f64() * 1e6 / n as f64
        }
    }

    /// Counts an error of `kind`, keeping the first message of each kind.
    pub fn add_error(&mut self, kind: &str, message: &str) {
        let entry = self
            .errors
            .entry(kind.to_string())
            .or_insert_with(|| (0, message.to_string()));
        entry.0 += 1;
    }

    /// Adds another client's results (histograms and counts; `elapsed` and `cpu` are the
    /// phase's, set by the caller).
    pub fn merge(&mut self, other: &Outcome) {
        self.hist
            .add(&other.hist)
            .expect("every histogram has the same bounds");
        for (kind, (n, message)) in &other.errors {
            let entry = self
                .errors
                .entry(kind.clone())
                .or_insert_with(|| (0, message.clone()));
            entry.0 += n;
        }
        self.ranges_empty += other.ranges_empty;
        if self.timeline.len() < other.timeline.len() {
            self.timeline
                .resize(other.timeline.len(), Second::default());
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            mine.add(theirs);
        }
    }

    /// The timeline entry of the second `second` (grown as needed).
    pub fn second_mut(&mut self, second: usize) -> &mut Second {
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, Second::default());
        }
        &mut self.timeline[second]
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// The human-readable summary of a measured phase (several lines, ending with a newline).
pub fn format_summary(outcome: &Outcome, is_range: bool) -> String {
    let p = Percentiles::of(&outcome.hist);
    let mut s = String::new();
    s.push_str(&format!(
        "requests: {} ok, {} errors in {:.3} s: {:.1} ok/s\n",
        outcome.ok(),
        outcome.error_count(),
        outcome.elapsed.as_secs_f64(),
        outcome.throughput()
    ));
    s.push_str(&format!(
        "latency ms: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
        ms(p.p50_us),
        ms(p.p90_us),
        ms(p.p99_us),
        ms(p.p999_us),
        ms(p.max_us)
    ));
    s.push_str(&format!(
        "client CPU: {:.1} µs per request (user+system of kvbench, all threads)\n",
        outcome.cpu_us_per_request()
    ));
    for (kind, (n, message)) in &outcome.errors {
        s.push_str(&format!("errors: {kind}: {n} (first: {message})\n"));
    }
    if is_range {
        s.push_str(&format!(
            "ranges answered with no key: {}\n",
            outcome.ranges_empty
        ));
    }
    for (i, second) in outcome.timeline.iter().enumerate() {
        let mean_us = second.latency_sum_us.checked_div(second.ok).unwrap_or(0);
        s.push_str(&format!(
            "second {i:>3}: {:>7} ok {:>5} errors, latency ms mean {} max {}\n",
            second.ok,
            second.errors,
            ms(mean_us),
            ms(second.latency_max_us)
        ));
    }
    s
}

/// One line of `key=value` pairs for scripts. The keys are a contract with
/// `benches/compare_etcd.sh`: add keys at the end, never rename.
pub fn format_result_line(outcome: &Outcome, op: &str, clients: usize, conns: usize) -> String {
    let p = Percentiles::of(&outcome.hist);
    format!(
        "kvbench-result op={op} clients={clients} conns={conns} ok={} errors={} seconds={:.3} \
         ops_per_sec={:.1} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} \
         client_cpu_us_per_op={:.1} ranges_empty={}",
        outcome.ok(),
        outcome.error_count(),
        outcome.elapsed.as_secs_f64(),
        outcome.throughput(),
        p.p50_us,
        p.p90_us,
        p.p99_us,
        p.p999_us,
        p.max_us,
        outcome.cpu_us_per_request(),
        outcome.ranges_empty
    )
}

/// HdrHistogram's percentile distribution text (the `.hgrm` format of `outputPercentileDistribution`,
/// 5 ticks per half distance), values scaled from µs to milliseconds.
pub fn write_hgrm(hist: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in hist.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value_ms = v.value_iterated_to() as f64 / 1000.0;
        if q < 1.0 {
            writeln!(
                out,
                "{value_ms:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value_ms:12.3} {q:2.12} {total:10}")?;
        }
    }
    let (mean, stdev) = if hist.is_empty() {
        (0.0, 0.0)
    } else {
        (hist.mean() / 1000.0, hist.stdev() / 1000.0)
    };
    writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    )?;
    writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        hist.max() as f64 / 1000.0,
        hist.len()
    )?;
    Ok(())
}

/// The HdrHistogram V2 binary encoding (values in µs).
pub fn write_v2(hist: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    use hdrhistogram::serialization::{Serializer, V2Serializer};
    V2Serializer::new()
        .serialize(hist, out)
        .map(|_| ())
        .map_err(|e| io::Error::other(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1..=1000 µs once each: the percentiles are known exactly (3 significant digits).
    fn one_to_a_thousand() -> Outcome {
        let mut outcome = Outcome {
            elapsed: Duration::from_secs(2),
            cpu: Duration::from_millis(10),
            ..Outcome::default()
        };
        for us in 1..=1000 {
            outcome.hist.record(us).unwrap();
        }
        outcome
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let p = Percentiles::of(&one_to_a_thousand().hist);
        assert_eq!(
            p,
            Percentiles {
                p50_us: 500,
                p90_us: 900,
                p99_us: 990,
                p999_us: 999,
                max_us: 1000
            }
        );
        assert_eq!(
            Percentiles::of(&latency_histogram()),
            Percentiles::default()
        );
    }

    #[test]
    fn summary_and_result_line_print_throughput_percentiles_and_errors() {
        let mut outcome = one_to_a_thousand();
        outcome.add_error("Unavailable", "leader changed");
        outcome.add_error("Unavailable", "a later message is not kept");
        outcome.add_error("timeout", "no answer in 10 s");
        outcome.ranges_empty = 3;

        let summary = format_summary(&outcome, true);
        assert!(
            summary.contains("requests: 1000 ok, 3 errors in 2.000 s: 500.0 ok/s"),
            "{summary}"
        );
        assert!(
            summary.contains("latency ms: p50 0.500  p90 0.900  p99 0.990  p99.9 0.999  max 1.000"),
            "{summary}"
        );
        assert!(
            summary.contains("errors: Unavailable: 2 (first: leader changed)"),
            "{summary}"
        );
        assert!(
            summary.contains("errors: timeout: 1 (first: no answer in 10 s)"),
            "{summary}"
        );
        assert!(
            summary.contains("ranges answered with no key: 3"),
            "{summary}"
        );
        // 10 ms of CPU over 1003 requests.
        assert!(
            summary.contains("client CPU: 10.0 µs per request"),
            "{summary}"
        );

        let line = format_result_line(&outcome, "range", 16, 2);
        assert_eq!(
            line,
            "kvbench-result op=range clients=16 conns=2 ok=1000 errors=3 seconds=2.000 \
             ops_per_sec=500.0 p50_us=500 p90_us=900 p99_us=990 p999_us=999 max_us=1000 \
             client_cpu_us_per_op=10.0 ranges_empty=3"
        );
    }

    #[test]
    fn timeline_merges_by_second_and_prints_one_line_per_second() {
        let mut a = Outcome::default();
        *a.second_mut(0) = Second {
            ok: 2,
            errors: 0,
            latency_sum_us: 3000,
            latency_max_us: 2000,
        };
        let mut b = Outcome::default();
        b.second_mut(0).ok = 1;
        b.second_mut(0).latency_sum_us = 1000;
        b.second_mut(0).latency_max_us = 1000;
        b.second_mut(1).errors = 4;
        a.merge(&b);
        assert_eq!(
            a.timeline,
            vec![
                Second {
                    ok: 3,
                    errors: 0,
                    latency_sum_us: 4000,
                    latency_max_us: 2000
                },
                Second {
                    ok: 0,
                    errors: 4,
                    latency_sum_us: 0,
                    latency_max_us: 0
                }
            ]
        );
        let summary = format_summary(&a, false);
        assert!(
            summary
                .contains("second   0:       3 ok     0 errors, latency ms mean 1.333 max 2.000"),
            "{summary}"
        );
        assert!(
            summary
                .contains("second   1:       0 ok     4 errors, latency ms mean 0.000 max 0.000"),
            "{summary}"
        );
    }

    #[test]
    fn merge_adds_histograms_and_error_counts() {
        let mut a = one_to_a_thousand();
        a.add_error("Unavailable", "first");
        let mut b = one_to_a_thousand();
        b.add_error("Unavailable", "second");
        b.ranges_empty = 2;
        a.merge(&b);
        assert_eq!(a.ok(), 2000);
        assert_eq!(a.errors["Unavailable"], (2, "first".to_string()));
        assert_eq!(a.ranges_empty, 2);
        assert_eq!(Percentiles::of(&a.hist).p50_us, 500);
    }

    #[test]
    fn hgrm_lists_cumulative_counts_in_milliseconds() {
        let outcome = one_to_a_thousand();
        let mut text = Vec::new();
        write_hgrm(&outcome.hist, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("Value") && lines[0].contains("TotalCount"),
            "{text}"
        );
        // The first row is the smallest value at percentile 0 with a count of 1.
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(&first[..3], &["0.001", "0.000000000000", "1"], "{text}");
        // The last data row reaches percentile 1 with every sample counted.
        let last = lines
            .iter()
            .rev()
            .find(|l| !l.starts_with('#'))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>();
        assert_eq!(&last[..3], &["1.000", "1.000000000000", "1000"], "{text}");
        assert!(
            text.contains("#[Max     =        1.000, Total count    =         1000]"),
            "{text}"
        );
    }

    #[test]
    fn v2_round_trips() {
        use hdrhistogram::serialization::Deserializer;
        let outcome = one_to_a_thousand();
        let mut bytes = Vec::new();
        write_v2(&outcome.hist, &mut bytes).unwrap();
        let back: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .unwrap();
        assert_eq!(back.len(), 1000);
        assert_eq!(back.value_at_quantile(0.99), 990);
    }
}
