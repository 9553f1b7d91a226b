//! The search for one key: Wing & Gong's depth-first search for a linearization, with Lowe's
//! memoization of the configurations already explored, over a register whose state is
//! `Option<u64>` (absent, or one value).
//!
//! # What a configuration is
//! A configuration is the set `L` of operations linearized so far and the register's state. From
//! a configuration the search may linearize next:
//! - any determinate operation not in `L` that was invoked no later than the earliest return
//!   among the determinate operations not in `L` (`frontier_ns`): real-time order forbids others;
//! - any indeterminate operation not in `L` invoked by `frontier_ns`: its return is at
//!   +infinity, so it stays a candidate forever, and it need never be linearized at all.
//!
//! The search succeeds when every determinate operation is in `L`. It fails (a violation) when
//! every configuration reachable from the empty one was explored without success.
//!
//! # Pruning, each kept exact
//! - **Memoization (Lowe).** A configuration already explored is not explored again. The cache
//!   stores a 128-bit fingerprint: the XOR of a random 128-bit key per operation in `L` (Zobrist
//!   hashing, updated in O(1) per step) mixed with the canonical state. A collision can only make
//!   the search skip a configuration it should have explored, so it can only produce a false
//!   violation, never hide one; with random keys its probability is about `states² / 2^129`
//!   (below 10^-22 at the state budget). [`crate::checker::check`] re-runs a key with independent
//!   keys before it reports a violation, so a false one would need two collisions.
//! - **Dead values.** Values are unique in a run, so a value is told apart from another only by
//!   the operations that observe it (a read that returned it, a compare-and-set that expected it).
//!   When no operation left outside `L` observes the current value, the state is "some dead
//!   value": every dead value behaves the same from then on, and the cache merges them.
//! - **Interchangeable indeterminate operations.** Indeterminate deletes; indeterminate puts of a
//!   value nobody observes; indeterminate compare-and-sets of such a value with the same expected
//!   value: within each of these groups the members have the same effect and differ only in when
//!   they were invoked, and a member once invoked stays a candidate forever. Using the earliest
//!   invoked unused member is therefore never worse than using another one, so the search only
//!   tries that one (the used members of a group are always a prefix of it, by invocation).
//! - **Dominance.** For three of those groups (deletes, puts of unobserved values, and
//!   compare-and-sets of unobserved values expecting absence) the used counts are left out of
//!   the fingerprint: the cache keeps, per fingerprint, the minimal count vectors seen, and a
//!   configuration that uses at least as many of each group as one already seen is skipped
//!   (fewer used members leave more available, so whatever it can do, the other can).
//! - **Spent compare-and-sets.** An indeterminate compare-and-set expecting `e` is fingerprinted
//!   only while `e` may still be current (a writer of `e` is outside `L`, or the register holds
//!   `e`): afterwards it can never take effect, and whether it did is told by the rest.
//! - **No-op indeterminate writes.** An indeterminate operation that would not change the
//!   (canonical) state is not applied: leaving it unused keeps strictly more options open.
//!
//! Each of these is checked against a brute-force enumeration on tens of thousands of small
//! generated histories (`checker::tests::agrees_with_brute_force_on_tiny_histories`).
//!
//! # The relaxed model
//! With dominance, a configuration first reached with more group members used is explored
//! again when it is reached with fewer, and an exhaustive search (a violation) can then take
//! very long. [`KeySearch::relaxed`] lets the dominated groups be used without limit: a superset
//! of the exact model's linearizations, with no re-exploration, so it proves violations fast.
//!
//! # Bounds
//! The search stops with [`KeyOutcome::Unknown`] after `states_max` configurations (each costs
//! the cache about 64 bytes, more when several count vectors share a fingerprint) or
//! `steps_max` attempted moves.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::history::{Call, Operation, Ret};

/// How much one key's search may explore.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Configurations in the memo cache (about 64 bytes each).
    pub states_max: u64,
    /// Moves attempted (each a model step, most of them rejected at once).
    pub steps_max: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            states_max: 8_000_000,
            steps_max: 400_000_000,
        }
    }
}

/// How one key's search ended.
#[derive(Debug)]
pub enum KeyOutcome {
    Linearizable,
    /// Every configuration was explored: no linearization exists.
    Violation(Frontier),
    /// The budget ran out first.
    Unknown,
}

/// Where the search got furthest, for the report: indices into the key's operation slice.
#[derive(Debug, Clone)]
pub struct Frontier {
    /// Determinate operations of the key.
    pub determinate: usize,
    /// Determinate operations in the longest linearizable prefix found.
    pub linearized: usize,
    /// The register after that prefix.
    pub state: Option<u64>,
    /// The last operations of that prefix (indeterminate ones included), in linearization order.
    pub last: Vec<usize>,
    /// The determinate operations that could have gone next, none of which fits.
    pub stuck: Vec<usize>,
}

/// Counters of one search.
#[derive(Debug, Default, Clone, Copy)]
pub struct Effort {
    pub states: u64,
    pub steps: u64,
}

/// The fingerprints are random already: hash them by taking their low bits.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// Used counts of the dominated groups (see `KeySearch::counts`).
type Counts = [u32; 3];

/// Fingerprint of (`L` without the dominated groups, canonical state) -> the used counts of the
/// dominated groups with which it was reached (only the minimal ones): the first inline, any
/// others (rare) in the vector, so that most entries allocate nothing.
type Cache = HashMap<u128, (Counts, Vec<Counts>), BuildHasherDefault<Identity>>;

fn le(a: &Counts, b: &Counts) -> bool {
    a.iter().zip(b).all(|(x, y)| x <= y)
}

/// Whether the configuration `key` with these counts is new (not dominated by one already
/// explored or being explored), recording it if so.
fn visit(cache: &mut Cache, key: u128, counts: Counts) -> bool {
    let (first, more) = match cache.entry(key) {
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert((counts, Vec::new()));
            return true;
        }
        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
    };
    if le(first, &counts) || more.iter().any(|s| le(s, &counts)) {
        return false;
    }
    more.retain(|s| !le(&counts, s));
    if le(&counts, first) {
        *first = counts;
    } else {
        more.push(counts);
    }
    true
}

/// A value, as a dense index into the key's value table.
type Val = u32;

/// What an operation does to the register, with the values replaced by their indices.
#[derive(Clone, Copy, Debug)]
enum Step {
    Put(Val),
    Get(Option<Val>),
    /// `ok: None`: indeterminate (it took effect only if the compare succeeded).
    Cas {
        expect: Option<Val>,
        new: Val,
        ok: Option<bool>,
    },
    Delete(Option<bool>),
    /// A call and an answer that do not match: it can never be linearized.
    Impossible,
}

impl Step {
    /// The register after this operation, if it may take effect from `state` with its recorded
    /// answer. An indeterminate operation whose effect would be nothing returns `None` too: it is
    /// left unused instead (see the module docs).
    fn apply(self, state: Option<Val>) -> Option<Option<Val>> {
        match self {
            Step::Put(v) => Some(Some(v)),
            Step::Get(r) => (state == r).then_some(state),
            Step::Cas {
                expect,
                new,
                ok: Some(true) | None,
            } => (state == expect).then_some(Some(new)),
            Step::Cas {
                expect,
                ok: Some(false),
                ..
            } => (state != expect).then_some(state),
            Step::Delete(Some(true)) => state.is_some().then_some(None),
            Step::Delete(Some(false)) => state.is_none().then_some(None),
            Step::Delete(None) => state.is_some().then_some(None),
            Step::Impossible => None,
        }
    }

    /// The value this operation writes if it takes effect.
    fn writes(self) -> Option<Val> {
        match self {
            Step::Put(v)
            | Step::Cas {
                new: v,
                ok: Some(true) | None,
                ..
            } => Some(v),
            _ => None,
        }
    }

    /// The value an indeterminate compare-and-set needs to find (`None` for other steps).
    fn expects_value(self) -> Option<Val> {
        match self {
            Step::Cas {
                expect, ok: None, ..
            } => expect,
            _ => None,
        }
    }

    /// The value this operation tells apart from the others.
    fn observes(self) -> Option<Val> {
        match self {
            Step::Get(r) => r,
            Step::Cas { expect, .. } => expect,
            _ => None,
        }
    }
}

/// Canonical state for the cache.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Canon {
    Absent,
    Dead,
    Live(Val),
}

/// A move: linearize this operation next.
#[derive(Clone, Copy, Debug)]
enum Move {
    /// A determinate operation (its position in `det`).
    Det(u32),
    /// The earliest unused member of an interchangeable group.
    Group(u32),
    /// An indeterminate operation of its own (it writes an observed value).
    Single(u32),
}

/// What a move changed, to undo it.
#[derive(Clone, Copy)]
struct Undo {
    mv: Move,
    op: u32,
    state: Option<Val>,
    first_open: u32,
}

struct Frame {
    moves: Vec<Move>,
    next: usize,
    entered_by: Option<Undo>,
}

/// splitmix64: the Zobrist keys.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key128(salt: u64, i: u64) -> u128 {
    let a = mix64(salt ^ mix64(i.wrapping_mul(2)));
    let b = mix64(salt.rotate_left(17) ^ mix64(i.wrapping_mul(2) + 1));
    (u128::from(a) << 64) | u128::from(b)
}

/// One key's history, ready to search.
pub struct KeySearch<'a> {
    ops: &'a [&'a Operation],
    steps: Vec<Step>,
    invoked: Vec<u64>,
    /// Return time; `u64::MAX` for an indeterminate operation.
    returned: Vec<u64>,
    /// The value table: index -> value.
    values: Vec<u64>,
    /// Determinate operations by invocation.
    det: Vec<u32>,
    /// Interchangeable groups of indeterminate operations, each by invocation, and how many of
    /// each are used (always a prefix).
    groups: Vec<Vec<u32>>,
    used: Vec<u32>,
    /// The groups of indeterminate deletes, of puts of unobserved values, and of compare-and-sets
    /// of unobserved values that expect the key absent: their used counts are compared by
    /// dominance instead of being part of the fingerprint.
    dominated: [Option<usize>; 3],
    /// Compare-and-set groups by the value they expect.
    cas_groups: HashMap<Option<Val>, Vec<u32>>,
    /// Per value: how many operations that may write it are outside `L`.
    writers_open: Vec<u32>,
    /// Per value `e`: the XOR of the Zobrist keys of the indeterminate compare-and-sets in `L`
    /// that expect `e`. They count in the fingerprint only while `e` is open (see `cache_key`),
    /// kept up to date in `expecting_fingerprint`.
    used_expecting: Vec<u128>,
    expecting_fingerprint: u128,
    /// The relaxed model: the dominated groups never run out (see `KeySearch::relaxed`).
    relaxed: bool,
    /// Indeterminate operations that write an observed value, by invocation.
    singles: Vec<u32>,
    /// Per value: how many operations outside `L` observe it.
    observers_open: Vec<u32>,
    /// Which operations are in `L`.
    linearized: Vec<bool>,
    /// Position in `det` of the first determinate operation not in `L`.
    first_open: u32,
    det_done: usize,
    state: Option<Val>,
    zobrist: Vec<u128>,
    fingerprint: u128,
    salt: u64,
}

impl<'a> KeySearch<'a> {
    /// Prepares the search of `ops` (all of one key, in any order); `salt` picks the Zobrist keys.
    pub fn new(ops: &'a [&'a Operation], salt: u64) -> KeySearch<'a> {
        let mut index: HashMap<u64, Val> = HashMap::new();
        let mut values = Vec::new();
        let mut val = |v: u64| -> Val {
            *index.entry(v).or_insert_with(|| {
                values.push(v);
                (values.len() - 1) as Val
            })
        };
        let mut steps = Vec::with_capacity(ops.len());
        let mut invoked = Vec::with_capacity(ops.len());
        let mut returned = Vec::with_capacity(ops.len());
        for op in ops {
            let step = match (op.call, op.completed.and(op.ret)) {
                (Call::Put(v), None | Some(Ret::Put)) => Step::Put(val(v)),
                (Call::Get, Some(Ret::Get(r))) => Step::Get(r.map(&mut val)),
                // A failed read is not recorded; if one is, it changes nothing and need not be
                // linearized: it is left out below.
                (Call::Get, None) => Step::Get(None),
                (Call::Cas { expect, new }, None) => Step::Cas {
                    expect: expect.map(&mut val),
                    new: val(new),
                    ok: None,
                },
                (Call::Cas { expect, new }, Some(Ret::Cas(ok))) => Step::Cas {
                    expect: expect.map(&mut val),
                    new: val(new),
                    ok: Some(ok),
                },
                (Call::Delete, None) => Step::Delete(None),
                (Call::Delete, Some(Ret::Delete(ok))) => Step::Delete(Some(ok)),
                _ => Step::Impossible,
            };
            steps.push(step);
            invoked.push(op.invoked);
            // A clock cannot run backwards, but a hand-made history might: clamp.
            returned.push(match (op.completed, op.ret) {
                (Some(c), Some(_)) => c.max(op.invoked),
                _ => u64::MAX,
            });
        }
        let n_values = values.len();
        let mut observers_open = vec![0u32; n_values];
        for (i, s) in steps.iter().enumerate() {
            let failed_read = matches!(s, Step::Get(_)) && returned[i] == u64::MAX;
            if let (Some(v), false) = (s.observes(), failed_read) {
                observers_open[v as usize] += 1;
            }
        }
        let by_invocation = |list: &mut Vec<u32>| {
            list.sort_by_key(|&i| (invoked[i as usize], returned[i as usize], i));
        };
        let mut det = Vec::new();
        let mut singles = Vec::new();
        // Group keys: 0 = deletes, 1 = puts of unobserved values, 2 + v = compare-and-sets of an
        // unobserved value expecting v (v + 1, with 0 for "absent").
        let mut grouped: HashMap<u64, Vec<u32>> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            let i32 = i as u32;
            if returned[i] != u64::MAX {
                det.push(i32);
                continue;
            }
            match *s {
                Step::Get(_) => {} // an unrecorded failed read: nothing to linearize
                Step::Delete(_) => grouped.entry(0).or_default().push(i32),
                Step::Put(v) if observers_open[v as usize] == 0 => {
                    grouped.entry(1).or_default().push(i32)
                }
                Step::Cas { expect, new, .. } if observers_open[new as usize] == 0 => grouped
                    .entry(2 + expect.map_or(0, |e| u64::from(e) + 1))
                    .or_default()
                    .push(i32),
                _ => singles.push(i32),
            }
        }
        by_invocation(&mut det);
        by_invocation(&mut singles);
        let mut group_keys: Vec<u64> = grouped.keys().copied().collect();
        group_keys.sort_unstable();
        let groups: Vec<Vec<u32>> = group_keys
            .iter()
            .filter_map(|k| grouped.remove(k))
            .map(|mut g| {
                by_invocation(&mut g);
                g
            })
            .collect();
        let mut cas_groups: HashMap<Option<Val>, Vec<u32>> = HashMap::new();
        for (g, members) in groups.iter().enumerate() {
            if let (Some(&first), true) = (members.first(), group_keys[g] >= 2) {
                if let Step::Cas { expect, .. } = steps[first as usize] {
                    cas_groups.entry(expect).or_default().push(g as u32);
                }
            }
        }
        let mut writers_open = vec![0u32; n_values];
        for s in &steps {
            if let Some(v) = s.writes() {
                writers_open[v as usize] += 1;
            }
        }
        let dominated = [0, 1, 2].map(|key| group_keys.iter().position(|&k| k == key));
        let zobrist = (0..ops.len() as u64).map(|i| key128(salt, i)).collect();
        KeySearch {
            ops,
            used: vec![0; groups.len()],
            dominated,
            cas_groups,
            writers_open,
            used_expecting: vec![0; n_values],
            expecting_fingerprint: 0,
            relaxed: false,
            linearized: vec![false; steps.len()],
            steps,
            invoked,
            returned,
            values,
            det,
            groups,
            singles,
            observers_open,
            first_open: 0,
            det_done: 0,
            state: None,
            zobrist,
            fingerprint: 0,
            salt,
        }
    }

    /// Switches to the relaxed model, in which a dominated group (deletes, puts of unobserved
    /// values, compare-and-sets of unobserved values expecting absence) once invoked may be used
    /// any number of times. It allows every linearization the exact model allows and more, so a
    /// violation in the relaxed model is a violation; and its memo needs no dominance, so it
    /// never explores a configuration twice. [`crate::checker::check`] uses it when the exact
    /// search runs out of budget, which happens when a violation forces it to explore
    /// everything: re-exploring configurations that a later one with fewer group members used
    /// dominates is what makes the exact search slow there.
    pub fn relaxed(mut self) -> KeySearch<'a> {
        self.relaxed = true;
        self
    }

    /// Determinate operations of the key.
    pub fn determinate(&self) -> usize {
        self.det.len()
    }

    fn canon(&self) -> Canon {
        match self.state {
            None => Canon::Absent,
            Some(v) if self.observers_open[v as usize] == 0 => Canon::Dead,
            Some(v) => Canon::Live(v),
        }
    }

    /// Used counts of the dominated groups. Within a group, fewer used members leave more
    /// available (every used member was invoked before now), so a configuration is dominated by
    /// one that differs only in using no more of each group: whatever the first can do next, the
    /// second can.
    fn counts(&self) -> Counts {
        self.dominated.map(|g| g.map_or(0, |g| self.used[g]))
    }

    /// Whether a move's operation is part of the incremental fingerprint: not a dominated
    /// group's member, and not an indeterminate compare-and-set that expects a value (those are
    /// added by `cache_key`).
    fn fingerprinted(&self, mv: Move, op: u32) -> bool {
        let dominated = matches!(mv, Move::Group(g) if self.dominated.contains(&Some(g as usize)));
        !dominated && self.steps[op as usize].expects_value().is_none()
    }

    fn cache_key(&self) -> u128 {
        let c = match self.canon() {
            Canon::Absent => 0,
            Canon::Dead => 1,
            Canon::Live(v) => u64::from(v) + 2,
        };
        // An indeterminate compare-and-set expecting `e` matters to the future only while `e`
        // may be current: once every writer of `e` is in `L` and the register holds something
        // else, `e` never comes back (values are unique), so the operation can no longer take
        // effect, and whether it did earlier is told by the state and the rest of `L` alone.
        // Leaving such operations out of the fingerprint keeps their used/unused choices from
        // multiplying the configurations.
        self.fingerprint ^ self.expecting_fingerprint ^ key128(!self.salt, c)
    }

    /// Whether `e` may be current now or later: some writer of it is outside `L`, or it is.
    fn open(&self, e: Val) -> bool {
        self.writers_open[e as usize] > 0 || self.state == Some(e)
    }

    /// Adds or removes (XOR) the open values among `values` in `expecting_fingerprint`: called
    /// before and after a step changes what is open, with every value the step may affect.
    fn toggle_expecting(&mut self, values: [Option<Val>; 4]) {
        for (i, e) in values.iter().enumerate() {
            let Some(e) = *e else { continue };
            if values[..i].contains(&Some(e)) {
                continue;
            }
            if self.open(e) {
                self.expecting_fingerprint ^= self.used_expecting[e as usize];
            }
        }
    }

    /// The moves from the current configuration: determinate ones first (in invocation order),
    /// then indeterminate ones.
    fn moves(&self) -> Vec<Move> {
        let mut moves = Vec::new();
        // The earliest return among the open determinate operations. An operation invoked after
        // some open operation returned cannot return earlier, so the scan stops there. Equal
        // times count as overlapping (real-time order needs a strictly earlier return): an
        // operation may be answered in the nanosecond it was sent.
        let mut frontier_ns = u64::MAX;
        for (pos, &i) in self.det.iter().enumerate().skip(self.first_open as usize) {
            let i = i as usize;
            if self.invoked[i] > frontier_ns {
                break;
            }
            if !self.linearized[i] {
                frontier_ns = frontier_ns.min(self.returned[i]);
                moves.push(Move::Det(pos as u32));
            }
        }
        moves.retain(|m| match *m {
            Move::Det(pos) => self.invoked[self.det[pos as usize] as usize] <= frontier_ns,
            _ => true,
        });
        // Indeterminate moves are listed only if they fit the state (the state is the same for
        // every move of a frame), and only the compare-and-set groups expecting the current state.
        let fits = |i: u32| self.steps[i as usize].apply(self.state).is_some();
        for &i in &self.singles {
            if self.invoked[i as usize] > frontier_ns {
                break;
            }
            if !self.linearized[i as usize] && fits(i) {
                moves.push(Move::Single(i));
            }
        }
        let cas = self.cas_groups.get(&self.state).into_iter().flatten();
        let groups = [self.dominated[0], self.dominated[1]]
            .into_iter()
            .flatten()
            .map(|g| g as u32)
            .chain(cas.copied());
        for g in groups {
            if let Some(&i) = self.groups[g as usize].get(self.used[g as usize] as usize) {
                if self.invoked[i as usize] <= frontier_ns && fits(i) {
                    moves.push(Move::Group(g));
                }
            }
        }
        moves
    }

    fn op_of(&self, mv: Move) -> u32 {
        match mv {
            Move::Det(pos) => self.det[pos as usize],
            Move::Single(i) => i,
            Move::Group(g) => self.groups[g as usize][self.used[g as usize] as usize],
        }
    }

    /// Linearizes `mv` if its step fits the state; returns what to undo.
    fn try_move(&mut self, mv: Move) -> Option<Undo> {
        let op = self.op_of(mv);
        let step = self.steps[op as usize];
        let next = step.apply(self.state)?;
        let undo = Undo {
            mv,
            op,
            state: self.state,
            first_open: self.first_open,
        };
        let indeterminate = !matches!(mv, Move::Det(_));
        let before = self.canon();
        let affected = [self.state, next, step.writes(), step.expects_value()];
        self.toggle_expecting(affected);
        self.state = next;
        self.link(mv, op, step);
        self.toggle_expecting(affected);
        if indeterminate && step.observes().is_none() && self.canon() == before {
            // It changed nothing the rest of the history can see: leave it unused.
            self.unlink(undo);
            return None;
        }
        Some(undo)
    }

    fn link(&mut self, mv: Move, op: u32, step: Step) {
        self.linearized[op as usize] = true;
        if self.fingerprinted(mv, op) {
            self.fingerprint ^= self.zobrist[op as usize];
        } else if let Some(e) = step.expects_value() {
            self.used_expecting[e as usize] ^= self.zobrist[op as usize];
        }
        if let Some(v) = step.writes() {
            self.writers_open[v as usize] -= 1;
        }
        if let Some(v) = step.observes() {
            self.observers_open[v as usize] -= 1;
        }
        match mv {
            Move::Det(_) => {
                self.det_done += 1;
                while let Some(&i) = self.det.get(self.first_open as usize) {
                    if !self.linearized[i as usize] {
                        break;
                    }
                    self.first_open += 1;
                }
            }
            Move::Group(g) => {
                if !(self.relaxed && self.dominated.contains(&Some(g as usize))) {
                    self.used[g as usize] += 1;
                }
            }
            Move::Single(_) => {}
        }
    }

    fn unlink(&mut self, undo: Undo) {
        let op = undo.op as usize;
        let step = self.steps[op];
        let affected = [self.state, undo.state, step.writes(), step.expects_value()];
        self.toggle_expecting(affected);
        self.linearized[op] = false;
        if self.fingerprinted(undo.mv, undo.op) {
            self.fingerprint ^= self.zobrist[op];
        } else if let Some(e) = step.expects_value() {
            self.used_expecting[e as usize] ^= self.zobrist[op];
        }
        if let Some(v) = self.steps[op].writes() {
            self.writers_open[v as usize] += 1;
        }
        if let Some(v) = self.steps[op].observes() {
            self.observers_open[v as usize] += 1;
        }
        match undo.mv {
            Move::Det(_) => self.det_done -= 1,
            Move::Group(g) => {
                if !(self.relaxed && self.dominated.contains(&Some(g as usize))) {
                    self.used[g as usize] -= 1;
                }
            }
            Move::Single(_) => {}
        }
        self.first_open = undo.first_open;
        self.state = undo.state;
        self.toggle_expecting(affected);
    }

    /// Runs the search.
    pub fn run(&mut self, limits: Limits) -> (KeyOutcome, Effort) {
        let mut effort = Effort::default();
        if self.det.is_empty() {
            return (KeyOutcome::Linearizable, effort);
        }
        let mut cache = Cache::default();
        visit(&mut cache, self.cache_key(), self.counts());
        effort.states = 1;
        let mut stack = vec![Frame {
            moves: self.moves(),
            next: 0,
            entered_by: None,
        }];
        let mut best = self.frontier(&stack);
        while let Some(top) = stack.last_mut() {
            let Some(&mv) = top.moves.get(top.next) else {
                // Every move from here was tried: back to the parent configuration.
                if let Some(undo) = stack.pop().and_then(|f| f.entered_by) {
                    self.unlink(undo);
                }
                continue;
            };
            top.next += 1;
            effort.steps += 1;
            if effort.steps > limits.steps_max || effort.states > limits.states_max {
                return (KeyOutcome::Unknown, effort);
            }
            let Some(undo) = self.try_move(mv) else {
                continue;
            };
            if !visit(&mut cache, self.cache_key(), self.counts()) {
                self.unlink(undo);
                continue;
            }
            effort.states += 1;
            if self.det_done == self.det.len() {
                return (KeyOutcome::Linearizable, effort);
            }
            stack.push(Frame {
                moves: self.moves(),
                next: 0,
                entered_by: Some(undo),
            });
            if self.det_done > best.linearized {
                best = self.frontier(&stack);
            }
        }
        (KeyOutcome::Violation(best), effort)
    }

    /// The report of the configuration on top of `stack`.
    fn frontier(&self, stack: &[Frame]) -> Frontier {
        let last = stack
            .iter()
            .rev()
            .filter_map(|f| f.entered_by.map(|u| u.op as usize))
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let stuck = stack
            .last()
            .map(|f| {
                f.moves
                    .iter()
                    .filter(|m| matches!(m, Move::Det(_)))
                    .map(|&m| self.op_of(m) as usize)
                    .collect()
            })
            .unwrap_or_default();
        Frontier {
            determinate: self.det.len(),
            linearized: self.det_done,
            state: self.state.map(|v| self.values[v as usize]),
            last,
            stuck,
        }
    }

    /// The operations of the key (for the report).
    pub fn ops(&self) -> &'a [&'a Operation] {
        self.ops
    }
}
