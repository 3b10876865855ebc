//! Rate limits (`max_per_hour`, `max_per_day` of a `[[key]]`): the signatures each
//! rate-limited key made over the last day.
//!
//! The counts survive a restart: they start from the audit log, which holds every
//! signature (README.md, "Policy, confirmation and the audit log"). The pass that opens
//! the log counts the keys limited at start ([`crate::audit::RateSeed`]); a key whose
//! limits appear later (a SIGHUP reload) is counted from the files when it is first
//! used. A log that cannot be read refuses the key (`rate-limited`, saying why) rather
//! than letting it start from zero.
//!
//! Times from the log are wall-clock; the counts run on [`Instant`]s, so a clock
//! change while the agent runs moves no window. A record from the future (the clock
//! went back since) counts as made now.
//!
//! **Races with a reload.** Each key's count has a generation and the last log record
//! it has read (`upto`). A signature is counted when its slot is taken; one that
//! passed the gate under another policy (no limit, or an older count) is counted once
//! its intent is in the log, unless the count read that record from the log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::audit::{Audit, RateSeed};
use crate::policy::{Limits, Policy};
use crate::proto::{ErrorCode, WireError};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// The counts of every rate-limited key.
#[derive(Debug, Default)]
pub struct RateBook {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<String, KeyRate>,
    /// The next count's generation.
    next_gen: u64,
}

/// One key's count.
#[derive(Debug)]
struct KeyRate {
    /// Which count this is (a reload may start another).
    gen: u64,
    /// When each counted signature was taken, oldest first, over the last day.
    made: VecDeque<Instant>,
    /// Log records up to this `seq` are in `made` (read from the log).
    upto: u64,
    /// Why the log could not be read for this key: it is refused.
    problem: Option<String>,
}

/// A signature counted against a key, to give back if it is not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    at: Instant,
    gen: u64,
}

impl RateBook {
    /// No counts yet.
    pub fn new() -> RateBook {
        RateBook::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the counts of the keys in `seed` (the start pass over the log).
    pub fn seed(&self, seed: RateSeed) {
        let mut inner = self.lock();
        inner.insert(seed);
    }

    /// Takes one signature from `key`'s allowance under `limits`; `None` when the key
    /// has no limits. A key not counted yet is counted from `audit` first.
    pub fn take(
        &self,
        key: &str,
        limits: Limits,
        audit: Option<&Audit>,
    ) -> Result<Option<Taken>, WireError> {
        if limits.per_hour.is_none() && limits.per_day.is_none() {
            return Ok(None);
        }
        let mut inner = self.lock();
        if !inner.keys.contains_key(key) {
            let keys: HashSet<String> = [key.to_string()].into();
            let seed = match audit {
                Some(audit) => audit.scan_rates(&keys),
                None => RateSeed {
                    signed: keys.into_iter().map(|k| (k, Vec::new())).collect(),
                    ..RateSeed::default()
                },
            };
            inner.insert(seed);
        }
        let Some(rate) = inner.keys.get_mut(key) else {
            // `insert` made an entry for every key of the seed, this one included.
            return Err(WireError::new(
                ErrorCode::RateLimited,
                format!("key {key} has rate limits and its count could not be started"),
            ));
        };
        if let Some(problem) = &rate.problem {
            return Err(WireError::new(
                ErrorCode::RateLimited,
                format!("key {key} has rate limits (max_per_hour, max_per_day) and the audit log that counts its recent signatures could not be read: {problem}; it signs nothing until the log reads (fix or move aside that file, then reload with SIGHUP or restart)"),
            ));
        }
        let now = Instant::now();
        while rate
            .made
            .front()
            .is_some_and(|t| now.duration_since(*t) >= DAY)
        {
            rate.made.pop_front();
        }
        if let Some(max) = limits.per_hour {
            let in_hour: Vec<&Instant> = rate
                .made
                .iter()
                .filter(|t| now.duration_since(**t) < HOUR)
                .collect();
            if in_hour.len() >= max as usize {
                let wait = in_hour
                    .first()
                    .map_or(0, |t| (HOUR - now.duration_since(**t)).as_secs() + 1);
                return Err(WireError::new(
                    ErrorCode::RateLimited,
                    format!("key {key} made {max} signatures in the last hour, its [[key]] max_per_hour; the next is possible in {wait} s"),
                ));
            }
        }
        if let Some(max) = limits.per_day {
            if rate.made.len() >= max as usize {
                let wait = rate
                    .made
                    .front()
                    .map_or(0, |t| (DAY - now.duration_since(*t)).as_secs() + 1);
                return Err(WireError::new(
                    ErrorCode::RateLimited,
                    format!("key {key} made {max} signatures in the last 24 hours, its [[key]] max_per_day; the next is possible in {wait} s"),
                ));
            }
        }
        rate.made.push_back(now);
        Ok(Some(Taken {
            at: now,
            gen: rate.gen,
        }))
    }

    /// Returns an allowance taken for a signature that was not made.
    pub fn give_back(&self, key: &str, taken: Taken) {
        let mut inner = self.lock();
        if let Some(rate) = inner.keys.get_mut(key).filter(|r| r.gen == taken.gen) {
            if let Some(i) = rate.made.iter().rposition(|t| *t == taken.at) {
                rate.made.remove(i);
            }
        }
    }

    /// `key`'s intent is in the log as record `seq`. When the key's count neither took
    /// this signature (`taken`) nor read the record, it is counted now; the slot to give
    /// back is returned.
    pub fn logged(&self, key: &str, seq: u64, taken: Option<Taken>) -> Option<Taken> {
        let mut inner = self.lock();
        let rate = inner.keys.get_mut(key)?;
        if taken.is_some_and(|t| t.gen == rate.gen) || seq <= rate.upto {
            return None;
        }
        let now = Instant::now();
        rate.made.push_back(now);
        Some(Taken {
            at: now,
            gen: rate.gen,
        })
    }

    /// The policy changed from `old` to `new`: counts of keys that lose their limits,
    /// or gain them (uncounted meanwhile), start again from the log when next used, and
    /// so do counts the log could not give.
    pub fn policy_changed(&self, old: &Policy, new: &Policy) {
        let limited = |l: Limits| l.per_hour.is_some() || l.per_day.is_some();
        let mut inner = self.lock();
        inner.keys.retain(|key, rate| {
            rate.problem.is_none() && limited(old.limits(key)) && limited(new.limits(key))
        });
    }
}

impl Inner {
    /// Counts from the log: an entry for every key of `seed`.
    fn insert(&mut self, seed: RateSeed) {
        let now_wall = SystemTime::now();
        let now = Instant::now();
        for (key, times) in seed.signed {
            let made: VecDeque<Instant> = times
                .iter()
                .filter_map(|t| {
                    // A time after now (the clock went back) is counted as now.
                    let age = now_wall.duration_since(*t).unwrap_or_default();
                    // An age the monotonic clock cannot go back to is older than the
                    // day (it started at boot); such records no longer count.
                    (age < DAY).then(|| now.checked_sub(age)).flatten()
                })
                .collect();
            match &seed.problem {
                Some(p) => {
                    warn!(key = %key, problem = %p, "rate limits: the audit log does not read; the key is refused")
                }
                None => {
                    info!(key = %key, last_day = made.len(), "rate limits: signatures of the last day counted from the audit log")
                }
            }
            let gen = self.next_gen;
            self.next_gen += 1;
            self.keys.insert(
                key,
                KeyRate {
                    gen,
                    made,
                    upto: seed.upto,
                    problem: seed.problem.clone(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::config::KeyConfig;

    fn policy(per_hour: Option<u32>) -> Policy {
        Policy::new(&[KeyConfig {
            name: "hsm/r".into(),
            max_per_hour: per_hour,
            ..KeyConfig::default()
        }])
    }

    fn seed(ages: &[u64], upto: u64, problem: Option<&str>) -> RateSeed {
        let now = SystemTime::now();
        RateSeed {
            upto,
            signed: [(
                "hsm/r".to_string(),
                ages.iter().map(|a| now - Duration::from_secs(*a)).collect(),
            )]
            .into(),
            problem: problem.map(str::to_string),
        }
    }

    const THREE: Limits = Limits {
        per_hour: Some(3),
        per_day: None,
    };

    #[test]
    fn counts_from_the_log_carry_over_and_expire_with_the_hour() {
        let book = RateBook::new();
        // Two signatures 10 minutes ago, one two hours ago (outside the hour).
        book.seed(seed(&[7200, 600, 600], 9, None));
        book.take("hsm/r", THREE, None).unwrap().unwrap();
        let e = book.take("hsm/r", THREE, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(
            e.message.contains("max_per_hour") && e.message.contains("possible in"),
            "{}",
            e.message
        );
        let wait: u64 = e
            .message
            .split("possible in ")
            .nth(1)
            .unwrap()
            .trim_end_matches(" s")
            .parse()
            .unwrap();
        assert!(
            (2990..=3001).contains(&wait),
            "the oldest in the hour is 10 min old: {wait}"
        );
        let day = Limits {
            per_hour: None,
            per_day: Some(4),
        };
        let e = book.take("hsm/r", day, None).unwrap_err();
        assert!(e.message.contains("max_per_day"), "{}", e.message);
    }

    #[test]
    fn an_unreadable_log_refuses_the_key_and_a_reload_tries_again() {
        let book = RateBook::new();
        book.seed(seed(
            &[],
            0,
            Some("audit-000000000001.jsonl:1: not a JSON object"),
        ));
        let e = book.take("hsm/r", THREE, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(
            e.message.contains("could not be read")
                && e.message.contains("audit-000000000001.jsonl:1"),
            "{}",
            e.message
        );
        book.policy_changed(&policy(Some(3)), &policy(Some(3)));
        book.take("hsm/r", THREE, None).unwrap().unwrap();
    }

    #[test]
    fn a_signature_under_the_old_policy_is_counted_once_its_intent_is_logged() {
        let book = RateBook::new();
        // Passed the gate with no limits; the reload adds them; the count is read from
        // the log up to record 10; the intent then lands as record 11.
        assert_eq!(book.take("hsm/r", Limits::default(), None).unwrap(), None);
        book.policy_changed(&policy(None), &policy(Some(3)));
        book.seed(seed(&[60], 10, None));
        let slot = book.logged("hsm/r", 11, None).expect("counted");
        // One read from the log already: not counted twice.
        assert_eq!(book.logged("hsm/r", 10, None), None);
        let own = book.take("hsm/r", THREE, None).unwrap().unwrap();
        assert_eq!(
            book.logged("hsm/r", 12, Some(own)),
            None,
            "taken by this count"
        );
        book.take("hsm/r", THREE, None).unwrap_err();
        book.give_back("hsm/r", slot);
        book.take("hsm/r", THREE, None).unwrap().unwrap();
        // A count from before a reload that dropped it is not touched by give_back.
        book.policy_changed(&policy(Some(3)), &policy(None));
        book.give_back("hsm/r", own);
        assert!(book.lock().keys.is_empty());
    }
}
