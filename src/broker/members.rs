//! Consumer groups with members, as the broker keeps them: each group's settings and
//! [`Coordinator`], written durably (`<data_dir>/@members/<group>.json`) before any answer
//! whose call changed them, so that a server `kill -9` moves no partition and fences no
//! member, and read back when the broker opens.
//!
//! Not yet behind the HTTP API (issue 17's routes, long-polls and fetches come next).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::assignor::TopicPartition;
use super::coordinator::{Coordinator, CoordinatorError, GroupTimeouts, Heartbeat, Snapshot};
use super::error::BrokerError;
use super::groups::read_group_files;
use super::topic::write_durably;
use super::validate_name;

/// Where a member without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    #[default]
    Earliest,
    Latest,
}

/// A group's settings (API.md: `PUT /v1/groups/{group}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSettings {
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub auto_offset_reset: OffsetReset,
}

impl Default for GroupSettings {
    fn default() -> Self {
        let t = GroupTimeouts::default();
        GroupSettings {
            session_timeout_ms: t.session_timeout_ms,
            rebalance_timeout_ms: t.rebalance_timeout_ms,
            auto_offset_reset: OffsetReset::Earliest,
        }
    }
}

impl GroupSettings {
    fn timeouts(&self) -> GroupTimeouts {
        GroupTimeouts {
            session_timeout_ms: self.session_timeout_ms,
            rebalance_timeout_ms: self.rebalance_timeout_ms,
        }
    }
}

/// A group's file.
#[derive(Debug, Serialize, Deserialize)]
struct GroupFile {
    settings: GroupSettings,
    state: Snapshot,
}

#[derive(Debug)]
struct Group {
    settings: GroupSettings,
    coordinator: Coordinator,
    /// What the file holds now: a call that leaves the snapshot as it was writes nothing.
    written: Snapshot,
}

/// Every group with members.
#[derive(Debug)]
pub struct MemberGroups {
    dir: PathBuf,
    groups: Mutex<BTreeMap<String, Group>>,
}

impl MemberGroups {
    /// Loads every group file in `dir` (created if missing); `partitions` gives the
    /// partitions of the topics they subscribe to now. Every member's session starts at
    /// `now_ms`: the members could not reach the server while it was down.
    pub fn open(
        dir: &Path,
        partitions: impl Fn(&BTreeSet<String>) -> BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Result<Self, BrokerError> {
        let mut groups = BTreeMap::new();
        for (name, file) in read_group_files::<GroupFile>(dir, "group members")? {
            let topics: BTreeSet<String> = file
                .state
                .members
                .iter()
                .flat_map(|m| m.topics.iter().cloned())
                .collect();
            let coordinator = Coordinator::restore(
                file.settings.timeouts(),
                &file.state,
                partitions(&topics),
                now_ms,
            );
            groups.insert(
                name,
                Group {
                    settings: file.settings,
                    written: coordinator.snapshot(),
                    coordinator,
                },
            );
        }
        Ok(MemberGroups {
            dir: dir.to_owned(),
            groups: Mutex::new(groups),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names of the groups that have (or had) members.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// A group's settings, if it exists.
    pub fn settings(&self, group: &str) -> Option<GroupSettings> {
        self.lock().get(group).map(|g| g.settings)
    }

    /// Creates a group, or changes its settings; returns whether it was created. Durable
    /// before it returns.
    pub fn put_settings(&self, group: &str, settings: GroupSettings) -> Result<bool, BrokerError> {
        validate_name(group)?;
        let mut groups = self.lock();
        let created = !groups.contains_key(group);
        let g = groups.entry(group.to_owned()).or_insert_with(|| Group {
            settings,
            coordinator: Coordinator::new(settings.timeouts()),
            written: Coordinator::default().snapshot(),
        });
        if g.settings != settings || created {
            g.settings = settings;
            g.coordinator.set_timeouts(settings.timeouts());
            self.write(group, g)?;
        }
        Ok(created)
    }

    /// A member's join or heartbeat (see [`Coordinator::heartbeat`]); `partitions` are those
    /// of the topics it subscribes to (and of the others' topics), now. A first join creates
    /// the group with the default settings. What changed is durable before it returns.
    #[allow(clippy::too_many_arguments)]
    pub fn heartbeat(
        &self,
        group: &str,
        member: &str,
        epoch: u64,
        topics: BTreeSet<String>,
        owned: &BTreeSet<TopicPartition>,
        partitions: BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Result<Result<Heartbeat, CoordinatorError>, BrokerError> {
        validate_name(group)?;
        let mut groups = self.lock();
        let g = groups.entry(group.to_owned()).or_insert_with(|| {
            let settings = GroupSettings::default();
            Group {
                settings,
                coordinator: Coordinator::new(settings.timeouts()),
                written: Coordinator::default().snapshot(),
            }
        });
        g.coordinator.set_partitions(partitions);
        let answer = g
            .coordinator
            .heartbeat(member, epoch, topics, owned, now_ms);
        self.write_if_changed(group, g)?;
        Ok(answer)
    }

    /// A member leaves; its partitions are free at once. Durable before it returns.
    pub fn leave(
        &self,
        group: &str,
        member: &str,
    ) -> Result<Result<(), CoordinatorError>, BrokerError> {
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return Ok(Err(CoordinatorError::UnknownMember));
        };
        let left = g.coordinator.leave(member);
        self.write_if_changed(group, g)?;
        Ok(left)
    }

    /// Removes the members whose session or rebalance timeout passed (see
    /// [`Coordinator::expire`]), in every group; returns `(group, member)` of each.
    pub fn expire(&self, now_ms: i64) -> Result<Vec<(String, String)>, BrokerError> {
        let mut groups = self.lock();
        let mut gone = Vec::new();
        for (name, g) in groups.iter_mut() {
            for member in g.coordinator.expire(now_ms) {
                gone.push((name.clone(), member));
            }
            self.write_if_changed(name, g)?;
        }
        Ok(gone)
    }

    /// Whether a commit of `tp` by `member` at `epoch` is accepted (fencing).
    pub fn check_commit(
        &self,
        group: &str,
        member: &str,
        epoch: u64,
        tp: &TopicPartition,
    ) -> Result<(), CoordinatorError> {
        let groups = self.lock();
        let g = groups.get(group).ok_or(CoordinatorError::UnknownMember)?;
        g.coordinator.check_commit(member, epoch, tp)
    }

    /// The partitions `member` holds now.
    pub fn held_by(&self, group: &str, member: &str) -> BTreeSet<TopicPartition> {
        self.lock()
            .get(group)
            .map(|g| g.coordinator.held_by(member))
            .unwrap_or_default()
    }

    fn write_if_changed(&self, name: &str, g: &mut Group) -> Result<(), BrokerError> {
        if g.coordinator.snapshot() != g.written {
            self.write(name, g)?;
        }
        Ok(())
    }

    fn write(&self, name: &str, g: &mut Group) -> Result<(), BrokerError> {
        let file = GroupFile {
            settings: g.settings,
            state: g.coordinator.snapshot(),
        };
        let json = serde_json::to_vec_pretty(&file).expect("a group file serializes");
        write_durably(&self.group_path(name), &json)?;
        g.written = file.state;
        Ok(())
    }

    fn group_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> BTreeSet<String> {
        ["orders".to_owned()].into()
    }

    fn parts(_: &BTreeSet<String>) -> BTreeSet<TopicPartition> {
        (0..6).map(|p| ("orders".to_owned(), p)).collect()
    }

    /// Two members share a topic; the broker "crashes" (the groups are opened again from
    /// their files) in the middle of a rebalance: every member's next heartbeat gets what
    /// it would have got, nothing moved, nobody fenced.
    #[test]
    fn a_restart_moves_no_partition_and_fences_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let groups = MemberGroups::open(dir.path(), parts, 0).unwrap();
        let owned_none = BTreeSet::new();
        let a = groups
            .heartbeat("g", "a", 0, topics(), &owned_none, parts(&topics()), 0)
            .unwrap()
            .unwrap();
        assert_eq!(a.assignment.len(), 6);
        let b = groups
            .heartbeat("g", "b", 0, topics(), &owned_none, parts(&topics()), 1)
            .unwrap()
            .unwrap();
        assert!(b.assignment.is_empty(), "a still holds everything");
        let a_owned: BTreeSet<TopicPartition> = a.assignment.keys().cloned().collect();
        let a2 = groups
            .heartbeat(
                "g",
                "a",
                a.member_epoch,
                topics(),
                &a_owned,
                parts(&topics()),
                2,
            )
            .unwrap()
            .unwrap();
        assert_eq!(a2.revoke.len(), 3);
        drop(groups);

        // Opened again: the same holders, the same revocations pending.
        let groups = MemberGroups::open(dir.path(), parts, 10_000).unwrap();
        assert_eq!(groups.names(), ["g"]);
        assert_eq!(groups.held_by("g", "a").len(), 6);
        let a3 = groups
            .heartbeat(
                "g",
                "a",
                a2.member_epoch,
                topics(),
                &a_owned,
                parts(&topics()),
                10_001,
            )
            .unwrap()
            .expect("not fenced by the restart");
        assert_eq!(a3.revoke, a2.revoke, "the same partitions are being moved");
        // a lets go; b gets them.
        let kept: BTreeSet<TopicPartition> = a3.assignment.keys().cloned().collect();
        groups
            .heartbeat(
                "g",
                "a",
                a3.member_epoch,
                topics(),
                &kept,
                parts(&topics()),
                10_002,
            )
            .unwrap()
            .unwrap();
        let b2 = groups
            .heartbeat(
                "g",
                "b",
                b.member_epoch,
                topics(),
                &owned_none,
                parts(&topics()),
                10_003,
            )
            .unwrap()
            .expect("not fenced by the restart");
        assert_eq!(b2.assignment.len(), 3);
        assert_eq!(
            groups.check_commit("g", "a", a3.member_epoch, a2.revoke.iter().next().unwrap()),
            Err(CoordinatorError::NotOwned)
        );
    }

    #[test]
    fn settings_are_durable_and_a_leave_frees_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let groups = MemberGroups::open(dir.path(), parts, 0).unwrap();
        let s = GroupSettings {
            session_timeout_ms: 5_000,
            rebalance_timeout_ms: 9_000,
            auto_offset_reset: OffsetReset::Latest,
        };
        assert!(groups.put_settings("g", s).unwrap());
        assert!(!groups.put_settings("g", s).unwrap());
        groups
            .heartbeat("g", "a", 0, topics(), &BTreeSet::new(), parts(&topics()), 0)
            .unwrap()
            .unwrap();
        assert_eq!(groups.leave("g", "a").unwrap(), Ok(()));
        assert_eq!(
            groups.leave("g", "a").unwrap(),
            Err(CoordinatorError::UnknownMember)
        );
        drop(groups);
        let groups = MemberGroups::open(dir.path(), parts, 0).unwrap();
        assert_eq!(groups.settings("g"), Some(s));
        assert!(groups.held_by("g", "a").is_empty());
        // A member silent beyond the session timeout is removed, durably.
        groups
            .heartbeat("g", "b", 0, topics(), &BTreeSet::new(), parts(&topics()), 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            groups.expire(6_000).unwrap(),
            vec![("g".to_owned(), "b".to_owned())]
        );
        drop(groups);
        let groups = MemberGroups::open(dir.path(), parts, 7_000).unwrap();
        assert!(groups.held_by("g", "b").is_empty());
    }
}
