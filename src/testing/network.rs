//! The simulated network: per-message latency with jitter, loss, duplication, reordering, and a
//! directed link matrix for partitions.
//!
//! The network decides each message's fate when it is sent ([`SimNetwork::send`] returns zero, one
//! or two delivery times) and checks the link again when the message arrives
//! ([`SimNetwork::deliverable`]): a partition that starts while a message is in flight loses it, as
//! a cut cable would. Reordering comes from jitter (two messages on the same link draw independent
//! delays) and, with `reorder_prob`, from an extra delay that holds one message back behind later
//! ones.
//!
//! Invariants: links are directed (`blocked[from][to]` says nothing about `to -> from`, which is how
//! asymmetric partitions are expressed); a node's link to itself is never blocked; the number of
//! messages in flight never exceeds `max_in_flight` (excess messages are dropped and counted), which
//! bounds the simulator's memory whatever the fault schedule does.

use crate::testing::rng::SimRng;

/// The fault parameters of the network. Times are simulated microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    /// One-way latency is uniform in `[latency_us_min, latency_us_max]` (the spread is the jitter).
    pub latency_us_min: u64,
    pub latency_us_max: u64,
    /// Probability that a message is lost.
    pub drop_prob: f64,
    /// Probability that a message is delivered twice (the copy draws its own latency).
    pub dup_prob: f64,
    /// Probability that a message is held back by an extra delay in `[0, reorder_delay_us_max]`.
    pub reorder_prob: f64,
    pub reorder_delay_us_max: u64,
    /// The most messages in flight at once; beyond it new messages are dropped.
    pub max_in_flight: usize,
}

impl NetConfig {
    /// A well-behaved network: fixed-range latency, no loss, duplication or extra reordering.
    pub fn reliable(latency_us_min: u64, latency_us_max: u64) -> NetConfig {
        NetConfig {
            latency_us_min,
            latency_us_max,
            drop_prob: 0.0,
            dup_prob: 0.0,
            reorder_prob: 0.0,
            reorder_delay_us_max: 0,
            max_in_flight: 100_000,
        }
    }
}

/// Counters for the run's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub dropped_random: u64,
    pub dropped_overflow: u64,
    pub dropped_partition: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delivered: u64,
}

/// The network between `n` nodes, indexed `0..n`.
#[derive(Clone, Debug)]
pub struct SimNetwork {
    n: usize,
    pub config: NetConfig,
    /// `blocked[from * n + to]`: messages from `from` to `to` are lost.
    blocked: Vec<bool>,
    in_flight: usize,
    pub stats: NetStats,
}

impl SimNetwork {
    pub fn new(n: usize, config: NetConfig) -> SimNetwork {
        assert!(
            config.latency_us_min <= config.latency_us_max,
            "latency range {}..={} is empty",
            config.latency_us_min,
            config.latency_us_max
        );
        SimNetwork {
            n,
            config,
            blocked: vec![false; n * n],
            in_flight: 0,
            stats: NetStats::default(),
        }
    }

    pub fn nodes(&self) -> usize {
        self.n
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether messages from `from` to `to` currently get through.
    pub fn link_up(&self, from: usize, to: usize) -> bool {
        from == to || !self.blocked[from * self.n + to]
    }

    /// Opens or cuts the directed link `from -> to`.
    pub fn set_link(&mut self, from: usize, to: usize, up: bool) {
        if from != to {
            self.blocked[from * self.n + to] = !up;
        }
    }

    /// Cuts or restores both directions between `a` and `b`.
    pub fn set_pair(&mut self, a: usize, b: usize, up: bool) {
        self.set_link(a, b, up);
        self.set_link(b, a, up);
    }

    /// A symmetric partition: nodes talk only within their group (`group[i]` is node i's group).
    pub fn partition(&mut self, group: &[usize]) {
        assert_eq!(group.len(), self.n, "partition needs one group per node");
        for a in 0..self.n {
            for b in 0..self.n {
                self.set_link(a, b, group[a] == group[b]);
            }
        }
    }

    /// Cuts every link to and from `node`.
    pub fn isolate(&mut self, node: usize) {
        for other in 0..self.n {
            self.set_pair(node, other, false);
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
    }

    /// Whether any link is cut.
    pub fn any_blocked(&self) -> bool {
        self.blocked.iter().any(|&b| b)
    }

    /// Decides the fate of one message sent at `now_us`: the times at which copies arrive (none if
    /// it is lost). The caller schedules a delivery per returned time and calls
    /// [`SimNetwork::deliverable`] when each one is due.
    pub fn send(&mut self, now_us: u64, rng: &mut SimRng) -> Vec<u64> {
        self.stats.sent += 1;
        if self.config.drop_prob > 0.0 && rng.chance(self.config.drop_prob) {
            self.stats.dropped_random += 1;
            return Vec::new();
        }
        let copies = if self.config.dup_prob > 0.0 && rng.chance(self.config.dup_prob) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let mut times = Vec::with_capacity(copies);
        for _ in 0..copies {
            if self.in_flight >= self.config.max_in_flight {
                self.stats.dropped_overflow += 1;
                continue;
            }
            let mut delay = rng.range(self.config.latency_us_min, self.config.latency_us_max);
            if self.config.reorder_prob > 0.0 && rng.chance(self.config.reorder_prob) {
                self.stats.reordered += 1;
                delay += rng.range(0, self.config.reorder_delay_us_max);
            }
            self.in_flight += 1;
            times.push(now_us + delay);
        }
        times
    }

    /// A copy scheduled by [`SimNetwork::send`] is due: whether it reaches `to` (the link may have
    /// been cut meanwhile). Must be called exactly once per scheduled copy.
    pub fn deliverable(&mut self, from: usize, to: usize) -> bool {
        assert!(self.in_flight > 0, "delivery with no message in flight");
        self.in_flight -= 1;
        if self.link_up(from, to) {
            self.stats.delivered += 1;
            true
        } else {
            self.stats.dropped_partition += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lossy() -> NetConfig {
        NetConfig {
            latency_us_min: 1_000,
            latency_us_max: 5_000,
            drop_prob: 0.2,
            dup_prob: 0.1,
            reorder_prob: 0.1,
            reorder_delay_us_max: 50_000,
            max_in_flight: 1_000_000,
        }
    }

    #[test]
    fn reliable_network_delivers_each_message_once_within_latency() {
        let mut net = SimNetwork::new(3, NetConfig::reliable(1_000, 2_000));
        let mut rng = SimRng::new(3);
        for _ in 0..1000 {
            let t = net.send(10_000, &mut rng);
            assert_eq!(t.len(), 1);
            assert!((11_000..=12_000).contains(&t[0]), "delivery at {}", t[0]);
            assert!(net.deliverable(0, 1));
        }
        assert_eq!(net.in_flight(), 0);
        assert_eq!(net.stats.delivered, 1000);
    }

    #[test]
    fn drop_duplicate_and_reorder_happen_at_their_rates() {
        let mut net = SimNetwork::new(2, lossy());
        let mut rng = SimRng::new(9);
        let mut copies = 0usize;
        let mut late = 0usize;
        for i in 0..100_000u64 {
            let times = net.send(i, &mut rng);
            copies += times.len();
            late += times.iter().filter(|&&t| t > i + 5_000).count();
        }
        let s = net.stats.clone();
        assert!((18_000..22_000).contains(&s.dropped_random), "{s:?}");
        assert!((7_000..9_000).contains(&s.duplicated), "{s:?}");
        assert!(
            late > 5_000,
            "reordering delay never exceeded plain latency: {late}"
        );
        assert_eq!(copies as u64, 100_000 - s.dropped_random + s.duplicated);
        assert_eq!(net.in_flight(), copies);
    }

    #[test]
    fn jitter_reorders_messages_on_one_link() {
        let mut net = SimNetwork::new(2, NetConfig::reliable(1_000, 20_000));
        let mut rng = SimRng::new(5);
        let times: Vec<u64> = (0..100).map(|i| net.send(i * 100, &mut rng)[0]).collect();
        assert!(
            times.windows(2).any(|w| w[1] < w[0]),
            "no later message overtook an earlier one: {times:?}"
        );
    }

    #[test]
    fn partitions_are_directed_and_heal() {
        let mut net = SimNetwork::new(5, NetConfig::reliable(1, 1));
        net.partition(&[0, 0, 1, 1, 1]);
        assert!(net.link_up(0, 1) && net.link_up(2, 4));
        assert!(!net.link_up(0, 2) && !net.link_up(3, 1));
        net.heal();
        assert!(!net.any_blocked());
        // Asymmetric: 1 can still send to 0, but hears nothing from it.
        net.set_link(0, 1, false);
        assert!(!net.link_up(0, 1) && net.link_up(1, 0));
        net.isolate(4);
        assert!((0..4).all(|o| !net.link_up(4, o) && !net.link_up(o, 4)));
        assert!(net.link_up(4, 4), "a node always reaches itself");
    }

    #[test]
    fn a_cut_made_while_a_message_is_in_flight_loses_it() {
        let mut net = SimNetwork::new(2, NetConfig::reliable(10, 10));
        let mut rng = SimRng::new(1);
        assert_eq!(net.send(0, &mut rng).len(), 1);
        net.set_pair(0, 1, false);
        assert!(!net.deliverable(0, 1));
        assert_eq!(net.stats.dropped_partition, 1);
    }

    #[test]
    fn in_flight_is_bounded() {
        let mut cfg = NetConfig::reliable(10, 10);
        cfg.max_in_flight = 8;
        let mut net = SimNetwork::new(2, cfg);
        let mut rng = SimRng::new(1);
        let delivered: usize = (0..20).map(|_| net.send(0, &mut rng).len()).sum();
        assert_eq!(delivered, 8);
        assert_eq!(net.stats.dropped_overflow, 12);
    }
}
