//! The structured failure every check returns: the phase, the rule broken, the seed
//! and the minimal sequence, printed for a person by `Display`.

use std::fmt::{self, Write as _};

use super::rules::Rule;

/// Which part of [`super::check_backend`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Before any check ran: opening the store under test.
    Setup,
    /// The conformance suite ([`super::conformance`]).
    Conformance,
    /// The sequential model harness ([`super::model`]).
    Model,
    /// The concurrent phase ([`super::concurrent`]).
    Concurrent,
}

/// The seed that replays a failed run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Seed {
    /// `ModelConfig { seed: Some(..), .. }` (printed in hex).
    Model([u8; 32]),
    /// `ConcurrentConfig { seed, .. }`.
    Concurrent(u64),
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seed::Model(seed) => f.write_str(&hex(*seed)),
            Seed::Concurrent(seed) => write!(f, "{seed}"),
        }
    }
}

/// Lowercase hex of a model seed, as failures print it.
pub(crate) fn hex(seed: [u8; 32]) -> String {
    seed.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What one case of the model harness saw: the rule broken (`None`: the case could
/// not run, e.g. wiping its keys failed), at which step, and what happened.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CaseFailure {
    pub(crate) rule: Option<Rule>,
    /// The step that broke the rule; `None`: the checks at the end of the sequence.
    pub(crate) step: Option<usize>,
    pub(crate) detail: String,
}

impl CaseFailure {
    fn write(&self, f: &mut fmt::Formatter<'_>, rule_label: &str) -> fmt::Result {
        let Some(rule) = self.rule else {
            return f.write_str(&self.detail);
        };
        let at = self
            .step
            .map_or("at the end".to_owned(), |s| format!("at step {s}"));
        write!(f, "{rule_label}{rule}\n{at}: {}", self.detail)
    }
}

/// A check that failed: which phase, which rule (a value to match on), the seed that
/// replays it and the minimal sequence, with `Display` for a person to read.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CheckFailure {
    /// The part of the check that failed.
    pub phase: Phase,
    /// The rule broken; `None` when the check could not run (a handle did not open,
    /// wiping the keys failed) or the concurrent history could not be decided within
    /// the search bound.
    pub rule: Option<Rule>,
    /// The seed that replays the failed run, when the phase is seeded.
    pub seed: Option<Seed>,
    /// The model phase: the step of [`CheckFailure::sequence`] that broke the rule
    /// (`None`: the checks after the last step, or no sequence).
    pub step: Option<usize>,
    /// The model phase: the minimal failing sequence, one operation per entry.
    pub sequence: Vec<String>,
    /// What happened, in words.
    pub detail: String,
    layout: Layout,
}

/// What `Display` prints around the fields.
#[derive(Clone, Debug, PartialEq)]
enum Layout {
    /// The detail alone.
    Plain,
    /// A conformance check failed or panicked.
    Conformance { check: &'static str },
    /// A phase stopped because the backend panicked.
    Panicked { what: &'static str },
    /// A model case broke a rule; `before`: the case before shrinking, when it differs.
    Model {
        case: u32,
        shrink_runs: u32,
        handles: usize,
        before: Option<(usize, Box<CaseFailure>)>,
    },
    /// The concurrent phase failed; `what`: the kind of check or of trouble.
    Concurrent { what: String },
}

impl CheckFailure {
    /// A failure that is no broken rule: `phase` could not run (for example the
    /// store under test did not open).
    pub fn new(phase: Phase, detail: impl Into<String>) -> Self {
        CheckFailure {
            phase,
            rule: None,
            seed: None,
            step: None,
            sequence: Vec::new(),
            detail: detail.into(),
            layout: Layout::Plain,
        }
    }

    /// The conformance check `check` failed with `detail` (its panic message).
    pub(crate) fn conformance(check: &'static str, detail: String) -> Self {
        CheckFailure {
            rule: Some(Rule::Conformance(check)),
            layout: Layout::Conformance { check },
            ..CheckFailure::new(Phase::Conformance, detail)
        }
    }

    /// The backend panicked during `phase` (`what` names it); `detail`: the panic.
    pub(crate) fn panicked(phase: Phase, what: &'static str, detail: String) -> Self {
        CheckFailure {
            rule: Some(Rule::Healthy),
            layout: Layout::Panicked { what },
            ..CheckFailure::new(phase, detail)
        }
    }

    /// A model case broke a rule: the shrunk case, its sequence and how it was found.
    pub(crate) fn model(
        found: CaseFailure,
        seed: [u8; 32],
        sequence: Vec<String>,
        (case, shrink_runs, handles): (u32, u32, usize),
        before: Option<(usize, CaseFailure)>,
    ) -> Self {
        CheckFailure {
            phase: Phase::Model,
            rule: found.rule,
            seed: Some(Seed::Model(seed)),
            step: found.step,
            sequence,
            detail: found.detail,
            layout: Layout::Model {
                case,
                shrink_runs,
                handles,
                before: before.map(|(steps, case)| (steps, Box::new(case))),
            },
        }
    }

    /// The concurrent phase with `seed` failed: `what` kind of check or trouble.
    pub(crate) fn concurrent(
        seed: u64,
        rule: Option<Rule>,
        what: impl Into<String>,
        detail: impl fmt::Display,
    ) -> Self {
        CheckFailure {
            rule,
            seed: Some(Seed::Concurrent(seed)),
            layout: Layout::Concurrent { what: what.into() },
            ..CheckFailure::new(Phase::Concurrent, detail.to_string())
        }
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.layout {
            Layout::Plain => f.write_str(&self.detail),
            Layout::Conformance { check } => write!(
                f,
                "the conformance check `{check}` failed\nrule broken: {check}\n{}",
                self.detail
            ),
            Layout::Panicked { what } => write!(
                f,
                "{what} stopped: the backend panicked\nrule broken: {}\n{}",
                Rule::Healthy,
                self.detail
            ),
            Layout::Model {
                case,
                shrink_runs,
                handles,
                before,
            } => {
                writeln!(f, "the backend broke a rule of the model")?;
                let found = CaseFailure {
                    rule: self.rule,
                    step: self.step,
                    detail: self.detail.clone(),
                };
                found.write(f, "rule broken: ")?;
                let seed = self.seed.map(|s| s.to_string()).unwrap_or_default();
                write!(
                    f,
                    "\nseed: {seed} (case {case}, shrunk in {shrink_runs} runs)\nhandles: {handles}\nminimal sequence:\n"
                )?;
                for (i, op) in self.sequence.iter().enumerate() {
                    writeln!(f, "  {i:>2}: {op}")?;
                }
                if let Some((steps, case)) = before {
                    write!(f, "\nbefore shrinking ({steps} steps):\n")?;
                    case.write(f, "rule: ")?;
                }
                Ok(())
            }
            Layout::Concurrent { what } => {
                let seed = self.seed.map(|s| s.to_string()).unwrap_or_default();
                write!(
                    f,
                    "concurrent check failed (seed {seed}): {what}\n{}\nreplay with ConcurrentConfig {{ seed: {seed}, .. }}",
                    self.detail
                )
            }
        }
    }
}

impl std::error::Error for CheckFailure {}
