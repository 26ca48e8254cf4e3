//! A condition laid out for evaluation: its tests in a list, each with the
//! step to take when it holds and when it does not. `all`, `any` and `not`
//! become those jumps, so judging an event walks the list rather than
//! recursing through the tree, and a test that settles the answer ends the
//! walk, as short-circuiting would.
use super::{condition::Condition, event::Event};

#[derive(Debug, Clone)]
pub(super) struct Program {
    entry: Next,
    steps: Vec<Step>,
}

/// A step's index, or one of the two answers.
type Next = usize;
const HOLDS: Next = Next::MAX;
const FAILS: Next = Next::MAX - 1;

#[derive(Debug, Clone)]
struct Step {
    /// A condition other than `all`, `any` and `not`.
    test: Condition,
    if_true: Next,
    if_false: Next,
}

impl Program {
    pub(super) fn new(condition: &Condition) -> Self {
        let mut steps = Vec::new();
        let entry = lay_out(condition, HOLDS, FAILS, &mut steps);
        Self { entry, steps }
    }

    pub(super) fn holds(&self, event: &Event) -> bool {
        let mut at = self.entry;
        // Each step jumps only to steps laid out before it, so the walk ends.
        while let Some(step) = self.steps.get(at) {
            at = if step.test.test(event) {
                step.if_true
            } else {
                step.if_false
            };
        }
        at == HOLDS
    }
}

/// Appends the steps of `condition`, going on to `if_true` or `if_false`
/// once it is decided, and returns the first step to take. Built from the
/// last conjunct or alternative back, so that each knows where to go next.
fn lay_out(condition: &Condition, if_true: Next, if_false: Next, steps: &mut Vec<Step>) -> Next {
    match condition {
        Condition::All(items) => items
            .iter()
            .rev()
            .fold(if_true, |next, item| lay_out(item, next, if_false, steps)),
        Condition::Any(items) => items
            .iter()
            .rev()
            .fold(if_false, |next, item| lay_out(item, if_true, next, steps)),
        Condition::Not(inner) => lay_out(inner, if_false, if_true, steps),
        test => {
            steps.push(Step {
                test: test.clone(),
                if_true,
                if_false,
            });
            steps.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::policy::{
        condition::FlagField,
        event::{ReadRecord, Syscall, SyscallBit},
    };

    /// Leaves that are true, false or undecided (absent) for the events below.
    fn leaf(pick: u64) -> Condition {
        let fields = [FlagField::Memfd, FlagField::Unlinked, FlagField::Signed];
        match pick % 5 {
            0..=2 => Condition::Flag {
                field: fields[(pick / 5 % 3) as usize],
                value: (pick / 15).is_multiple_of(2),
            },
            3 => Condition::Syscall(Syscall::FinitModule.bit()),
            _ => Condition::Syscall(Syscall::InitModule.bit()),
        }
    }

    /// A condition tree of up to `depth` levels, from a pseudo-random stream.
    fn tree(random: &mut dyn FnMut() -> u64, depth: u32) -> Condition {
        let kind = if depth == 0 { 0 } else { random() % 4 };
        let mut children =
            || -> Vec<Condition> { (0..random() % 4).map(|_| tree(random, depth - 1)).collect() };
        match kind {
            0 => leaf(random()),
            1 => Condition::All(children()),
            2 => Condition::Any(children()),
            _ => Condition::Not(Box::new(tree(random, depth - 1))),
        }
    }

    #[test]
    fn programs_agree_with_the_tree_they_were_laid_out_from() {
        let records = [
            json!({"kind": "finit_module", "args": {"file": {"memfd": true, "unlinked": false}}}),
            json!({"kind": "finit_module", "args": {"file": {"memfd": false}},
                   "module": {"image": {"signature": {"signed": true}}}}),
            json!({"kind": "init_module",
                   "module": {"image": {"signature": {"signed": false}}}}),
        ];
        let reads: Vec<(Value, ReadRecord)> = records
            .iter()
            .map(|r| {
                let record = crate::samples::complete(r);
                let read = ReadRecord::from_json(&record).unwrap().unwrap();
                (record, read)
            })
            .collect();
        let events: Vec<_> = reads
            .iter()
            .map(|(record, read)| Event::read(record, read))
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut held, mut failed) = (0, 0);
        for _ in 0..5000 {
            let condition = tree(&mut random, 4);
            let program = Program::new(&condition);
            let reordered = Program::new(&condition.cheapest_first());
            for event in &events {
                let expected = condition.eval(event);
                assert_eq!(program.holds(event), expected, "{condition:?}");
                assert_eq!(reordered.holds(event), expected, "{condition:?}");
                if expected {
                    held += 1;
                } else {
                    failed += 1;
                }
            }
        }
        // Both answers were exercised, often.
        assert!(held > 2000 && failed > 2000, "{held} held, {failed} failed");
    }
}
