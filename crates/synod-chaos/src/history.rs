//! The clients' history and what is checked on it: linearizability per key (the register
//! model of `synod_sim::linearizability`, with a search budget), acknowledged writes that a
//! final read does not see, and the longest time without a successful operation.
//!
//! Times are nanoseconds since the run began, on the chaos process's own monotonic clock
//! (never a member's, which libfaketime may be skewing).

use serde::Serialize;
use std::collections::BTreeMap;
use synod_sim::linearizability::{check, Operation, Register, RegisterOp, RegisterRet, Verdict};

/// Every value a client writes is unique in the run (client and sequence number), so a read
/// names the one operation that wrote what it saw.
pub type Value = u64;

/// The value client `client` writes with its `sequence`-th write.
pub fn unique_value(client: u32, sequence: u32) -> Value {
    (u64::from(client) + 1) << 32 | u64::from(sequence)
}

/// What the client learned about one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered: the result is part of the history.
    Ok(RegisterRet<Value>),
    /// Known not to have taken effect (the connection was refused before the request was
    /// sent). Dropped from the check.
    Failed,
    /// Unknown: timed out or lost after it was sent. It may or may not have taken effect,
    /// at any time after its call (Knossos's `:info`).
    Indeterminate,
}

/// One client operation as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub client: u32,
    /// Index of the member the client talks to.
    pub member: usize,
    pub key: u32,
    pub op: RegisterOp<Value>,
    pub call_ns: u64,
    /// When the client stopped waiting (also recorded for failed and indeterminate ones).
    pub return_ns: u64,
    pub outcome: Outcome,
}

/// The operation type, for counting.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Read,
    Write,
    Cas,
}

impl Kind {
    pub fn of(op: &RegisterOp<Value>) -> Kind {
        match op {
            RegisterOp::Read => Kind::Read,
            RegisterOp::Write(_) => Kind::Write,
            RegisterOp::Cas { .. } => Kind::Cas,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Cas => "cas",
        }
    }
}

/// Operations of one type by outcome.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Serialize)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    pub indeterminate: u64,
}

/// Counts per operation type.
pub fn tally(history: &[Recorded]) -> BTreeMap<Kind, Tally> {
    let mut counts: BTreeMap<Kind, Tally> = [Kind::Read, Kind::Write, Kind::Cas]
        .into_iter()
        .map(|kind| (kind, Tally::default()))
        .collect();
    for operation in history {
        let entry = counts.entry(Kind::of(&operation.op)).or_default();
        match operation.outcome {
            Outcome::Ok(_) => entry.ok += 1,
            Outcome::Failed => entry.failed += 1,
            Outcome::Indeterminate => entry.indeterminate += 1,
        }
    }
    counts
}

/// The checker's view of one key's operations: answered ones complete, indeterminate ones
/// without a return, failed ones left out.
pub fn key_history(
    history: &[Recorded],
    key: u32,
) -> Vec<Operation<RegisterOp<Value>, RegisterRet<Value>>> {
    history
        .iter()
        .filter(|operation| operation.key == key)
        .filter_map(|operation| {
            let client = u64::from(operation.client);
            match &operation.outcome {
                Outcome::Ok(ret) => Some(Operation::completed(
                    client,
                    operation.op.clone(),
                    operation.call_ns,
                    operation.return_ns,
                    ret.clone(),
                )),
                Outcome::Indeterminate => Some(Operation::indefinite(
                    client,
                    operation.op.clone(),
                    operation.call_ns,
                )),
                Outcome::Failed => None,
            }
        })
        .collect()
}

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyVerdict {
    pub key: u32,
    pub operations: usize,
    /// `linearizable`, `not linearizable` or `unknown`.
    pub verdict: String,
    /// Why, for a violation or an undecided key.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The verdict on the whole history: a violation on any key is one on the whole; a key the
/// budget did not decide makes the whole `unknown`, never a pass.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overall {
    Linearizable,
    NotLinearizable,
    Unknown,
}

impl Overall {
    pub fn name(self) -> &'static str {
        match self {
            Overall::Linearizable => "linearizable",
            Overall::NotLinearizable => "NOT linearizable",
            Overall::Unknown => "unknown (search budget exhausted)",
        }
    }
}

/// Checks every key on its own (P-compositionality), each with `budget` search steps.
pub fn check_keys(history: &[Recorded], budget: u64) -> (Overall, Vec<KeyVerdict>) {
    let mut keys: Vec<u32> = history.iter().map(|operation| operation.key).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut verdicts = Vec::new();
    let mut overall = Overall::Linearizable;
    for key in keys {
        let operations = key_history(history, key);
        let verdict = check(&Register(None), &operations, budget);
        let (name, detail) = match verdict {
            Verdict::Linearizable => ("linearizable", String::new()),
            Verdict::NotLinearizable { explanation } => {
                overall = Overall::NotLinearizable;
                ("not linearizable", explanation)
            }
            Verdict::Unknown { reason } => {
                if overall == Overall::Linearizable {
                    overall = Overall::Unknown;
                }
                ("unknown", reason)
            }
        };
        verdicts.push(KeyVerdict {
            key,
            operations: operations.len(),
            verdict: name.to_string(),
            detail,
        });
    }
    (overall, verdicts)
}

/// An acknowledged write the final read of its key does not account for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LostWrite {
    pub key: u32,
    pub value: Value,
    pub client: u32,
    pub call_ns: u64,
    pub return_ns: u64,
    /// What the final read returned (`None`: the key was missing).
    pub final_value: Option<Value>,
}

/// Acknowledged writes (puts and successful compare-and-sets) that the final value of their
/// key cannot follow. The final value was written by one operation `u` (values are unique);
/// an acknowledged write `w` is lost when the key is missing at the end, when no operation
/// wrote the final value, or when `u` returned before `w` was called: then `u` precedes `w`
/// in every linearization, and nothing after `w` wrote `u`'s value again.
pub fn lost_writes(history: &[Recorded], finals: &BTreeMap<u32, Option<Value>>) -> Vec<LostWrite> {
    // Who wrote each value, and when the client learned it (None: never).
    let mut writers: BTreeMap<Value, Option<u64>> = BTreeMap::new();
    for operation in history {
        let value = match &operation.op {
            RegisterOp::Write(value) | RegisterOp::Cas { to: value, .. } => *value,
            RegisterOp::Read => continue,
        };
        let acknowledged_at = match operation.outcome {
            Outcome::Ok(RegisterRet::WriteOk | RegisterRet::CasOk) => Some(operation.return_ns),
            Outcome::Failed => continue,
            Outcome::Ok(_) | Outcome::Indeterminate => None,
        };
        writers.insert(value, acknowledged_at);
    }
    let mut lost = Vec::new();
    for operation in history {
        let value = match (&operation.op, &operation.outcome) {
            (RegisterOp::Write(value), Outcome::Ok(RegisterRet::WriteOk))
            | (RegisterOp::Cas { to: value, .. }, Outcome::Ok(RegisterRet::CasOk)) => *value,
            _ => continue,
        };
        let Some(final_value) = finals.get(&operation.key) else {
            continue; // No final read of this key succeeded: nothing to compare.
        };
        let survives = match final_value {
            None => false,
            Some(seen) if *seen == value => true,
            Some(seen) => match writers.get(seen) {
                None => false,
                Some(None) => true,
                Some(Some(written_at)) => *written_at >= operation.call_ns,
            },
        };
        if !survives {
            lost.push(LostWrite {
                key: operation.key,
                value,
                client: operation.client,
                call_ns: operation.call_ns,
                return_ns: operation.return_ns,
                final_value: *final_value,
            });
        }
    }
    lost
}

/// The longest interval in `[from, until]` without an instant of `completions` (which must
/// be sorted), counting the edges: `(length, start)`, in nanoseconds.
pub fn longest_gap(completions: &[u64], from: u64, until: u64) -> (u64, u64) {
    let mut previous = from;
    let mut longest = (0, from);
    for &done in completions {
        if done <= from {
            continue;
        }
        if done > until {
            break;
        }
        if done - previous > longest.0 {
            longest = (done - previous, previous);
        }
        previous = done;
    }
    if until.saturating_sub(previous) > longest.0 {
        longest = (until - previous, previous);
    }
    longest
}

/// Sorted completion times of the successful operations, of every member (`None`) or one.
pub fn completions(history: &[Recorded], member: Option<usize>) -> Vec<u64> {
    let mut times: Vec<u64> = history
        .iter()
        .filter(|operation| matches!(operation.outcome, Outcome::Ok(_)))
        .filter(|operation| member.is_none_or(|member| operation.member == member))
        .map(|operation| operation.return_ns)
        .collect();
    times.sort_unstable();
    times
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client: u32,
        key: u32,
        op: RegisterOp<Value>,
        call_ns: u64,
        return_ns: u64,
        outcome: Outcome,
    ) -> Recorded {
        Recorded {
            client,
            member: client as usize % 3,
            key,
            op,
            call_ns,
            return_ns,
            outcome,
        }
    }

    fn write(client: u32, key: u32, value: Value, call: u64, ret: u64) -> Recorded {
        op(
            client,
            key,
            RegisterOp::Write(value),
            call,
            ret,
            Outcome::Ok(RegisterRet::WriteOk),
        )
    }

    fn read(client: u32, key: u32, seen: Option<Value>, call: u64, ret: u64) -> Recorded {
        op(
            client,
            key,
            RegisterOp::Read,
            call,
            ret,
            Outcome::Ok(RegisterRet::ReadOk(seen)),
        )
    }

    #[test]
    fn a_fresh_read_after_a_write_is_linearizable() {
        let history = vec![
            write(0, 1, 10, 0, 5),
            write(1, 1, 11, 6, 9),
            read(2, 1, Some(11), 10, 12),
        ];
        let (overall, keys) = check_keys(&history, 10_000);
        assert_eq!(overall, Overall::Linearizable);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].verdict, "linearizable");
    }

    /// The chaos verdict can fail: a read on a cut-off leader that returns the value its
    /// key had before a write acknowledged elsewhere is caught, and named by key.
    #[test]
    fn a_fabricated_stale_read_is_not_linearizable() {
        let history = vec![
            write(0, 1, 10, 0, 5),
            write(1, 1, 11, 6, 9),
            // Called after the second write was acknowledged, returns the first value.
            read(2, 1, Some(10), 10, 12),
            write(0, 2, 20, 0, 5),
            read(1, 2, Some(20), 6, 7),
        ];
        let (overall, keys) = check_keys(&history, 10_000);
        assert_eq!(overall, Overall::NotLinearizable);
        let verdict: Vec<(&u32, &str)> = keys.iter().map(|k| (&k.key, &*k.verdict)).collect();
        assert_eq!(verdict, [(&1, "not linearizable"), (&2, "linearizable")]);
    }

    #[test]
    fn an_indeterminate_write_may_explain_a_read_and_a_failed_one_may_not() {
        let unknown = op(0, 1, RegisterOp::Write(10), 0, 3, Outcome::Indeterminate);
        let seen = read(1, 1, Some(10), 50, 60);
        let (overall, _) = check_keys(&[unknown.clone(), seen.clone()], 10_000);
        assert_eq!(overall, Overall::Linearizable);
        let failed = Recorded {
            outcome: Outcome::Failed,
            ..unknown
        };
        let (overall, _) = check_keys(&[failed, seen], 10_000);
        assert_eq!(overall, Overall::NotLinearizable);
    }

    #[test]
    fn an_exhausted_budget_is_unknown_not_a_pass() {
        // Many concurrent writes and a read: more configurations than a budget of 1.
        let mut history: Vec<Recorded> = (0..12).map(|c| write(c, 1, c.into(), 0, 100)).collect();
        history.push(read(20, 1, Some(3), 101, 102));
        let (overall, keys) = check_keys(&history, 1);
        assert_eq!(overall, Overall::Unknown);
        assert_eq!(keys[0].verdict, "unknown");
        assert_eq!(check_keys(&history, 1_000_000).0, Overall::Linearizable);
    }

    #[test]
    fn a_write_the_final_value_cannot_follow_is_lost() {
        let history = vec![
            write(0, 1, 10, 0, 5),
            write(1, 1, 11, 6, 9),
            write(2, 2, 20, 0, 5),
            // Indeterminate, concurrent with nothing: may have landed after 20.
            op(3, 2, RegisterOp::Write(21), 1, 2, Outcome::Indeterminate),
            write(0, 3, 30, 0, 5),
        ];
        let finals: BTreeMap<u32, Option<Value>> = [(1, Some(10)), (2, Some(21)), (3, None)]
            .into_iter()
            .collect();
        let lost = lost_writes(&history, &finals);
        let values: Vec<Value> = lost.iter().map(|lost| lost.value).collect();
        // 11 was acknowledged after 10 returned: 10 cannot be last. 30 vanished.
        assert_eq!(values, [11, 30]);
        // Concurrent writes may land in either order: neither is lost.
        let concurrent = vec![write(0, 1, 10, 0, 5), write(1, 1, 11, 1, 6)];
        let finals = [(1, Some(10))].into_iter().collect();
        assert!(lost_writes(&concurrent, &finals).is_empty());
    }

    #[test]
    fn the_longest_gap_counts_both_edges() {
        assert_eq!(longest_gap(&[10, 20, 300, 310], 0, 320), (280, 20));
        assert_eq!(longest_gap(&[10, 20], 0, 1000), (980, 20));
        assert_eq!(longest_gap(&[], 5, 50), (45, 5));
        assert_eq!(longest_gap(&[500], 0, 510), (500, 0));
    }

    #[test]
    fn unique_values_differ_across_clients_and_sequences() {
        assert_ne!(unique_value(0, 1), unique_value(1, 0));
        assert_ne!(unique_value(0, 1), unique_value(0, 2));
    }

    #[test]
    fn tallies_count_by_type_and_outcome() {
        let history = vec![
            write(0, 1, 10, 0, 5),
            op(0, 1, RegisterOp::Read, 6, 7, Outcome::Failed),
            op(
                0,
                1,
                RegisterOp::Cas { from: 10, to: 12 },
                8,
                9,
                Outcome::Indeterminate,
            ),
        ];
        let counts = tally(&history);
        assert_eq!(counts[&Kind::Write].ok, 1);
        assert_eq!(counts[&Kind::Read].failed, 1);
        assert_eq!(counts[&Kind::Cas].indeterminate, 1);
    }
}
