//! What a step's check returns: the rule a step broke and what happened.

use crate::error::Error;
use crate::testing::rules::Rule;

/// A broken rule found by one step.
#[derive(Debug)]
pub(super) struct StepViolation {
    pub(super) rule: Rule,
    pub(super) detail: String,
}

pub(super) fn violation(rule: Rule, detail: impl Into<String>) -> StepViolation {
    StepViolation {
        rule,
        detail: detail.into(),
    }
}

/// What a step's check returns: `Err` names the rule broken.
pub(super) type Checked<T = ()> = std::result::Result<T, StepViolation>;

/// A call that failed on a healthy store.
pub(super) fn unexpected_error(what: &str, e: &Error) -> StepViolation {
    violation(Rule::Healthy, format!("{what}: unexpected error {e:?}"))
}
