//! What a linearizability check reports: the rule a history broke, as a value, with
//! the operations around it.

use std::fmt;

/// Which rule of the key model a history broke, as a value to match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HistoryRule {
    /// A write returned index 0 (versions are nonzero).
    ZeroIndex,
    /// A write returned an index not above one the key already had.
    VersionWentBack,
    /// A read returned absent while the key held a value.
    ReadAbsent,
    /// A read returned a value no operation wrote to the key.
    ReadNeverWritten,
    /// A read returned another state than the key held.
    StaleRead,
    /// `exists` disagreed with the key's state.
    ExistsWrong,
    /// A create succeeded on a present key (or could not apply there).
    CreateOnPresent,
    /// A create failed with `KeyExists` on an absent key.
    UnjustifiedExists,
    /// A swap succeeded (or could apply) although the key had another index.
    SwapOnOtherIndex,
    /// A compare-delete succeeded (or could apply) although the key had another index.
    CompareDeleteOnOtherIndex,
    /// A conditional operation failed with a conflict the state does not justify.
    UnjustifiedConflict,
    /// A delete reported the wrong `existed`.
    DeleteExistedWrong,
    /// An operation returned a reply of another operation's kind.
    ImpossibleReply,
    /// No order of the concurrent operations fits the model.
    NoOrderFits,
    /// The search reached its bound without deciding: no violation is proven.
    Undecided,
    /// A list was not an atomic snapshot of the keys it returned.
    NotASnapshot,
}

/// A broken rule (or an undecided search), with a shortened history around it.
#[derive(Clone, Debug)]
pub struct HistoryViolation {
    /// The key whose sub-history broke a rule (`None` for multi-key checks).
    pub key: Option<String>,
    /// The rule that was broken.
    pub rule: HistoryRule,
    /// What happened, in words.
    pub detail: String,
    /// The operations around the problem, one per line, with their times.
    pub history: String,
}

impl HistoryViolation {
    /// True when the search gave up (bounded) instead of proving a violation.
    pub fn undecided(&self) -> bool {
        self.rule == HistoryRule::Undecided
    }
}

impl fmt::Display for HistoryViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.undecided() {
            write!(f, "UNDECIDED (search bound reached, no violation proven): ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "key {key:?}: ")?;
        }
        writeln!(f, "{}", self.detail)?;
        write!(f, "{}", self.history)
    }
}
