//! A linearizability checker for client histories, in the Wing–Gong / Porcupine style.
//!
//! A history is a list of [`Event`]s: one per client operation, with the logical time it was
//! invoked (`call`), the time its result came back (`ret`), its input and its output. The history
//! is *linearizable* (Herlihy & Wing, "Linearizability: A Correctness Condition for Concurrent
//! Objects", 1990) if every operation can be given a single instant inside its interval
//! `[call, ret]` such that applying the operations one at a time in the order of those instants to
//! a sequential [`Model`] produces exactly the observed outputs.
//!
//! # Algorithm
//! [`check`] is the search of Wing & Gong ("Testing and Verifying Concurrent Objects", 1993) with
//! the improvements of Lowe ("Testing for Linearizability", 2017) that Porcupine also uses:
//! - every operation contributes a *call* entry and a *return* entry; the entries are sorted by
//!   time into a doubly linked list;
//! - the search walks the list from the front. At a call entry it tries to linearize that
//!   operation next (the model must accept its output); if so, it *lifts* the call and its return
//!   out of the list, pushes the choice on a backtracking stack and restarts from the front. Reaching
//!   a return entry means that operation had to be linearized already, so the last choice is
//!   undone (*unlifted*) and the search continues after it;
//! - a memo cache of every (set of linearized operations, model state) configuration already
//!   explored prunes the search: reaching the same configuration again cannot lead anywhere new.
//!
//! [`check_kv`] uses P-compositionality (Horn & Kroening, "Faster linearizability checking via
//! P-compositionality", 2015; also Herlihy & Wing's locality theorem): a key-value history is
//! linearizable iff the sub-history of every key is linearizable as a single register, so each key
//! is checked separately, which keeps every search small.
//!
//! # Time convention
//! Times are plain `u64` logical instants chosen by the caller. Operation A *precedes* operation B
//! in real time only if `A.ret < B.call` **strictly**. An operation whose return time equals
//! another's call time is treated as *concurrent* with it (at equal times, call entries are
//! sorted before return entries). This is the conservative choice: when a simulator records
//! several events in the same tick, the checker never assumes an order the clients might not have
//! observed, so it cannot report a false violation; the cost is that it may miss a violation that
//! only shows between two operations touching at one instant. A recorder that wants every event
//! ordered should use a counter that increases at every event as its clock.
//!
//! # Unknown outcomes
//! An operation whose client never learned the result (timeout, crash, lost reply) has
//! `ret == None`. It may have taken effect at any instant after its call, or never; its output is
//! unconstrained. Its return is at +infinity, so it never forces anything, and a configuration in
//! which every *completed* operation is linearized is a success. To apply such an operation the
//! checker asks [`Model::step_unknown`] for the states it can lead to.
//!
//! Unknown outcomes are what makes the search expensive (each one may or may not have happened,
//! at any later time), so the search handles them with four reductions, each of which keeps the
//! verdict exact (the arguments are at `search`, `Cache` and `merge_unobserved_values`):
//! - completed operations are tried before unknown-outcome ones at every configuration;
//! - the memo cache prunes a configuration if one with the same completed operations, the same
//!   state and a *subset* of the unknown-outcome operations applied was visited (fewer spent means
//!   at least as many choices left);
//! - unknown-outcome operations with identical inputs are applied in call order only (symmetry);
//!   one is not applied if it leaves the state unchanged, nor right after another one if applying
//!   it instead of that other one gives the same state (the other was simply overwritten);
//! - [`check_kv`] rewrites every written value that nothing reads to one marker value, so unread
//!   writes become identical.
//!
//! A test checks the verdicts against exhaustive enumeration on small random histories.
//!
//! # Limits
//! `step_budget` bounds the number of search steps (one step = one attempt to linearize an
//! operation, or one backtrack). A history whose search needs more returns [`Outcome::Unknown`]
//! instead of running for an unbounded time: the general problem is NP-complete (Gibbons &
//! Korach, 1997). Memory is bounded by it too: each step adds at most one cache entry.
//! Proving a violation costs more than accepting, as every configuration before the violation
//! must be ruled out. For scale, on generated histories of 400 operations on one key (the tests'
//! large histories), 20% of them with unknown outcome: accepting took up to about 64 thousand
//! steps, refuting a corrupt read up to about 4 million (about a second in release); with no
//! unknown outcomes, refuting took at most about 16 thousand.

use std::collections::{hash_map, BTreeMap, HashMap, HashSet};
use std::fmt;

/// A sequential specification: the object the history is checked against.
pub trait Model {
    /// The state of the object. Hashed and compared by the memo cache.
    type State: Clone + Eq + std::hash::Hash + std::fmt::Debug;
    /// An operation's input (what the client asked for).
    type Input: Clone + std::fmt::Debug;
    /// An operation's output (what the client was told).
    type Output: Clone + std::fmt::Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after applying `input` if `output` is a legal result of it in `state`; None if not.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// Every state that applying `input` to `state` can lead to when its output is unknown (any
    /// output is accepted). Used only for operations with `ret == None`.
    ///
    /// Returns `None` if the model cannot enumerate them; [`check`] then answers
    /// [`Outcome::Unknown`] for a history that contains an unknown-outcome operation, rather than
    /// guess. The default returns `None`, so a model used with unknown-outcome operations must
    /// override this (the key-value model behind [`check_kv`] does).
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Option<Vec<Self::State>> {
        let _ = (state, input);
        None
    }
}

/// One client operation in a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<I, O> {
    /// The client that issued the operation (for the human reading a report; the checker does not
    /// assume anything about a client's operations beyond their times).
    pub client: u64,
    /// Logical time the operation was invoked.
    pub call: u64,
    /// Logical time the result reached the client; `None` if the outcome is unknown: the
    /// operation may have taken effect at any time after `call`, or never. Must be `>= call`.
    pub ret: Option<u64>,
    /// What the client asked for.
    pub input: I,
    /// What the client was told: `Some` exactly when `ret` is `Some`. When `ret` is `None` this is
    /// ignored (an unknown outcome constrains nothing).
    pub output: Option<O>,
}

/// The verdict of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Some order of the operations, consistent with real time, explains every output.
    Linearizable,
    /// No such order exists (or the history is malformed, e.g. an operation returns before it is
    /// called, or completes without an output).
    NotLinearizable {
        /// For a human debugging a seed: the key (for [`check_kv`]), the longest linearizable
        /// prefix the search found, the model state after it, and the operations none of which
        /// could be placed next.
        detail: String,
    },
    /// No verdict: the step budget ran out first, or the history holds an unknown-outcome
    /// operation and the model does not implement [`Model::step_unknown`].
    Unknown,
}

/// Checks `history` against `model`, spending at most `step_budget` search steps.
///
/// See the module documentation for the algorithm and the time convention.
pub fn check<M: Model>(
    model: &M,
    history: &[Event<M::Input, M::Output>],
    step_budget: u64,
) -> Outcome {
    let ops: Vec<Op<'_, M::Input, M::Output>> = history.iter().enumerate().collect();
    let classes: Vec<usize> = (0..ops.len()).collect();
    check_ops(model, &ops, &ops, &classes, step_budget, &|_| None)
}

/// Checks a sub-history given as (index in the caller's history, event) pairs; the indices only
/// serve to name operations in the report. `classes[i]` is an equivalence class for `ops[i]`:
/// unknown-outcome operations in one class must have identical inputs (see `search`). `shown`
/// holds the operations as the report shows them (the same times; `check_kv` searches a
/// rewritten copy). `replay` may describe the state after a prefix (positions in `ops`) in terms
/// of `shown`; otherwise the search's state is printed.
fn check_ops<M: Model, I: fmt::Debug, O: fmt::Debug>(
    model: &M,
    ops: &Ops<'_, M::Input, M::Output>,
    shown: &Ops<'_, I, O>,
    classes: &[usize],
    step_budget: u64,
    replay: &dyn Fn(&[usize]) -> Option<String>,
) -> Outcome {
    if let Some(detail) = malformed(shown) {
        return Outcome::NotLinearizable { detail };
    }
    match search(model, ops, classes, step_budget) {
        Search::Linearizable => Outcome::Linearizable,
        Search::Unknown => Outcome::Unknown,
        Search::Violation { prefix, state } => Outcome::NotLinearizable {
            detail: describe_violation(
                shown,
                &prefix,
                &replay(&prefix).unwrap_or_else(|| format!("{state:?}")),
            ),
        },
    }
}

/// Returns a description of the first malformed event, if any.
fn malformed<I: fmt::Debug, O: fmt::Debug>(ops: &Ops<'_, I, O>) -> Option<String> {
    for &(index, event) in ops {
        match event.ret {
            Some(ret) if ret < event.call => {
                return Some(format!(
                    "malformed history: operation #{index} returns at {ret} before its call at {}: {}",
                    event.call,
                    describe_op(index, event)
                ));
            }
            Some(_) if event.output.is_none() => {
                return Some(format!(
                    "malformed history: operation #{index} completed without an output: {}",
                    describe_op(index, event)
                ));
            }
            _ => {}
        }
    }
    None
}

/// One operation of a (sub-)history: its position in the caller's history, and the event.
type Op<'a, I, O> = (usize, &'a Event<I, O>);

/// A (sub-)history as the search sees it.
type Ops<'a, I, O> = [Op<'a, I, O>];

/// What the search found.
enum Search<S> {
    Linearizable,
    Unknown,
    /// Not linearizable; `prefix` is the longest linearizable prefix found, as positions in the
    /// `ops` slice, in linearization order, and `state` the model state after it.
    Violation {
        prefix: Vec<usize>,
        state: S,
    },
}

/// Marks the end of a list.
const NIL: usize = usize::MAX;

/// One call or return entry.
#[derive(Clone, Copy)]
struct Entry {
    /// Position of the operation in the `ops` slice.
    op: usize,
    /// Rank of the entry in the time order of all entries.
    rank: usize,
    /// True for a call entry.
    is_call: bool,
    /// For the call entry of a completed operation, the index of its return entry.
    ret_entry: Option<usize>,
}

/// A fixed-size set of operation positions.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BitSet(Box<[u64]>);

impl BitSet {
    fn new(len: usize) -> Self {
        BitSet(vec![0; len.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    /// The elements of `self` in `mask` (`keep` true) or not in `mask` (`keep` false).
    fn masked(&self, mask: &BitSet, keep: bool) -> BitSet {
        let words = self.0.iter().zip(mask.0.iter());
        BitSet(if keep {
            words.map(|(a, m)| a & m).collect()
        } else {
            words.map(|(a, m)| a & !m).collect()
        })
    }
    fn is_subset_of(&self, other: &BitSet) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & !b == 0)
    }
}

/// One choice on the backtracking stack.
struct Frame<S> {
    /// The call entry that was lifted.
    entry: usize,
    /// The model state before the operation was applied.
    state: S,
    /// The next successor state to try for this entry when the search comes back to it.
    next_alternative: usize,
    /// The scan phase the entry was found in (see `search`).
    phase: Phase,
}

/// Where the scan of candidates for the next linearized operation is.
#[derive(Clone, Copy)]
enum Phase {
    /// In the list of completed operations' entries.
    Completed,
    /// In the list of unknown-outcome calls, taking those ranked before `limit` (the first
    /// return entry still in the completed list).
    Unknown { limit: usize },
}

/// The memo cache. A configuration is (C, A, s): the completed operations linearized, the
/// unknown-outcome operations applied, and the model state. (C, A, s) can be skipped if some
/// (C, A', s) with A' ⊆ A was visited: unknown-outcome operations are optional and never expire,
/// so fewer applied ones leave at least the same choices (with no unknown-outcome operations this
/// is Porcupine's exact-match cache).
struct Cache<S> {
    completed_mask: BitSet,
    visited: HashMap<(BitSet, S), Vec<BitSet>>,
}

impl<S: Eq + std::hash::Hash> Cache<S> {
    /// Records configuration (`linearized`, `state`); false if it is dominated by one visited.
    fn visit(&mut self, linearized: &BitSet, state: S) -> bool {
        let completed = linearized.masked(&self.completed_mask, true);
        let unknown = linearized.masked(&self.completed_mask, false);
        match self.visited.entry((completed, state)) {
            hash_map::Entry::Vacant(slot) => {
                slot.insert(vec![unknown]);
                true
            }
            hash_map::Entry::Occupied(mut slot) => {
                let applied_sets = slot.get_mut();
                if applied_sets.iter().any(|seen| seen.is_subset_of(&unknown)) {
                    return false;
                }
                applied_sets.retain(|seen| !unknown.is_subset_of(seen));
                applied_sets.push(unknown);
                true
            }
        }
    }
}

/// The search proper: Lowe's variant of Wing & Gong, as in Porcupine, extended with
/// unknown-outcome operations.
///
/// The completed operations' call and return entries form one doubly linked list in time order;
/// the unknown-outcome operations' call entries form a second one (their returns are at +infinity
/// and never reached). At each configuration the candidates to linearize next are the calls in
/// the first list up to its first return entry, then the calls in the second list ranked before
/// that return entry: completed operations are tried first, so configurations are first reached
/// with few unknown-outcome operations applied, which makes the cache's dominance check bite.
/// Applying an unknown-outcome operation that leaves the state unchanged is skipped (never
/// applying it is equivalent).
///
/// Symmetry reduction: unknown-outcome operations with the same class (identical inputs) are
/// applied in call order, the earliest unapplied one first. This loses no linearization: if one
/// applies a later operation of the class while an earlier one is unapplied, the earlier one (also
/// called already, and never expiring) can take its place, and the later one the earlier's place
/// if that is used further on. With it, the applied set of a class is always a prefix, so the
/// cache sees counts per class rather than every subset.
fn search<M: Model>(
    model: &M,
    ops: &Ops<'_, M::Input, M::Output>,
    classes: &[usize],
    step_budget: u64,
) -> Search<M::State> {
    let n = ops.len();
    // Dense class numbers, members in call order, and each unknown-outcome op's place in its class.
    let mut by_call: Vec<usize> = (0..n).filter(|&i| ops[i].1.ret.is_none()).collect();
    by_call.sort_by_key(|&i| (ops[i].1.call, i));
    let mut dense: HashMap<usize, usize> = HashMap::new();
    let mut class_of = vec![NIL; n];
    let mut index_in_class = vec![0usize; n];
    let mut class_sizes: Vec<usize> = Vec::new();
    for &i in &by_call {
        let next_class = dense.len();
        let class = *dense.entry(classes[i]).or_insert(next_class);
        if class == class_sizes.len() {
            class_sizes.push(0);
        }
        class_of[i] = class;
        index_in_class[i] = class_sizes[class];
        class_sizes[class] += 1;
    }
    let mut applied_in_class = vec![0usize; class_sizes.len()];

    // Sort key: (time, call before return at equal times, op position).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, &(_, event)) in ops.iter().enumerate() {
        order.push((event.call, false, i));
        if let Some(ret) = event.ret {
            order.push((ret, true, i));
        }
    }
    order.sort_unstable();
    let mut entries: Vec<Entry> = Vec::with_capacity(order.len());
    let mut ret_entry_of = vec![NIL; n];
    for (rank, &(_, is_return, op)) in order.iter().enumerate() {
        entries.push(Entry {
            op,
            rank,
            is_call: !is_return,
            ret_entry: None,
        });
        if is_return {
            ret_entry_of[op] = rank;
        }
    }
    for entry in &mut entries {
        if entry.is_call && ops[entry.op].1.ret.is_some() {
            entry.ret_entry = Some(ret_entry_of[entry.op]);
        }
    }

    // Two doubly linked lists over `entries`, with head sentinels after the entries.
    let len = entries.len();
    let (head_completed, head_unknown) = (len, len + 1);
    let mut next = vec![NIL; len + 2];
    let mut prev = vec![NIL; len + 2];
    let (mut tail_completed, mut tail_unknown) = (head_completed, head_unknown);
    for (i, entry) in entries.iter().enumerate() {
        let tail = if ops[entry.op].1.ret.is_some() {
            &mut tail_completed
        } else {
            &mut tail_unknown
        };
        next[*tail] = i;
        prev[i] = *tail;
        *tail = i;
    }

    let mut completed_mask = BitSet::new(n);
    for (i, &(_, event)) in ops.iter().enumerate() {
        if event.ret.is_some() {
            completed_mask.set(i);
        }
    }
    let completed_total = ops.iter().filter(|(_, e)| e.ret.is_some()).count();
    let mut remaining_completed = completed_total;
    let mut cache = Cache {
        completed_mask,
        visited: HashMap::new(),
    };
    let mut state = model.init();
    let mut linearized = BitSet::new(n);
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    // The longest prefix: the most completed operations linearized, found first.
    let mut best_prefix: Vec<usize> = Vec::new();
    let mut best_completed = 0;
    let mut best_state = state.clone();
    let mut steps: u64 = 0;

    let mut phase = Phase::Completed;
    let mut cursor = next[head_completed];
    let mut alternative_start = 0;
    loop {
        if remaining_completed == 0 {
            return Search::Linearizable;
        }
        steps += 1;
        if steps > step_budget {
            return Search::Unknown;
        }
        let candidate = match phase {
            Phase::Completed => {
                if cursor != NIL && entries[cursor].is_call {
                    Some(cursor)
                } else {
                    // The first return entry: that operation must come no later. Now try the
                    // unknown-outcome calls made before it.
                    let limit = if cursor == NIL {
                        usize::MAX
                    } else {
                        entries[cursor].rank
                    };
                    phase = Phase::Unknown { limit };
                    cursor = next[head_unknown];
                    alternative_start = 0;
                    continue;
                }
            }
            Phase::Unknown { limit } => {
                (cursor != NIL && entries[cursor].rank < limit).then_some(cursor)
            }
        };
        let Some(at) = candidate else {
            // No candidate fits here: undo the last choice and try the next one after it.
            let Some(frame) = stack.pop() else {
                return Search::Violation {
                    prefix: best_prefix,
                    state: best_state,
                };
            };
            let entry = entries[frame.entry];
            state = frame.state;
            linearized.clear(entry.op);
            if let Some(ret_entry) = entry.ret_entry {
                remaining_completed += 1;
                unlift(&mut next, &mut prev, ret_entry); // reverse order of the lifts
            } else {
                applied_in_class[class_of[entry.op]] -= 1;
            }
            unlift(&mut next, &mut prev, frame.entry);
            cursor = frame.entry;
            alternative_start = frame.next_alternative;
            phase = frame.phase;
            continue;
        };
        let entry = entries[at];
        let event = ops[entry.op].1;
        if event.ret.is_none() && index_in_class[entry.op] != applied_in_class[class_of[entry.op]] {
            // Symmetry reduction: an earlier identical operation is still unapplied.
            alternative_start = 0;
            cursor = next[at];
            continue;
        }
        let successors: Vec<M::State> = match (event.ret, &event.output) {
            (Some(_), Some(output)) => model
                .step(&state, &event.input, output)
                .into_iter()
                .collect(),
            (Some(_), None) => Vec::new(), // rejected by `malformed` beforehand
            (None, _) => match model.step_unknown(&state, &event.input) {
                Some(states) => states,
                None => return Search::Unknown,
            },
        };
        let mut placed = false;
        for (k, successor) in successors.into_iter().enumerate().skip(alternative_start) {
            if event.ret.is_none() {
                if successor == state {
                    continue; // applying it changes nothing: same as never applying it
                }
                if let Some(top) = stack.last() {
                    if ops[entries[top.entry].op].1.ret.is_none()
                        && model
                            .step_unknown(&top.state, &event.input)
                            .is_some_and(|direct| direct.contains(&successor))
                    {
                        // The unknown-outcome operation applied just before was overwritten:
                        // applying this one directly gives the same state with fewer applied.
                        continue;
                    }
                }
            }
            linearized.set(entry.op);
            if !cache.visit(&linearized, successor.clone()) {
                linearized.clear(entry.op);
                continue;
            }
            stack.push(Frame {
                entry: at,
                state: std::mem::replace(&mut state, successor),
                next_alternative: k + 1,
                phase,
            });
            lift(&mut next, &mut prev, at);
            if let Some(ret_entry) = entry.ret_entry {
                remaining_completed -= 1;
                lift(&mut next, &mut prev, ret_entry);
            } else {
                applied_in_class[class_of[entry.op]] += 1;
            }
            let completed_linearized = completed_total - remaining_completed;
            if completed_linearized > best_completed {
                best_completed = completed_linearized;
                best_prefix = stack.iter().map(|f| entries[f.entry].op).collect();
                best_state = state.clone();
            }
            placed = true;
            break;
        }
        alternative_start = 0;
        if placed {
            phase = Phase::Completed;
            cursor = next[head_completed];
        } else {
            cursor = next[at];
        }
    }
}

/// Removes entry `e` from its list; `e` keeps its own links so [`unlift`] can put it back.
fn lift(next: &mut [usize], prev: &mut [usize], e: usize) {
    let (p, x) = (prev[e], next[e]);
    next[p] = x;
    if x != NIL {
        prev[x] = p;
    }
}

/// Puts back entry `e` removed by [`lift`]; lifts must be undone in reverse order.
fn unlift(next: &mut [usize], prev: &mut [usize], e: usize) {
    let (p, x) = (prev[e], next[e]);
    next[p] = e;
    if x != NIL {
        prev[x] = e;
    }
}

/// One operation, for reports: `#index client C [call, ret] input -> output`.
fn describe_op<I: fmt::Debug, O: fmt::Debug>(index: usize, event: &Event<I, O>) -> String {
    let ret = match event.ret {
        Some(ret) => ret.to_string(),
        None => "?".to_string(),
    };
    let output = match (&event.ret, &event.output) {
        (Some(_), Some(output)) => format!("{output:?}"),
        (Some(_), None) => "(missing)".to_string(),
        (None, _) => "(unknown outcome)".to_string(),
    };
    format!(
        "#{index} client {} [{}, {ret}] {:?} -> {output}",
        event.client, event.call, event.input
    )
}

/// How many operations of the longest prefix a report lists (the last ones, nearest the failure).
const REPORT_PREFIX_OPS_MAX: usize = 30;

/// How many unplaced unknown-outcome operations a report lists (the latest called).
const REPORT_UNKNOWN_OPS_MAX: usize = 10;

/// Builds the human-readable report for a violation.
fn describe_violation<I: fmt::Debug, O: fmt::Debug>(
    ops: &Ops<'_, I, O>,
    prefix: &[usize],
    state: &str,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let completed = ops.iter().filter(|(_, e)| e.ret.is_some()).count();
    let _ = writeln!(
        out,
        "longest linearizable prefix: {} of {} operations ({} completed, {} unknown-outcome)",
        prefix.len(),
        ops.len(),
        completed,
        ops.len() - completed
    );
    let skipped = prefix.len().saturating_sub(REPORT_PREFIX_OPS_MAX);
    if skipped > 0 {
        let _ = writeln!(out, "  ... {skipped} earlier operations");
    }
    for &op in &prefix[skipped..] {
        let (index, event) = ops[op];
        let _ = writeln!(out, "  {}", describe_op(index, event));
    }
    let _ = writeln!(out, "state after the prefix: {state}");
    // The operations that could come next: every unplaced operation called no later than the
    // earliest return among the unplaced completed ones. None of them fit.
    let mut in_prefix = vec![false; ops.len()];
    for &op in prefix {
        in_prefix[op] = true;
    }
    let deadline = ops
        .iter()
        .enumerate()
        .filter(|&(i, _)| !in_prefix[i])
        .filter_map(|(_, (_, e))| e.ret)
        .min();
    let _ = writeln!(
        out,
        "could not place next any of (every unplaced operation called by {}):",
        deadline.map_or("the end".to_string(), |d| d.to_string())
    );
    let mut unknown_available = Vec::new();
    for (i, &(index, event)) in ops.iter().enumerate() {
        if !in_prefix[i] && deadline.is_none_or(|d| event.call <= d) {
            if event.ret.is_some() {
                let _ = writeln!(out, "  {}", describe_op(index, event));
            } else {
                unknown_available.push(describe_op(index, event));
            }
        }
    }
    if !unknown_available.is_empty() {
        let _ = writeln!(
            out,
            "  nor, before them, any of {} unknown-outcome operations, the latest:",
            unknown_available.len()
        );
        let skip = unknown_available
            .len()
            .saturating_sub(REPORT_UNKNOWN_OPS_MAX);
        for line in &unknown_available[skip..] {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Key-value histories
// ---------------------------------------------------------------------------------------------

/// A client operation on the key-value store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read a key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Set a key to a value.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Compare-and-set: succeeds iff the current value equals `expected` (None = key absent);
    /// then sets the key to `new` (None = delete). A failed Cas changes nothing.
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The value the key must hold; None = the key must be absent.
        expected: Option<Vec<u8>>,
        /// The value to set on success; None = delete the key.
        new: Option<Vec<u8>>,
    },
}

impl KvInput {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            KvInput::Get { key }
            | KvInput::Put { key, .. }
            | KvInput::Delete { key }
            | KvInput::Cas { key, .. } => key,
        }
    }
}

/// The result of a [`KvInput`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// A Get's result: the value, or None if the key was absent.
    Get(Option<Vec<u8>>),
    /// A Put took effect.
    Put,
    /// A Delete took effect (whether or not the key existed).
    Delete,
    /// Whether a Cas succeeded.
    Cas(bool),
}

/// Formats bytes as a quoted string when printable ASCII, else as hex (`0x..`).
struct Bytes<'a>(&'a [u8]);

impl fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            write!(f, "\"{}\"", String::from_utf8_lossy(self.0))
        } else {
            write!(f, "0x")?;
            for b in self.0 {
                write!(f, "{b:02x}")?;
            }
            Ok(())
        }
    }
}

/// Formats an optional value; `None` reads as `absent`.
struct OptBytes<'a>(Option<&'a [u8]>);

impl fmt::Debug for OptBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(bytes) => Bytes(bytes).fmt(f),
            None => write!(f, "absent"),
        }
    }
}

impl fmt::Debug for KvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvInput::Get { key } => write!(f, "get({:?})", Bytes(key)),
            KvInput::Put { key, value } => write!(f, "put({:?}, {:?})", Bytes(key), Bytes(value)),
            KvInput::Delete { key } => write!(f, "delete({:?})", Bytes(key)),
            KvInput::Cas { key, expected, new } => write!(
                f,
                "cas({:?}, {:?} => {:?})",
                Bytes(key),
                OptBytes(expected.as_deref()),
                OptBytes(new.as_deref())
            ),
        }
    }
}

impl fmt::Debug for KvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOutput::Get(value) => write!(f, "{:?}", OptBytes(value.as_deref())),
            KvOutput::Put => write!(f, "ok"),
            KvOutput::Delete => write!(f, "ok"),
            KvOutput::Cas(ok) => write!(f, "{}", if *ok { "swapped" } else { "not swapped" }),
        }
    }
}

/// One key of the store as a register: the state is the key's value (None = absent). The key in
/// each input is ignored; [`check_kv`] feeds it one key's operations only.
struct Register;

/// A register's value; None = absent. Printed readably in reports.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Value(Option<Vec<u8>>);

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        OptBytes(self.0.as_deref()).fmt(f)
    }
}

impl Model for Register {
    type State = Value;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Value {
        Value(None)
    }

    fn step(&self, state: &Value, input: &KvInput, output: &KvOutput) -> Option<Value> {
        match (input, output) {
            (KvInput::Get { .. }, KvOutput::Get(value)) => {
                (*value == state.0).then(|| state.clone())
            }
            (KvInput::Put { value, .. }, KvOutput::Put) => Some(Value(Some(value.clone()))),
            (KvInput::Delete { .. }, KvOutput::Delete) => Some(Value(None)),
            (KvInput::Cas { expected, new, .. }, KvOutput::Cas(swapped)) => {
                match (*expected == state.0, *swapped) {
                    (true, true) => Some(Value(new.clone())),
                    (false, false) => Some(state.clone()),
                    _ => None,
                }
            }
            _ => None, // an output of the wrong kind is never legal
        }
    }

    fn step_unknown(&self, state: &Value, input: &KvInput) -> Option<Vec<Value>> {
        Some(vec![match input {
            KvInput::Get { .. } => state.clone(),
            KvInput::Put { value, .. } => Value(Some(value.clone())),
            KvInput::Delete { .. } => Value(None),
            KvInput::Cas { expected, new, .. } => {
                if *expected == state.0 {
                    Value(new.clone())
                } else {
                    state.clone()
                }
            }
        }])
    }
}

/// Rewrites one key's operations so that every written value no operation can observe becomes
/// one marker value; returns the rewritten events (same order, times and outputs).
///
/// A value is *observed* if a completed Get returned it or a Cas (completed or not) expects it.
/// Every register operation depends on the state only through equality with observed values (a
/// Get's output, a Cas's `expected`), so mapping each unobserved value to one marker that equals
/// no observed value changes no operation's legality or effect on what is observed: the rewritten
/// history is linearizable iff the original is. It makes unread writes with unknown outcome
/// identical, so the symmetry reduction of `search` treats them as one class, and it merges
/// states the cache would otherwise keep apart.
fn merge_unobserved_values(ops: &Ops<'_, KvInput, KvOutput>) -> Vec<Event<KvInput, KvOutput>> {
    let mut observed: HashSet<&[u8]> = HashSet::new();
    for (_, event) in ops {
        match (&event.input, &event.output, event.ret) {
            (KvInput::Get { .. }, Some(KvOutput::Get(Some(value))), Some(_)) => {
                observed.insert(value);
            }
            (
                KvInput::Cas {
                    expected: Some(expected),
                    ..
                },
                _,
                _,
            ) => {
                observed.insert(expected);
            }
            _ => {}
        }
    }
    let mut marker = b"<a value nobody read>".to_vec();
    while observed.contains(marker.as_slice()) {
        marker.push(b'#');
    }
    let rewrite = |value: &Vec<u8>| {
        if observed.contains(value.as_slice()) {
            value.clone()
        } else {
            marker.clone()
        }
    };
    ops.iter()
        .map(|(_, event)| {
            let input = match &event.input {
                KvInput::Put { key, value } => KvInput::Put {
                    key: key.clone(),
                    value: rewrite(value),
                },
                KvInput::Cas { key, expected, new } => KvInput::Cas {
                    key: key.clone(),
                    expected: expected.clone(),
                    new: new.as_ref().map(rewrite),
                },
                other => other.clone(),
            };
            Event {
                client: event.client,
                call: event.call,
                ret: event.ret,
                input,
                output: event.output.clone(),
            }
        })
        .collect()
}

/// Checks a key-value history: partitions it by key and checks each key as a register
/// (P-compositionality), in key order; the first violation wins.
///
/// `step_budget` applies to each key separately, so a key whose search is too hard makes the
/// answer [`Outcome::Unknown`] only if no other key shows a violation. Operation numbers in a
/// report (`#n`) are positions in `history`. Gets with unknown outcome constrain nothing and are
/// dropped before the search.
pub fn check_kv(history: &[Event<KvInput, KvOutput>], step_budget: u64) -> Outcome {
    let mut by_key: BTreeMap<&[u8], Vec<Op<'_, KvInput, KvOutput>>> = BTreeMap::new();
    for (index, event) in history.iter().enumerate() {
        if event.ret.is_none() && matches!(event.input, KvInput::Get { .. }) {
            continue;
        }
        by_key
            .entry(event.input.key())
            .or_default()
            .push((index, event));
    }
    let mut unknown = false;
    for (key, shown) in &by_key {
        let rewritten = merge_unobserved_values(shown);
        let ops: Vec<Op<'_, KvInput, KvOutput>> = shown
            .iter()
            .zip(&rewritten)
            .map(|(&(index, _), event)| (index, event))
            .collect();
        // Unknown-outcome operations with identical inputs are interchangeable.
        let mut class_ids: HashMap<&KvInput, usize> = HashMap::new();
        let classes: Vec<usize> = ops
            .iter()
            .enumerate()
            .map(|(i, (_, event))| {
                if event.ret.is_some() {
                    ops.len() + i
                } else {
                    let next_id = class_ids.len();
                    *class_ids.entry(&event.input).or_insert(next_id)
                }
            })
            .collect();
        // Report the state in original values: replay the prefix on the original operations.
        let replay = |prefix: &[usize]| {
            let mut state = Register.init();
            for &op in prefix {
                let event = shown[op].1;
                state = match (event.ret, &event.output) {
                    (Some(_), Some(output)) => Register.step(&state, &event.input, output)?,
                    _ => Register.step_unknown(&state, &event.input)?.pop()?,
                };
            }
            Some(format!("{state:?}"))
        };
        match check_ops(&Register, &ops, shown, &classes, step_budget, &replay) {
            Outcome::Linearizable => {}
            Outcome::Unknown => unknown = true,
            Outcome::NotLinearizable { detail } => {
                return Outcome::NotLinearizable {
                    detail: format!("key {:?}: {detail}", Bytes(key)),
                };
            }
        }
    }
    if unknown {
        Outcome::Unknown
    } else {
        Outcome::Linearizable
    }
}

// ---------------------------------------------------------------------------------------------
// Recording
// ---------------------------------------------------------------------------------------------

/// Names one operation recorded by a [`HistoryRecorder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(usize);

/// Builds a history as a client model runs: [`invoke`](Self::invoke) when an operation is sent,
/// then [`complete`](Self::complete) when its result arrives or [`fail`](Self::fail) when the
/// client gives up without knowing the outcome.
#[derive(Debug, Clone)]
pub struct HistoryRecorder<I, O> {
    events: Vec<Event<I, O>>,
}

impl<I, O> Default for HistoryRecorder<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I, O> HistoryRecorder<I, O> {
    /// An empty history.
    pub fn new() -> Self {
        HistoryRecorder { events: Vec::new() }
    }

    /// Records that `client` invoked `input` at `time`; the operation is pending until completed.
    pub fn invoke(&mut self, client: u64, time: u64, input: I) -> OpId {
        self.events.push(Event {
            client,
            call: time,
            ret: None,
            input,
            output: None,
        });
        OpId(self.events.len() - 1)
    }

    /// Records that `op`'s result `output` reached its client at `time`.
    ///
    /// Allowed after [`fail`](Self::fail) (a late reply makes the outcome known). The first
    /// completion wins: completing an operation twice keeps the first result. An `OpId` from
    /// another recorder is ignored.
    pub fn complete(&mut self, op: OpId, time: u64, output: O) {
        if let Some(event) = self.events.get_mut(op.0) {
            if event.ret.is_none() {
                event.ret = Some(time);
                event.output = Some(output);
            }
        }
    }

    /// Records that `op`'s client gave up without learning the outcome (the operation may or may
    /// not take effect). The operation stays unknown-outcome unless completed later.
    pub fn fail(&mut self, op: OpId) {
        // An unknown outcome is the state an invoked operation is already in; nothing to change.
        let _ = op;
    }

    /// Number of operations recorded so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True if no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The history, in invocation order; operations still pending are unknown-outcome.
    pub fn finish(self) -> Vec<Event<I, O>> {
        self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 1_000_000;

    fn k(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }
    fn get(key: &str) -> KvInput {
        KvInput::Get { key: k(key) }
    }
    fn put(key: &str, value: &str) -> KvInput {
        KvInput::Put {
            key: k(key),
            value: k(value),
        }
    }
    fn cas(key: &str, expected: Option<&str>, new: Option<&str>) -> KvInput {
        KvInput::Cas {
            key: k(key),
            expected: expected.map(k),
            new: new.map(k),
        }
    }
    fn got(value: Option<&str>) -> KvOutput {
        KvOutput::Get(value.map(k))
    }
    /// A completed operation.
    fn op(
        client: u64,
        call: u64,
        ret: u64,
        input: KvInput,
        output: KvOutput,
    ) -> Event<KvInput, KvOutput> {
        Event {
            client,
            call,
            ret: Some(ret),
            input,
            output: Some(output),
        }
    }
    /// An operation whose outcome is unknown.
    fn lost(client: u64, call: u64, input: KvInput) -> Event<KvInput, KvOutput> {
        Event {
            client,
            call,
            ret: None,
            input,
            output: None,
        }
    }
    fn assert_violation(history: &[Event<KvInput, KvOutput>]) -> String {
        match check_kv(history, BUDGET) {
            Outcome::NotLinearizable { detail } => detail,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check_kv(&[], BUDGET), Outcome::Linearizable);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(1, 0, 1, get("x"), got(None)),
            op(1, 2, 3, put("x", "a"), KvOutput::Put),
            op(2, 4, 5, get("x"), got(Some("a"))),
            op(2, 6, 7, cas("x", Some("a"), Some("b")), KvOutput::Cas(true)),
            op(
                1,
                8,
                9,
                cas("x", Some("a"), Some("c")),
                KvOutput::Cas(false),
            ),
            op(1, 10, 11, get("x"), got(Some("b"))),
            op(2, 12, 13, KvInput::Delete { key: k("x") }, KvOutput::Delete),
            op(1, 14, 15, get("x"), got(None)),
            op(1, 16, 17, cas("x", None, Some("d")), KvOutput::Cas(true)),
            op(2, 18, 19, get("x"), got(Some("d"))),
        ];
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
    }

    #[test]
    fn sequential_history_with_a_wrong_read_is_not() {
        let h = vec![
            op(1, 0, 1, put("x", "a"), KvOutput::Put),
            op(1, 2, 3, put("x", "b"), KvOutput::Put),
            op(2, 4, 5, get("x"), got(Some("a"))),
        ];
        assert_violation(&h);
    }

    #[test]
    fn concurrent_puts_with_reads_of_either_value_are_linearizable() {
        // put a and put b overlap; readers overlapping both may see either, in either order, as
        // long as each reader's sequence is consistent with one order of the two puts.
        for (first, second) in [("a", "b"), ("b", "a")] {
            let h = vec![
                op(1, 0, 10, put("x", "a"), KvOutput::Put),
                op(2, 1, 11, put("x", "b"), KvOutput::Put),
                op(3, 2, 3, get("x"), got(Some(first))),
                op(3, 12, 13, get("x"), got(Some(second))),
                op(4, 14, 15, get("x"), got(Some(second))),
            ];
            assert_eq!(
                check_kv(&h, BUDGET),
                Outcome::Linearizable,
                "{first} then {second}"
            );
        }
    }

    #[test]
    fn reads_that_disagree_on_the_order_of_two_puts_are_not_linearizable() {
        let h = vec![
            op(1, 0, 10, put("x", "a"), KvOutput::Put),
            op(2, 0, 10, put("x", "b"), KvOutput::Put),
            op(3, 11, 12, get("x"), got(Some("a"))),
            op(4, 13, 14, get("x"), got(Some("b"))),
        ];
        assert_violation(&h);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_not_linearizable() {
        let h = vec![
            op(1, 0, 1, put("x", "old"), KvOutput::Put),
            op(1, 2, 3, put("x", "new"), KvOutput::Put),
            op(2, 4, 5, get("x"), got(Some("old"))),
        ];
        let detail = assert_violation(&h);
        assert!(detail.contains("key \"x\""), "{detail}");
        // The report names the read that could not be placed, with the state it should have seen.
        assert!(
            detail.contains("#2 client 2 [4, 5] get(\"x\") -> \"old\""),
            "{detail}"
        );
        assert!(
            detail.contains("state after the prefix: \"new\""),
            "{detail}"
        );
    }

    #[test]
    fn read_concurrent_with_a_write_may_see_the_old_value() {
        let h = vec![
            op(1, 0, 1, put("x", "old"), KvOutput::Put),
            op(1, 2, 10, put("x", "new"), KvOutput::Put),
            op(2, 4, 5, get("x"), got(Some("old"))),
            op(3, 6, 7, get("x"), got(Some("new"))),
        ];
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
        // ...but once a read saw the new value, a later read may not go back.
        let mut h = h;
        h.push(op(2, 8, 9, get("x"), got(Some("old"))));
        assert_violation(&h);
    }

    #[test]
    fn read_of_a_value_before_its_put_was_invoked_is_not_linearizable() {
        let h = vec![
            op(1, 0, 1, get("x"), got(Some("future"))),
            op(2, 2, 3, put("x", "future"), KvOutput::Put),
        ];
        assert_violation(&h);
    }

    #[test]
    fn touching_intervals_are_concurrent() {
        // The read returns at 5 and the put is called at 5: concurrent by the documented
        // convention, so the read may see the put.
        let h = vec![
            op(1, 0, 5, get("x"), got(Some("v"))),
            op(2, 5, 6, put("x", "v"), KvOutput::Put),
        ];
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
        // One tick apart they are ordered, and the read cannot see the put.
        let h = vec![
            op(1, 0, 4, get("x"), got(Some("v"))),
            op(2, 5, 6, put("x", "v"), KvOutput::Put),
        ];
        assert_violation(&h);
    }

    #[test]
    fn lost_cas_is_not_linearizable() {
        // Two clients CAS from the same expected value and both are told they succeeded.
        let h = vec![
            op(1, 0, 1, put("x", "0"), KvOutput::Put),
            op(
                1,
                2,
                10,
                cas("x", Some("0"), Some("1")),
                KvOutput::Cas(true),
            ),
            op(
                2,
                3,
                11,
                cas("x", Some("0"), Some("2")),
                KvOutput::Cas(true),
            ),
        ];
        assert_violation(&h);
        // One of them failing is fine.
        let h = vec![
            op(1, 0, 1, put("x", "0"), KvOutput::Put),
            op(
                1,
                2,
                10,
                cas("x", Some("0"), Some("1")),
                KvOutput::Cas(true),
            ),
            op(
                2,
                3,
                11,
                cas("x", Some("0"), Some("2")),
                KvOutput::Cas(false),
            ),
            op(2, 12, 13, get("x"), got(Some("1"))),
        ];
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
        // A successful CAS whose effect vanishes is a lost update.
        let h = vec![
            op(1, 0, 1, put("x", "0"), KvOutput::Put),
            op(1, 2, 3, cas("x", Some("0"), Some("1")), KvOutput::Cas(true)),
            op(2, 4, 5, get("x"), got(Some("0"))),
        ];
        assert_violation(&h);
        // A CAS reported as failed although the expected value was there.
        let h = vec![
            op(1, 0, 1, put("x", "0"), KvOutput::Put),
            op(
                1,
                2,
                3,
                cas("x", Some("0"), Some("1")),
                KvOutput::Cas(false),
            ),
        ];
        assert_violation(&h);
    }

    #[test]
    fn unknown_put_observed_later_is_linearizable() {
        let h = vec![
            op(1, 0, 1, put("x", "a"), KvOutput::Put),
            lost(2, 2, put("x", "b")),
            op(3, 100, 101, get("x"), got(Some("b"))),
            op(3, 102, 103, get("x"), got(Some("b"))),
        ];
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
    }

    #[test]
    fn unknown_put_never_observed_is_linearizable() {
        let h = vec![
            op(1, 0, 1, put("x", "a"), KvOutput::Put),
            lost(2, 2, put("x", "b")),
            op(3, 100, 101, get("x"), got(Some("a"))),
            op(3, 102, 103, get("x"), got(Some("a"))),
        ];
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
    }

    #[test]
    fn unknown_put_cannot_take_effect_before_its_call() {
        let h = vec![
            op(3, 0, 1, get("x"), got(Some("b"))),
            lost(2, 2, put("x", "b")),
        ];
        assert_violation(&h);
    }

    #[test]
    fn unknown_put_that_appears_disappears_and_reappears_is_not_linearizable() {
        let h = vec![
            lost(2, 0, put("x", "b")),
            op(3, 10, 11, get("x"), got(Some("b"))),
            op(3, 12, 13, get("x"), got(None)),
            op(3, 14, 15, get("x"), got(Some("b"))),
        ];
        let detail = assert_violation(&h);
        assert!(detail.contains("(unknown outcome)"), "{detail}");
    }

    #[test]
    fn unknown_cas_applies_only_if_it_matched() {
        let h = vec![
            op(1, 0, 1, put("x", "a"), KvOutput::Put),
            lost(2, 2, cas("x", Some("a"), Some("b"))),
            op(3, 10, 11, get("x"), got(Some("b"))),
        ];
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
        let h = vec![
            op(1, 0, 1, put("x", "a"), KvOutput::Put),
            lost(2, 2, cas("x", Some("z"), Some("b"))),
            op(3, 10, 11, get("x"), got(Some("b"))),
        ];
        assert_violation(&h);
    }

    #[test]
    fn unread_unknown_write_can_explain_a_failed_cas() {
        // "b" is never read, so the checker merges it with every other unread value; it must still
        // count as different from "a".
        let h = vec![
            op(1, 0, 1, put("x", "a"), KvOutput::Put),
            lost(2, 2, put("x", "b")),
            op(
                3,
                10,
                11,
                cas("x", Some("a"), Some("c")),
                KvOutput::Cas(false),
            ),
        ];
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
        let without_lost_put = [h[0].clone(), h[2].clone()];
        assert_violation(&without_lost_put);
        // Two unread values stay distinct from a read one.
        let h = vec![
            op(1, 0, 1, put("x", "a"), KvOutput::Put),
            op(1, 2, 3, put("x", "b"), KvOutput::Put),
            op(1, 4, 5, put("x", "c"), KvOutput::Put),
            op(2, 6, 7, get("x"), got(Some("a"))),
        ];
        let detail = assert_violation(&h);
        assert!(detail.contains("state after the prefix: \"c\""), "{detail}");
    }

    #[test]
    fn which_unknown_write_is_used_early_matters() {
        // Either lost write can explain the first read, but only the put can explain the second:
        // the search must not treat "state a after the first read" as explored once it failed
        // with the put spent early.
        let h = vec![
            lost(1, 0, put("x", "a")),
            lost(2, 0, cas("x", None, Some("a"))),
            op(3, 1, 2, get("x"), got(Some("a"))),
            op(3, 3, 4, put("x", "b"), KvOutput::Put),
            op(3, 5, 6, get("x"), got(Some("a"))),
        ];
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
        // With only one lost write, the two reads cannot both be explained.
        assert_violation(&[h[0].clone(), h[2].clone(), h[3].clone(), h[4].clone()]);
    }

    #[test]
    fn keys_are_checked_independently() {
        // Each key is fine on its own; interleaving them changes nothing.
        let h = vec![
            op(1, 0, 3, put("a", "1"), KvOutput::Put),
            op(2, 1, 2, get("b"), got(None)),
            op(2, 4, 5, put("b", "2"), KvOutput::Put),
            op(1, 6, 7, get("a"), got(Some("1"))),
            op(3, 6, 7, get("b"), got(Some("2"))),
        ];
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
        // A value of key a showing up under key b is a violation on b, and the report says so.
        let mut bad = h.clone();
        bad.push(op(3, 8, 9, get("b"), got(Some("1"))));
        let detail = assert_violation(&bad);
        assert!(detail.starts_with("key \"b\":"), "{detail}");
        // Checked as one register (ignoring keys), the good history would not be linearizable:
        // the partition by key is what makes it pass.
        assert!(matches!(
            check(&Register, &h, BUDGET),
            Outcome::NotLinearizable { .. }
        ));
    }

    #[test]
    fn malformed_history_is_reported() {
        let h = vec![op(1, 5, 4, get("x"), got(None))];
        let detail = assert_violation(&h);
        assert!(detail.contains("malformed"), "{detail}");
        let h = vec![Event {
            client: 1,
            call: 0,
            ret: Some(1),
            input: get("x"),
            output: None,
        }];
        let detail = assert_violation(&h);
        assert!(detail.contains("malformed"), "{detail}");
    }

    #[test]
    fn exhausted_budget_gives_unknown() {
        // Many fully concurrent puts of distinct values and a final read of one of them; with a
        // budget of a few steps the search cannot finish.
        let mut h: Vec<_> = (0..20)
            .map(|i| op(i, 0, 100, put("x", &i.to_string()), KvOutput::Put))
            .collect();
        h.push(op(99, 101, 102, get("x"), got(Some("7"))));
        assert_eq!(check_kv(&h, 5), Outcome::Unknown);
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
    }

    /// A model without `step_unknown`: unknown-outcome operations give no verdict.
    struct Counter;
    impl Model for Counter {
        type State = u64;
        type Input = ();
        type Output = u64;
        fn init(&self) -> u64 {
            0
        }
        fn step(&self, state: &u64, _: &(), output: &u64) -> Option<u64> {
            // Increment and return the new value.
            (*output == state + 1).then_some(state + 1)
        }
    }

    #[test]
    fn generic_model_and_missing_step_unknown() {
        let ev = |call, ret, out| Event {
            client: 0,
            call,
            ret: Some(ret),
            input: (),
            output: Some(out),
        };
        let h = vec![ev(0, 10, 2), ev(1, 5, 1), ev(11, 12, 3)];
        assert_eq!(check(&Counter, &h, BUDGET), Outcome::Linearizable);
        let h = vec![ev(0, 1, 2), ev(2, 5, 1)];
        assert!(matches!(
            check(&Counter, &h, BUDGET),
            Outcome::NotLinearizable { .. }
        ));
        let mut h = vec![ev(0, 1, 1)];
        h.push(Event {
            client: 1,
            call: 2,
            ret: None,
            input: (),
            output: None,
        });
        h.push(ev(3, 4, 3));
        assert_eq!(check(&Counter, &h, BUDGET), Outcome::Unknown);
    }

    /// A bag of small numbers: Pop removes any one element (nondeterministic when the outcome
    /// is unknown), so `step_unknown` has several successors.
    struct Bag;
    #[derive(Debug, Clone)]
    enum BagOp {
        Push(u8),
        Pop,
        /// Returns the whole bag, sorted.
        Contents,
    }
    impl Model for Bag {
        type State = Vec<u8>; // kept sorted
        type Input = BagOp;
        /// Pop: the element popped (empty if the bag was); Contents: the bag; Push: empty.
        type Output = Vec<u8>;
        fn init(&self) -> Vec<u8> {
            Vec::new()
        }
        fn step(&self, state: &Vec<u8>, input: &BagOp, output: &Vec<u8>) -> Option<Vec<u8>> {
            let mut next = state.clone();
            match (input, output.as_slice()) {
                (BagOp::Push(x), []) => {
                    next.push(*x);
                    next.sort_unstable();
                    Some(next)
                }
                (BagOp::Pop, []) => state.is_empty().then_some(next),
                (BagOp::Pop, [x]) => {
                    let at = next.iter().position(|y| y == x)?;
                    next.remove(at);
                    Some(next)
                }
                (BagOp::Contents, contents) => (contents == state.as_slice()).then_some(next),
                _ => None,
            }
        }
        fn step_unknown(&self, state: &Vec<u8>, input: &BagOp) -> Option<Vec<Vec<u8>>> {
            Some(match input {
                BagOp::Push(_) => vec![self.step(state, input, &Vec::new())?],
                BagOp::Contents => vec![state.clone()],
                BagOp::Pop if state.is_empty() => vec![state.clone()],
                BagOp::Pop => (0..state.len())
                    .map(|i| {
                        let mut next = state.clone();
                        next.remove(i);
                        next
                    })
                    .collect(),
            })
        }
    }

    #[test]
    fn several_successors_of_an_unknown_outcome_are_all_tried() {
        let ev = |call, ret: Option<u64>, input, output: &[u8]| Event {
            client: 0,
            call,
            ret,
            input,
            output: ret.map(|_| output.to_vec()),
        };
        // The lost pop must have removed 2 (its second possible successor) before the read.
        let h = vec![
            ev(0, Some(1), BagOp::Push(1), &[]),
            ev(2, Some(3), BagOp::Push(2), &[]),
            ev(4, None, BagOp::Pop, &[]),
            ev(10, Some(11), BagOp::Contents, &[1]),
        ];
        assert_eq!(check(&Bag, &h, BUDGET), Outcome::Linearizable);
        // Nothing the lost pop did can leave the bag empty.
        let mut bad = h.clone();
        bad[3] = ev(10, Some(11), BagOp::Contents, &[]);
        assert!(matches!(
            check(&Bag, &bad, BUDGET),
            Outcome::NotLinearizable { .. }
        ));
    }

    #[test]
    fn recorder_builds_the_history() {
        let mut r = HistoryRecorder::new();
        let a = r.invoke(1, 0, get("x"));
        let b = r.invoke(2, 1, put("x", "v"));
        let c = r.invoke(3, 2, put("x", "w"));
        r.complete(b, 3, KvOutput::Put);
        r.complete(a, 4, got(Some("v")));
        r.complete(a, 9, got(None)); // second completion ignored
        r.fail(c);
        let late = r.invoke(1, 5, get("x"));
        r.fail(late);
        r.complete(late, 8, got(Some("w"))); // a late reply after giving up is recorded
        let pending = r.invoke(2, 6, get("x"));
        let _ = pending;
        assert_eq!(r.len(), 5);
        let h = r.finish();
        assert_eq!(h[0], op(1, 0, 4, get("x"), got(Some("v"))));
        assert_eq!(h[1], op(2, 1, 3, put("x", "v"), KvOutput::Put));
        assert_eq!(h[2], lost(3, 2, put("x", "w")));
        assert_eq!(h[3], op(1, 5, 8, get("x"), got(Some("w"))));
        assert_eq!(h[4], lost(2, 6, get("x")));
        assert_eq!(check_kv(&h, BUDGET), Outcome::Linearizable);
    }
}
