//! The partition assignor of consumer groups with members (API.md, "Consumer groups with
//! members"): sticky, deterministic and balanced.
//!
//! Given the group's members (each with the topics it subscribes to and the partitions it
//! owns now) and the partitions of those topics, [`assign`] computes the target assignment:
//! - every partition subscribed by at least one member goes to exactly one member that
//!   subscribes to its topic;
//! - sticky: a partition stays with its owner unless balance needs it elsewhere, so a join
//!   moves only the newcomer's share and a leave moves only the leaver's partitions;
//! - balanced: when members subscribe to the same topics, their partition counts differ by
//!   at most one;
//! - deterministic: the same members, subscriptions, ownership and partitions give the same
//!   assignment, whatever the order they are given in.
//!
//! It only computes targets. Moving a partition is the coordinator's two-step job: the old
//! owner is told to revoke it, and only once it has let go (or its rebalance timeout has
//! passed) is it given to the new owner, so that no two members ever fetch it at once.

use std::collections::{BTreeMap, BTreeSet};

/// A topic's partition.
pub type TopicPartition = (String, u32);

/// A member as the assignor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub member: String,
    pub topics: BTreeSet<String>,
    /// What it owns now (or was last assigned).
    pub owned: BTreeSet<TopicPartition>,
}

/// The target assignment: each member's partitions, members in id order.
pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// Computes the target assignment of `partitions` (every partition of the topics any member
/// subscribes to) over `members`.
pub fn assign(members: &[MemberState], partitions: &BTreeSet<TopicPartition>) -> Assignment {
    let members: BTreeMap<&str, &MemberState> =
        members.iter().map(|m| (m.member.as_str(), m)).collect();
    let mut target: Assignment = members
        .keys()
        .map(|m| (m.to_string(), BTreeSet::new()))
        .collect();
    let eligible = |m: &str, tp: &TopicPartition| members[m].topics.contains(&tp.0);
    // 1. Keep what each member owns, where it still may: the partition exists, the member
    //    still subscribes to its topic, and no member earlier in id order claimed it.
    let mut taken: BTreeSet<&TopicPartition> = BTreeSet::new();
    for (&m, state) in &members {
        for tp in &state.owned {
            if partitions.contains(tp) && eligible(m, tp) && taken.insert(tp) {
                target
                    .get_mut(m)
                    .expect("every member has an entry")
                    .insert(tp.clone());
            }
        }
    }
    // 2. Each free partition to the eligible member holding the fewest (ties: lowest id).
    for tp in partitions.iter().filter(|tp| !taken.contains(tp)) {
        let least = target
            .iter()
            .filter(|(m, _)| eligible(m, tp))
            // The fewest; among equals the first, the lowest id (the map is in id order).
            .min_by_key(|(_, owned)| owned.len())
            .map(|(m, _)| m.clone());
        if let Some(m) = least {
            target
                .get_mut(&m)
                .expect("chosen from the map")
                .insert(tp.clone());
        }
    }
    // 3. Balance: while a member holds two or more partitions more than another member
    //    eligible for one of them, move one (the highest such partition of the most loaded
    //    member, to the least loaded eligible member). Each move narrows the spread, so this
    //    ends; only as many partitions move as balance needs.
    loop {
        let mut best: Option<(usize, String, TopicPartition, String)> = None;
        for (from, owned) in &target {
            for tp in owned.iter().rev() {
                let to = target
                    .iter()
                    .filter(|(m, o)| *m != from && eligible(m, tp) && o.len() + 1 < owned.len())
                    .min_by_key(|(_, o)| o.len());
                if let Some((to, o)) = to {
                    let gap = owned.len() - o.len();
                    if best.as_ref().is_none_or(|(g, ..)| gap > *g) {
                        best = Some((gap, from.clone(), tp.clone(), to.clone()));
                    }
                    break;
                }
            }
        }
        let Some((_, from, tp, to)) = best else {
            break;
        };
        target.get_mut(&from).expect("a member").remove(&tp);
        target.get_mut(&to).expect("a member").insert(tp);
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp(topic: &str, p: u32) -> TopicPartition {
        (topic.to_owned(), p)
    }

    fn member(id: &str, topics: &[&str], owned: &[TopicPartition]) -> MemberState {
        MemberState {
            member: id.to_owned(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: owned.iter().cloned().collect(),
        }
    }

    fn partitions(topic: &str, n: u32) -> BTreeSet<TopicPartition> {
        (0..n).map(|p| tp(topic, p)).collect()
    }

    /// Members with the assignment `a` as what they own.
    fn owning(a: &Assignment, topics: &[&str]) -> Vec<MemberState> {
        a.iter()
            .map(|(m, owned)| MemberState {
                member: m.clone(),
                topics: topics.iter().map(|t| t.to_string()).collect(),
                owned: owned.clone(),
            })
            .collect()
    }

    fn moved(before: &Assignment, after: &Assignment) -> usize {
        after
            .iter()
            .map(|(m, owned)| {
                let had = before.get(m).cloned().unwrap_or_default();
                owned.difference(&had).count()
            })
            .sum()
    }

    fn spread(a: &Assignment) -> usize {
        let counts: Vec<usize> = a.values().map(BTreeSet::len).collect();
        counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0)
    }

    #[test]
    fn twelve_partitions_over_four_members_then_a_join_and_a_leave() {
        let parts = partitions("orders", 12);
        let ids = ["a", "b", "c", "d"];
        let members: Vec<MemberState> = ids.iter().map(|id| member(id, &["orders"], &[])).collect();
        let first = assign(&members, &parts);
        assert!(first.values().all(|o| o.len() == 3), "{first:?}");
        // A fifth member: it takes two, taken one from each of two others; nobody else moves.
        let mut joined = owning(&first, &["orders"]);
        joined.push(member("e", &["orders"], &[]));
        let second = assign(&joined, &parts);
        assert_eq!(second["e"].len(), 2);
        assert_eq!(moved(&first, &second), 2, "only the newcomer's share moves");
        assert!(spread(&second) <= 1);
        // "b" leaves: only its partitions move.
        let left: Vec<MemberState> = owning(&second, &["orders"])
            .into_iter()
            .filter(|m| m.member != "b")
            .collect();
        let third = assign(&left, &parts);
        assert_eq!(moved(&second, &third), second["b"].len());
        assert!(spread(&third) <= 1);
    }

    #[test]
    fn members_get_only_topics_they_subscribe_to() {
        let parts: BTreeSet<TopicPartition> = partitions("a", 3)
            .into_iter()
            .chain(partitions("b", 3))
            .collect();
        let members = [member("m1", &["a"], &[]), member("m2", &["a", "b"], &[])];
        let a = assign(&members, &parts);
        assert!(a["m1"].iter().all(|(t, _)| t == "a"));
        assert_eq!(a.values().map(BTreeSet::len).sum::<usize>(), 6);
    }

    fn scenario() -> impl Strategy<Value = (Vec<MemberState>, BTreeSet<TopicPartition>)> {
        (
            1u32..30,
            1usize..8,
            proptest::collection::vec(any::<u32>(), 0..40),
        )
            .prop_map(|(n, members, claims)| {
                let parts = partitions("t", n);
                let mut states: Vec<MemberState> = (0..members)
                    .map(|i| member(&format!("m{i}"), &["t"], &[]))
                    .collect();
                // Arbitrary prior ownership, overlaps and stale partitions included.
                for c in claims {
                    let m = c as usize % members;
                    states[m].owned.insert(tp("t", (c / 8) % (n + 3)));
                }
                (states, parts)
            })
    }

    proptest! {
        #[test]
        fn every_partition_once_balanced_and_deterministic((members, parts) in scenario()) {
            let a = assign(&members, &parts);
            let all: Vec<&TopicPartition> = a.values().flatten().collect();
            let unique: BTreeSet<&TopicPartition> = all.iter().copied().collect();
            prop_assert_eq!(all.len(), unique.len(), "a partition twice");
            prop_assert_eq!(unique.len(), parts.len(), "a partition unassigned");
            prop_assert!(spread(&a) <= 1, "unbalanced: {:?}", a);
            let mut reversed = members.clone();
            reversed.reverse();
            prop_assert_eq!(assign(&reversed, &parts), a.clone());
            // Stable: assigning again from the result moves nothing.
            prop_assert_eq!(moved(&a, &assign(&owning(&a, &["t"]), &parts)), 0);
        }

        #[test]
        fn a_join_moves_only_the_newcomers_share((members, parts) in scenario()) {
            let a = assign(&members, &parts);
            let mut joined = owning(&a, &["t"]);
            joined.push(member("zz-new", &["t"], &[]));
            let b = assign(&joined, &parts);
            prop_assert_eq!(moved(&a, &b), b["zz-new"].len());
            prop_assert!(spread(&b) <= 1);
        }

        #[test]
        fn a_leave_moves_only_the_leavers_partitions((members, parts) in scenario(), leaver in any::<prop::sample::Index>()) {
            let a = assign(&members, &parts);
            prop_assume!(a.len() > 1);
            let gone = a.keys().nth(leaver.index(a.len())).unwrap().clone();
            let left: Vec<MemberState> =
                owning(&a, &["t"]).into_iter().filter(|m| m.member != gone).collect();
            let b = assign(&left, &parts);
            prop_assert_eq!(moved(&a, &b), a[&gone].len());
            prop_assert!(spread(&b) <= 1);
        }
    }
}
