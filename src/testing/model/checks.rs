//! The checks of each reply against the model: which rule a step broke.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::harness::{Entry, Filter, Gone, Harness, LockSlot, lock_key, show_kind, triple};
use super::ops::{LOCKS, MODEL_LOCK_ROOT, Version};
use super::violation::unexpected_error;
use super::violation::{Checked, StepViolation, violation};
use crate::backend::{Backend, KvPair, LockGuard};
use crate::error::{Error, ErrorKind, Result};
use crate::key::Dir;
use crate::testing::rules::Rule;

impl<B: Backend> Harness<B> {
    /// Why a read by handle `h` of `key` returning `got` instead of the model's state is
    /// wrong: the most specific rule.
    pub(super) fn stale_rule(&self, h: usize, key: &str, got: u64) -> Rule {
        if let Some(&(seen, wrote)) = self.seen[h].0.get(key)
            && got < seen
        {
            return if wrote {
                Rule::ReadYourWrites
            } else {
                Rule::MonotonicReads
            };
        }
        Rule::LatestWrite
    }

    /// Checks what a read of one key returned against the model.
    pub(super) fn check_read(
        &mut self,
        h: usize,
        key: &str,
        got: Option<&KvPair>,
        what: &str,
    ) -> Checked {
        let want = self.data.get(key).cloned();
        match (want, got) {
            (Some(e), Some(pair)) => {
                if pair.key != key {
                    return Err(violation(
                        Rule::Normalised,
                        format!("{what} of {key:?} returned {pair:?}"),
                    ));
                }
                if pair.last_index == e.index && pair.value == e.value {
                    self.saw(h, pair);
                    return Ok(());
                }
                let rule = if pair.last_index < e.index {
                    self.stale_rule(h, key, pair.last_index)
                } else if pair.last_index == e.index {
                    Rule::Normalised
                } else {
                    Rule::LatestWrite
                };
                Err(violation(
                    rule,
                    format!(
                        "{what} via handle {h} of {key:?}: expected value {:?} at last_index {}, got {pair:?}",
                        e.value, e.index
                    ),
                ))
            }
            (Some(e), None) => Err(violation(
                if e.expiry.is_some() {
                    Rule::TtlKept
                } else {
                    Rule::LostWrite
                },
                format!(
                    "{what} via handle {h} of {key:?}: expected value {:?} at last_index {}, got NotFound",
                    e.value, e.index
                ),
            )),
            (None, None) => Ok(()),
            (None, Some(pair)) => {
                let rule = match self.gone.get(key) {
                    Some(Gone::Expired { index }) if *index == pair.last_index => Rule::TtlGone,
                    Some(Gone::Deleted { index, handle }) if *index == pair.last_index => {
                        if *handle == h {
                            Rule::ReadYourWrites
                        } else {
                            Rule::Deleted
                        }
                    }
                    _ if self
                        .data
                        .keys()
                        .any(|k| Dir::new(key).is_ok_and(|d| d.contains(k))) =>
                    {
                        Rule::ImplicitParents
                    }
                    _ => Rule::LatestWrite,
                };
                Err(violation(
                    rule,
                    format!("{what} via handle {h} of {key:?}: expected NotFound, got {pair:?}"),
                ))
            }
        }
    }

    pub(super) fn check_kind(
        &self,
        what: &str,
        got: Option<&Error>,
        want: Option<ErrorKind>,
    ) -> Checked {
        let got_kind = got.map(Error::kind);
        if got_kind == want {
            return Ok(());
        }
        if let Some(e) = got
            && !matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::KeyExists | ErrorKind::KeyModified
            )
        {
            return Err(unexpected_error(what, e));
        }
        Err(violation(
            Rule::ErrorKinds,
            format!(
                "{what}: expected {}, got {}",
                show_kind(want),
                show_kind(got_kind)
            ),
        ))
    }

    pub(super) fn pick(&self, key: &str, version: Version) -> Option<KvPair> {
        let seen = self.observed.get(key)?;
        match version {
            Version::Latest => seen.last().cloned(),
            Version::Previous => seen.first().cloned(),
        }
    }

    pub(super) fn cas_expect(&self, key: &str, index: u64) -> Option<ErrorKind> {
        match self.data.get(key) {
            None => Some(ErrorKind::NotFound),
            Some(e) if e.index == index => None,
            Some(_) => Some(ErrorKind::KeyModified),
        }
    }

    pub(super) fn check_cas(
        &self,
        what: &str,
        got: Option<&Error>,
        want: Option<ErrorKind>,
    ) -> Checked {
        self.check_kind(what, got, want).map_err(|mut v| {
            if v.rule == Rule::ErrorKinds && (want.is_none() || got.is_none()) {
                v.rule = Rule::CompareAndSwap;
            }
            v
        })
    }

    pub(super) fn check_list(&mut self, h: usize, dir: &str, pairs: &[KvPair]) -> Checked {
        let dir = Dir::new(dir).expect("model dirs are valid");
        let shown = || pairs.iter().map(|p| p.key.as_str()).collect::<Vec<_>>();
        if let Some(p) = pairs.iter().find(|p| !dir.contains(&p.key)) {
            return Err(violation(
                Rule::ListBelow,
                format!(
                    "list({:?}) via handle {h} returned {:?}; keys: {:?}",
                    dir.as_str(),
                    p.key,
                    shown()
                ),
            ));
        }
        if pairs.windows(2).any(|w| w[0].key >= w[1].key) {
            return Err(violation(
                Rule::ListSorted,
                format!(
                    "list({:?}) via handle {h} returned keys {:?}",
                    dir.as_str(),
                    shown()
                ),
            ));
        }
        let want: Vec<(String, Entry)> = self
            .data
            .iter()
            .filter(|(k, _)| dir.contains(k))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let want_keys: BTreeSet<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
        for pair in pairs {
            if want_keys.contains(pair.key.as_str()) {
                self.check_read(
                    h,
                    &pair.key.clone(),
                    Some(pair),
                    &format!("list({:?})", dir.as_str()),
                )?;
            } else {
                let mut v = self
                    .check_read(
                        h,
                        &pair.key.clone(),
                        Some(pair),
                        &format!("list({:?})", dir.as_str()),
                    )
                    .expect_err("the model has no such key");
                if v.rule == Rule::LatestWrite {
                    v.rule = Rule::ListContent;
                }
                return Err(v);
            }
        }
        let got_keys: BTreeSet<&str> = pairs.iter().map(|p| p.key.as_str()).collect();
        if let Some((key, e)) = want.iter().find(|(k, _)| !got_keys.contains(k.as_str())) {
            return Err(violation(
                if e.expiry.is_some() {
                    Rule::TtlKept
                } else {
                    Rule::ListContent
                },
                format!(
                    "list({:?}) via handle {h} misses {key:?}; keys: {:?}",
                    dir.as_str(),
                    shown()
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn watch_violation(&self, i: usize, rule: Rule, detail: String) -> StepViolation {
        let watch = &self.watches[i];
        let what = match &watch.filter {
            Filter::Key(k) => format!("watch({k:?})"),
            Filter::Tree(d) => format!("watch_tree({:?})", d.as_str()),
        };
        violation(
            rule,
            format!(
                "{what} opened at step {} via handle {}: {detail}",
                watch.step, watch.handle
            ),
        )
    }

    pub(super) fn check_item(&mut self, i: usize, item: Result<Vec<KvPair>>) -> Checked {
        let pairs = match item {
            Ok(pairs) => pairs,
            Err(e) => {
                return Err(self.watch_violation(i, Rule::WatchError, format!("yielded {e:?}")));
            }
        };
        let watch = &self.watches[i];
        if let Some(p) = pairs.iter().find(|p| !watch.filter.contains(&p.key)) {
            return Err(self.watch_violation(i, Rule::WatchFilter, format!("yielded {p:?}")));
        }
        if pairs.windows(2).any(|w| w[0].key >= w[1].key) {
            return Err(self.watch_violation(i, Rule::ListSorted, format!("yielded {pairs:?}")));
        }
        let item: Vec<(String, Bytes, u64)> = pairs.iter().map(triple).collect();
        let start = match watch.pos {
            None => watch.open_pos,
            // A flexible state may match again (one more expiry seen).
            Some(p)
                if !watch.history[p].may_lack.is_empty()
                    && watch.last_item.as_ref() != Some(&item) =>
            {
                p
            }
            Some(p) => p + 1,
        };
        let found = (start..watch.history.len()).find(|&q| watch.history[q].matches(&item));
        match found {
            Some(q) => {
                let every = self.caps.watch_sees_every_write;
                let strict = watch.history[start..q]
                    .iter()
                    .all(|s| s.may_lack.is_empty())
                    && watch.history[q].may_lack.is_empty();
                if every && watch.pos.is_some() && strict && q != start {
                    return Err(self.watch_violation(
                        i,
                        Rule::WatchEvery,
                        format!(
                            "yielded {item:?}, skipping {:?}",
                            watch.history[start].pairs
                        ),
                    ));
                }
                let h = watch.handle;
                let watch = &mut self.watches[i];
                watch.pos = Some(q);
                watch.last_item = Some(item);
                for pair in &pairs {
                    self.saw(h, pair);
                }
                Ok(())
            }
            None => {
                let earlier = (0..start).rev().find(|&q| watch.history[q].matches(&item));
                let (rule, detail) = match (watch.pos, earlier) {
                    (Some(p), Some(q)) if q == p => {
                        (Rule::WatchRepeat, format!("yielded {item:?} again"))
                    }
                    (None, Some(_)) => (
                        Rule::WatchFirst,
                        format!(
                            "first item {item:?}, but the state at the call was {:?}",
                            watch.history[watch.open_pos].pairs
                        ),
                    ),
                    (Some(_), Some(_)) => (
                        Rule::WatchOrder,
                        format!("yielded the stale {item:?} after {:?}", watch.last_item),
                    ),
                    (_, None) => (
                        Rule::WatchUnknown,
                        format!(
                            "yielded {item:?}; the states since the call: {:?}",
                            watch.history.iter().map(|s| &s.pairs).collect::<Vec<_>>()
                        ),
                    ),
                };
                Err(self.watch_violation(i, rule, detail))
            }
        }
    }

    /// The lock keys hold the values of the held locks, and nothing else shows.
    pub(super) async fn check_locks(&mut self, h: usize) -> Checked {
        let (_, kv) = self.handle(h);
        let want: Vec<(String, Bytes)> = (0..LOCKS)
            .filter_map(|l| match &self.locks[l] {
                LockSlot::Held { value, .. } => Some((lock_key(l), value.options().value)),
                LockSlot::Free => None,
            })
            .collect();
        let listed = kv
            .list(MODEL_LOCK_ROOT)
            .await
            .map_err(|e| unexpected_error("list", &e))?;
        let got: Vec<(String, Bytes)> = listed
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        if got != want {
            return Err(violation(
                Rule::LockValue,
                format!("list({MODEL_LOCK_ROOT:?}) via handle {h}: expected {want:?}, got {got:?}"),
            ));
        }
        for l in 0..LOCKS {
            if let LockSlot::Held { guard, handle, .. } = &self.locks[l]
                && guard.is_lost()
            {
                return Err(violation(
                    Rule::LockNotLost,
                    format!(
                        "the lock {:?} held via handle {handle} says it is lost",
                        lock_key(l)
                    ),
                ));
            }
        }
        Ok(())
    }
}
