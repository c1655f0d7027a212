//! Consumer group offsets: one small JSON file per group, `<data_dir>/@groups/<group>.json`,
//! replaced atomically and fsynced before a commit is acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::error::BrokerError;
use super::topic::{remove_durably, write_durably};
use super::validate_name;

/// Every `<group>.json` file in `dir` (created if missing), parsed: a directory of one
/// small file per group, written with `write_durably`. Leftover `.tmp` files of an
/// interrupted write are removed; any other file is reported (as found among `what`) and
/// left alone. A file that does not parse is an error naming it.
pub(super) fn read_group_files<T: serde::de::DeserializeOwned>(
    dir: &Path,
    what: &str,
) -> Result<Vec<(String, T)>, BrokerError> {
    fs::create_dir_all(dir).map_err(|e| BrokerError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| BrokerError::io(dir, e))? {
        let path = entry.map_err(|e| BrokerError::io(dir, e))?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .filter(|n| validate_name(n).is_ok())
        else {
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(&path);
            } else {
                tracing::warn!(path = %path.display(), "unexpected file among {what}; left alone");
            }
            continue;
        };
        let bytes = fs::read(&path).map_err(|e| BrokerError::io(&path, e))?;
        let file = serde_json::from_slice(&bytes)
            .map_err(|e| BrokerError::Corrupt(format!("{}: {e}", path.display())))?;
        files.push((name.to_owned(), file));
    }
    Ok(files)
}

/// The keys of a map of groups by name, sorted.
pub(super) fn sorted_names<V>(groups: &RwLock<HashMap<String, V>>) -> Vec<String> {
    let mut names: Vec<String> = groups
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

/// Committed offsets of one group, by topic and partition.
pub type GroupOffsets = BTreeMap<(String, u32), u64>;

#[derive(Debug, Serialize, Deserialize)]
struct GroupFile {
    group: String,
    offsets: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    topic: String,
    partition: u32,
    offset: u64,
}

/// Where a cluster keeps committed offsets, for every node (etcd): commits are written
/// there before they are acknowledged, and each node's copy follows it.
pub trait SharedOffsets: Send + Sync + std::fmt::Debug {
    /// Stores `entries` of `group`: the store's revision after the write. Blocks.
    fn commit(&self, group: &str, entries: &[(String, u32, u64)]) -> Result<i64, BrokerError>;
}

/// All groups.
#[derive(Debug)]
pub struct Groups {
    dir: PathBuf,
    /// In a cluster: the shared store, and the revision of this node's last commit of each
    /// group (a copy read before it must not undo it).
    shared: std::sync::OnceLock<Box<dyn SharedOffsets>>,
    committed_at: Mutex<HashMap<String, i64>>,
    /// Groups by name. Held only to find or insert a group's entry; each group's own mutex
    /// serializes its commits, including the file write (lock order: this map, then the
    /// group).
    groups: RwLock<HashMap<String, Arc<Mutex<GroupOffsets>>>>,
}

impl Groups {
    /// Loads every group file in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, BrokerError> {
        let mut groups = HashMap::new();
        for (name, file) in read_group_files::<GroupFile>(dir, "group offsets")? {
            let offsets = file
                .offsets
                .into_iter()
                .map(|e| ((e.topic, e.partition), e.offset))
                .collect();
            groups.insert(name, Arc::new(Mutex::new(offsets)));
        }
        Ok(Groups {
            dir: dir.to_owned(),
            shared: std::sync::OnceLock::new(),
            committed_at: Mutex::new(HashMap::new()),
            groups: RwLock::new(groups),
        })
    }

    /// Names of every group, sorted.
    pub fn names(&self) -> Vec<String> {
        sorted_names(&self.groups)
    }

    /// Whether `group` has committed offsets. Reads the map only: never waits for a
    /// commit's write (safe on an async worker).
    pub fn exists(&self, group: &str) -> bool {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(group)
    }

    /// A copy of a group's committed offsets.
    pub fn offsets(&self, group: &str) -> Result<GroupOffsets, BrokerError> {
        validate_name(group)?;
        let g = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .cloned()
            .ok_or_else(|| BrokerError::GroupNotFound(group.to_owned()))?;
        let offsets = g.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(offsets)
    }

    /// Commits offsets for a group (created on first commit). Durable (fsync) on return.
    /// `check` runs under the group's lock, before anything is written: a topic it finds
    /// still there cannot have its offsets forgotten before this commit lands (deletion
    /// forgets them under the same lock, after removing the topic). Blocks.
    pub fn commit(
        &self,
        group: &str,
        entries: &[(String, u32, u64)],
        check: impl FnOnce() -> Result<(), BrokerError>,
    ) -> Result<(), BrokerError> {
        validate_name(group)?;
        let g = Arc::clone(
            self.groups
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(group.to_owned())
                .or_default(),
        );
        let mut offsets = g.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = check() {
            if offsets.is_empty() {
                drop(offsets);
                self.remove_if_empty(group, &g);
            }
            return Err(e);
        }
        let mut next = offsets.clone();
        for (topic, partition, offset) in entries {
            next.insert((topic.clone(), *partition), *offset);
        }
        // In a cluster the commit is the shared store's first; the file is this node's copy.
        let shared = match self.shared.get() {
            Some(store) => store.commit(group, entries).map(|revision| {
                self.committed_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(group.to_owned(), revision);
            }),
            None => Ok(()),
        };
        let result = shared.and_then(|()| self.write(group, &next));
        if result.is_ok() {
            *offsets = next;
        } else if offsets.is_empty() {
            // A group whose first commit failed does not exist.
            drop(offsets);
            self.remove_if_empty(group, &g);
        }
        result
    }

    /// Removes `group` from the map if it is still `g` and holds no offset (no commit
    /// landed meanwhile).
    fn remove_if_empty(&self, group: &str, g: &Arc<Mutex<GroupOffsets>>) {
        let mut all = self.groups.write().unwrap_or_else(|p| p.into_inner());
        // Never waiting for the group's lock under the map's: a commit in progress (which
        // may be waiting on etcd) keeps the group.
        if all.get(group).is_some_and(|cur| Arc::ptr_eq(cur, g))
            && g.try_lock().is_ok_and(|offsets| offsets.is_empty())
        {
            all.remove(group);
        }
    }

    /// Forgets every committed offset of the topics that `keep` refuses, durably: a topic
    /// deleted (and perhaps created again under the same name) starts with no committed
    /// offsets, so a group never resumes a new topic at the old one's position. A group
    /// left with no offset is removed. Blocks.
    pub fn forget_topics(&self, keep: impl Fn(&str) -> bool) -> Result<(), BrokerError> {
        let groups: Vec<(String, Arc<Mutex<GroupOffsets>>)> = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, g)| (name.clone(), Arc::clone(g)))
            .collect();
        for (group, g) in groups {
            let mut offsets = g.lock().unwrap_or_else(|p| p.into_inner());
            if offsets.keys().all(|(topic, _)| keep(topic)) {
                continue;
            }
            let next: GroupOffsets = offsets
                .iter()
                .filter(|((topic, _), _)| keep(topic))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            if next.is_empty() {
                remove_durably(&self.dir.join(format!("{group}.json")))?;
                offsets.clear();
                drop(offsets);
                self.remove_if_empty(&group, &g);
            } else {
                self.write(&group, &next)?;
                *offsets = next;
            }
        }
        Ok(())
    }

    /// Makes the cluster's shared store the place commits go (once, when the node joins).
    pub fn share(&self, store: Box<dyn SharedOffsets>) {
        let _ = self.shared.set(store);
    }

    /// Takes the committed offsets of every group from the cluster's store, as read at
    /// `revision`: groups this node committed to after that keep their copy. Memory only
    /// (the files hold what this node committed; the next read corrects them).
    ///
    /// Never waits for a group's lock: a group whose commit is in progress (its lock held,
    /// across the etcd write) keeps its copy until the next read. So this runs on an async
    /// worker without ever waiting on a commit that needs the runtime to finish.
    pub fn follow_shared(&self, revision: i64, all: BTreeMap<String, GroupOffsets>) {
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        let committed_at = {
            let mut at = self.committed_at.lock().unwrap_or_else(|p| p.into_inner());
            // Commits this read includes need no protection any more.
            at.retain(|_, r| *r > revision);
            at.clone()
        };
        let newer = |g: &str| committed_at.contains_key(g);
        groups.retain(|name, g| all.contains_key(name) || newer(name) || g.try_lock().is_err());
        for (name, offsets) in all {
            if newer(&name) {
                continue;
            }
            match groups.get(&name) {
                Some(g) => {
                    if let Ok(mut current) = g.try_lock() {
                        *current = offsets;
                    }
                }
                None => {
                    groups.insert(name, Arc::new(Mutex::new(offsets)));
                }
            }
        }
    }

    /// Replaces a group's file with `offsets`, durably. Blocks.
    fn write(&self, group: &str, offsets: &GroupOffsets) -> Result<(), BrokerError> {
        let file = GroupFile {
            group: group.to_owned(),
            offsets: offsets
                .iter()
                .map(|((topic, partition), offset)| Entry {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect(),
        };
        let json = serde_json::to_vec(&file).expect("group offsets serialize");
        write_durably(&self.dir.join(format!("{group}.json")), &json)
    }
}
