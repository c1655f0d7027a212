//! Kafka's classic consumer group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! ListGroups, DescribeGroups) and OffsetCommit/OffsetFetch.
//!
//! Membership follows Kafka's group coordinator: a rebalance waits for every known member
//! to rejoin (or for the rebalance timeout), the first member becomes the leader and
//! computes the assignment on the client side, SyncGroup hands it out, and heartbeats say
//! when the next rebalance begins. Membership lives in memory, as in Kafka members rejoin
//! after a coordinator restart; committed offsets are the broker's, the same ones
//! `/v1/groups/{group}/offsets` shows and commits, so a group moves between the two
//! protocols with its position. A name used by an HTTP group with members or a queue group
//! is refused to Kafka members (INCONSISTENT_GROUP_PROTOCOL), and the reverse holds for
//! commits from HTTP while Kafka members are in the group.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{kafka_error, Ctx, Kafka, Outcome};
use crate::auth::Permission;

/// Session timeouts accepted (Kafka's group.min/max.session.timeout.ms).
const MIN_SESSION: Duration = Duration::from_millis(1000);
const MAX_SESSION: Duration = Duration::from_secs(1800);
/// How often sessions and rebalance deadlines are checked.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

struct Member {
    client_id: String,
    host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    /// Protocol names and their metadata, in the member's order of preference.
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    /// Rejoined in the rebalance under way (its JoinGroup waits for the answer).
    joined: Option<oneshot::Sender<JoinGroupResponse>>,
    /// Waiting in SyncGroup for the leader's assignment.
    syncing: Option<oneshot::Sender<SyncGroupResponse>>,
}

impl Member {
    /// Answers the member's waiting join or sync, if any, with FENCED_INSTANCE_ID: another
    /// member took its static instance id.
    fn fence(self) {
        if let Some(tx) = self.joined {
            let mut r = JoinGroupResponse::default();
            r.error_code = ResponseError::FencedInstanceId.code();
            let _ = tx.send(r);
        }
        if let Some(tx) = self.syncing {
            let mut r = SyncGroupResponse::default();
            r.error_code = ResponseError::FencedInstanceId.code();
            let _ = tx.send(r);
        }
    }

    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out by MEMBER_ID_REQUIRED and not yet used to join.
    pending: HashMap<String, Instant>,
    /// Static members (`group.instance.id`): each instance's current member id.
    statics: HashMap<String, String>,
    /// Member commits checked against the generation and being written: the join phase
    /// does not complete (the generation does not change) until they are.
    commits_in_flight: usize,
    /// When the rebalance under way completes, whoever has rejoined by then.
    deadline: Option<Instant>,
    /// Before this, an initial rebalance waits for more members.
    initial_until: Option<Instant>,
    next_member: u64,
}

impl Group {
    fn new() -> Self {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            statics: HashMap::new(),
            commits_in_flight: 0,
            deadline: None,
            initial_until: None,
            next_member: 0,
        }
    }

    /// Starts a rebalance: members waiting in SyncGroup are told to rejoin.
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == State::CompletingRebalance {
            for m in self.members.values_mut() {
                if let Some(tx) = m.syncing.take() {
                    let mut r = SyncGroupResponse::default();
                    r.error_code = ResponseError::RebalanceInProgress.code();
                    let _ = tx.send(r);
                }
            }
        }
        if self.state == State::PreparingRebalance {
            return;
        }
        let was_empty = self.state == State::Empty;
        self.state = State::PreparingRebalance;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.deadline = Some(now + timeout);
        self.initial_until = (was_empty && !initial_delay.is_zero()).then(|| now + initial_delay);
    }

    /// Completes the join phase when every member has rejoined (and the initial delay is
    /// over), or when `force` (the deadline passed): members that did not rejoin are out.
    fn maybe_complete_join(&mut self, now: Instant, force: bool) {
        if self.state != State::PreparingRebalance || self.commits_in_flight > 0 {
            return;
        }
        let all = self.members.values().all(|m| m.joined.is_some());
        let waiting = self.initial_until.is_some_and(|t| now < t);
        if !(force || (all && !waiting)) {
            return;
        }
        self.members.retain(|_, m| m.joined.is_some());
        let members = &self.members;
        self.statics.retain(|_, m| members.contains_key(m));
        self.generation += 1;
        self.deadline = None;
        self.initial_until = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        // The leader's most preferred protocol that every member supports (JoinGroup
        // refused members without one in common).
        let protocol = self.members[&leader]
            .protocols
            .iter()
            .map(|(n, _)| n.clone())
            .find(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == n))
            })
            .unwrap_or_default();
        self.protocol = Some(protocol.clone());
        self.state = State::CompletingRebalance;
        let all_members: Vec<JoinGroupResponseMember> = self
            .members
            .iter()
            .map(|(id, m)| {
                let mut jm = JoinGroupResponseMember::default();
                jm.member_id = StrBytes::from_string(id.clone());
                jm.metadata = m.metadata(&protocol);
                jm
            })
            .collect();
        for (id, m) in self.members.iter_mut() {
            m.assignment = Bytes::new();
            m.last_seen = now;
            if let Some(tx) = m.joined.take() {
                let mut r = JoinGroupResponse::default();
                r.generation_id = self.generation;
                r.protocol_type = Some(StrBytes::from_string(self.protocol_type.clone()));
                r.protocol_name = Some(StrBytes::from_string(protocol.clone()));
                r.leader = StrBytes::from_string(leader.clone());
                r.member_id = StrBytes::from_string(id.clone());
                if *id == leader {
                    r.members = all_members.clone();
                }
                let _ = tx.send(r);
            }
        }
    }

    /// Checks a member and generation (heartbeats, syncs and commits).
    fn check(&self, member: &str, generation: i32) -> Result<(), ResponseError> {
        if !self.members.contains_key(member) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// FENCED_INSTANCE_ID when `instance` (a static member's `group.instance.id`) now
    /// belongs to another member than `member`.
    fn fenced(&self, instance: Option<&StrBytes>, member: &str) -> Result<(), ResponseError> {
        match instance.and_then(|i| self.statics.get(i.as_str())) {
            Some(current) if current != member => Err(ResponseError::FencedInstanceId),
            _ => Ok(()),
        }
    }

    /// Why a member's commit in `generation` is refused, if it is: an unknown member, an
    /// old generation, or a rebalance waiting for the leader's assignment (Kafka's rules;
    /// while members rejoin, the current generation may still commit).
    fn commit_refusal(&self, member: &str, generation: i32) -> Option<ResponseError> {
        self.check(member, generation)
            .err()
            .or((self.state == State::CompletingRebalance)
                .then_some(ResponseError::RebalanceInProgress))
    }

    fn remove(&mut self, member: &str, now: Instant, initial_delay: Duration) {
        self.statics.retain(|_, m| m != member);
        if let Some(m) = self.members.remove(member) {
            if let Some(tx) = m.joined {
                let mut r = JoinGroupResponse::default();
                r.error_code = ResponseError::UnknownMemberId.code();
                let _ = tx.send(r);
            }
            if self.members.is_empty() && self.state != State::PreparingRebalance {
                self.state = State::Empty;
                self.generation += 1;
                self.leader = None;
                self.protocol = None;
            } else {
                self.prepare_rebalance(now, initial_delay);
                self.maybe_complete_join(now, false);
            }
        }
    }
}

/// Every Kafka consumer group's membership.
pub struct ClassicGroups {
    initial_delay: Duration,
    groups: Mutex<BTreeMap<String, Arc<Mutex<Group>>>>,
}

impl ClassicGroups {
    pub fn new(initial_delay: Duration) -> Self {
        ClassicGroups {
            initial_delay,
            groups: Mutex::new(BTreeMap::new()),
        }
    }

    fn get(&self, name: &str) -> Option<Arc<Mutex<Group>>> {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn get_or_create(&self, name: &str) -> Arc<Mutex<Group>> {
        Arc::clone(
            self.groups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Mutex::new(Group::new()))),
        )
    }

    fn all(&self) -> Vec<(String, Arc<Mutex<Group>>)> {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, g)| (n.clone(), Arc::clone(g)))
            .collect()
    }

    /// Whether `group` has Kafka members now (HTTP commits without a member are refused).
    pub fn has_members(&self, group: &str) -> bool {
        self.get(group)
            .is_some_and(|g| !lock(&g).members.is_empty())
    }

    /// Expires silent members and completes rebalances whose deadline passed.
    fn tick(&self, now: Instant) {
        for (_, g) in self.all() {
            let mut g = lock(&g);
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    m.joined.is_none()
                        && m.syncing.is_none()
                        && now.duration_since(m.last_seen) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                tracing::info!(member = %id, "Kafka group member expired (no heartbeat within its session timeout)");
                g.remove(&id, now, self.initial_delay);
            }
            g.pending
                .retain(|_, since| now.duration_since(*since) < MAX_SESSION);
            let force = g.deadline.is_some_and(|d| now >= d);
            g.maybe_complete_join(now, force);
        }
    }
}

fn lock(g: &Mutex<Group>) -> std::sync::MutexGuard<'_, Group> {
    g.lock().unwrap_or_else(|p| p.into_inner())
}

/// A member's commit being written: while it lives, the group's join phase does not
/// complete, so the generation it was checked against stays the group's.
struct CommitInFlight(Arc<Mutex<Group>>);

impl CommitInFlight {
    fn begin(
        group: &Arc<Mutex<Group>>,
        member: &str,
        generation: i32,
    ) -> Result<Self, ResponseError> {
        let mut g = lock(group);
        if let Some(e) = g.commit_refusal(member, generation) {
            return Err(e);
        }
        g.commits_in_flight += 1;
        Ok(CommitInFlight(Arc::clone(group)))
    }
}

impl Drop for CommitInFlight {
    fn drop(&mut self) {
        let mut g = lock(&self.0);
        g.commits_in_flight -= 1;
        let now = Instant::now();
        let force = g.deadline.is_some_and(|d| now >= d);
        g.maybe_complete_join(now, force);
    }
}

/// Runs [`ClassicGroups::tick`] until shutdown.
pub async fn expire_members(kafka: Arc<Kafka>) {
    let mut stop = kafka.state.shutdown_signal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => kafka.groups.tick(Instant::now()),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

impl Ctx<'_> {
    /// Why `group` cannot be a Kafka consumer group, if it cannot.
    fn group_refusal(&self, group: &str) -> Option<ResponseError> {
        if crate::broker::validate_name(group).is_err() {
            return Some(ResponseError::InvalidGroupId);
        }
        if !self.principal.holds(Permission::Consume) {
            return Some(ResponseError::GroupAuthorizationFailed);
        }
        let b = self.broker();
        if b.is_member_group(group) || b.is_queue_group(group) {
            return Some(ResponseError::InconsistentGroupProtocol);
        }
        self.not_coordinator(group)
    }

    /// In a cluster, a group is coordinated by one node (see `Cluster::coordinator_of`):
    /// the others answer NOT_COORDINATOR, and the client asks FindCoordinator again.
    pub(super) fn not_coordinator(&self, group: &str) -> Option<ResponseError> {
        let c = self.kafka.state.cluster()?;
        match c.coordinator_of(group) {
            Some(n) if n.node_id == c.node_id() => None,
            Some(_) => Some(ResponseError::NotCoordinator),
            None => Some(ResponseError::CoordinatorNotAvailable),
        }
    }

    pub(super) async fn join_group(
        &self,
        req: JoinGroupRequest,
        out: &mut Outcome,
    ) -> JoinGroupResponse {
        let fail = |out: &mut Outcome, e: ResponseError, member: StrBytes| {
            let mut r = JoinGroupResponse::default();
            r.error_code = out.error(e);
            r.generation_id = -1;
            r.member_id = member;
            r
        };
        let name = req.group_id.0.to_string();
        if let Some(e) = self.group_refusal(&name) {
            return fail(out, e, req.member_id);
        }
        let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        if !(MIN_SESSION..=MAX_SESSION).contains(&session) {
            return fail(out, ResponseError::InvalidSessionTimeout, req.member_id);
        }
        // Before version 1 the rebalance timeout is the session timeout.
        let rebalance = if self.version >= 1 {
            Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64)
        } else {
            session
        };
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return fail(out, ResponseError::InconsistentGroupProtocol, req.member_id);
        }
        let protocols: Vec<(String, Bytes)> = req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect();
        let delay = self.kafka.groups.initial_delay;
        let group = self.kafka.groups.get_or_create(&name);
        let rx = {
            let mut g = lock(&group);
            let now = Instant::now();
            let compatible = g.members.is_empty()
                || (g.protocol_type == req.protocol_type.as_str()
                    && protocols.iter().any(|(n, _)| {
                        g.members
                            .iter()
                            .filter(|(id, _)| **id != req.member_id.as_str())
                            .all(|(_, m)| m.protocols.iter().any(|(p, _)| p == n))
                    }));
            if !compatible {
                return fail(out, ResponseError::InconsistentGroupProtocol, req.member_id);
            }
            let mut member_id = req.member_id.to_string();
            let instance = req
                .group_instance_id
                .as_ref()
                .filter(|i| !i.is_empty())
                .map(|i| i.to_string());
            // A static member that comes back (restarted) takes its old member's place at
            // once, with its assignment and its leadership, rather than holding up the
            // rebalance until the old one's session expires; the old one is fenced.
            let mut replaced: Option<(bool, Bytes)> = None;
            if let Some(instance) = &instance {
                match g.statics.get(instance).cloned() {
                    Some(old) if member_id.is_empty() => {
                        if let Some(m) = g.members.remove(&old) {
                            let leader = g.leader.as_deref() == Some(old.as_str());
                            replaced = Some((leader, m.assignment.clone()));
                            m.fence();
                        }
                    }
                    Some(old) if old != member_id => {
                        return fail(out, ResponseError::FencedInstanceId, req.member_id);
                    }
                    _ => {}
                }
            }
            if member_id.is_empty() {
                g.next_member += 1;
                member_id = format!(
                    "{}-{}-{}",
                    if self.client_id.is_empty() {
                        "member"
                    } else {
                        &self.client_id
                    },
                    g.next_member,
                    crate::log::now_ms()
                );
                if self.version >= 4 && instance.is_none() {
                    // KIP-394: the client joins again with this id (static members are
                    // known by their instance id, and join at once).
                    g.pending.insert(member_id.clone(), now);
                    return fail(
                        out,
                        ResponseError::MemberIdRequired,
                        StrBytes::from_string(member_id),
                    );
                }
            } else if !g.members.contains_key(&member_id) && g.pending.remove(&member_id).is_none()
            {
                return fail(out, ResponseError::UnknownMemberId, req.member_id);
            }
            if let Some(instance) = instance {
                g.statics.insert(instance, member_id.clone());
            }
            let (tx, rx) = oneshot::channel();
            let mut assignment = g
                .members
                .get(&member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default();
            if let Some((leader, old_assignment)) = replaced {
                assignment = old_assignment;
                if leader {
                    g.leader = Some(member_id.clone());
                }
            }
            g.protocol_type = req.protocol_type.to_string();
            g.members.insert(
                member_id.clone(),
                Member {
                    client_id: self.client_id.clone(),
                    host: self.peer.ip().to_string(),
                    session_timeout: session,
                    rebalance_timeout: rebalance,
                    protocols,
                    assignment,
                    last_seen: now,
                    joined: Some(tx),
                    syncing: None,
                },
            );
            g.prepare_rebalance(now, delay);
            // A later join may lengthen the deadline to its own rebalance timeout.
            let until = now + rebalance;
            if g.deadline.is_some_and(|d| d < until) {
                g.deadline = Some(until);
            }
            g.maybe_complete_join(now, false);
            rx
        };
        match rx.await {
            Ok(r) => {
                if let Some(e) = ResponseError::try_from_code(r.error_code) {
                    out.error(e);
                }
                r
            }
            // The group went away (the server is stopping).
            Err(_) => fail(out, ResponseError::CoordinatorNotAvailable, req.member_id),
        }
    }

    pub(super) async fn sync_group(
        &self,
        req: SyncGroupRequest,
        out: &mut Outcome,
    ) -> SyncGroupResponse {
        let name = req.group_id.0.to_string();
        let fail = |out: &mut Outcome, e: ResponseError| {
            let mut r = SyncGroupResponse::default();
            r.error_code = out.error(e);
            r
        };
        if let Some(e) = self.not_coordinator(&name) {
            return fail(out, e);
        }
        let Some(group) = self.kafka.groups.get(&name) else {
            return fail(out, ResponseError::UnknownMemberId);
        };
        let member = req.member_id.to_string();
        let rx = {
            let mut g = lock(&group);
            if let Err(e) = g
                .fenced(req.group_instance_id.as_ref(), &member)
                .and_then(|()| g.check(&member, req.generation_id))
            {
                return fail(out, e);
            }
            let answer = |g: &Group, assignment: Bytes| {
                let mut r = SyncGroupResponse::default();
                r.protocol_type = Some(StrBytes::from_string(g.protocol_type.clone()));
                r.protocol_name = g.protocol.clone().map(StrBytes::from_string);
                r.assignment = assignment;
                r
            };
            match g.state {
                State::PreparingRebalance | State::Empty => {
                    return fail(out, ResponseError::RebalanceInProgress)
                }
                State::Stable => {
                    let a = g.members[&member].assignment.clone();
                    return answer(&g, a);
                }
                State::CompletingRebalance => {}
            }
            let now = Instant::now();
            if g.leader.as_deref() == Some(member.as_str()) {
                let given: HashMap<String, Bytes> = req
                    .assignments
                    .iter()
                    .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                    .collect();
                g.state = State::Stable;
                let mut answers = Vec::new();
                for (id, m) in g.members.iter_mut() {
                    m.assignment = given.get(id).cloned().unwrap_or_default();
                    m.last_seen = now;
                    if let Some(tx) = m.syncing.take() {
                        answers.push((tx, m.assignment.clone()));
                    }
                }
                for (tx, a) in answers {
                    let _ = tx.send(answer(&g, a));
                }
                let a = g.members[&member].assignment.clone();
                return answer(&g, a);
            }
            let (tx, rx) = oneshot::channel();
            if let Some(m) = g.members.get_mut(&member) {
                m.syncing = Some(tx);
                m.last_seen = now;
            }
            rx
        };
        match rx.await {
            Ok(r) => {
                if let Some(e) = ResponseError::try_from_code(r.error_code) {
                    out.error(e);
                }
                r
            }
            Err(_) => fail(out, ResponseError::RebalanceInProgress),
        }
    }

    pub(super) fn heartbeat(&self, req: HeartbeatRequest, out: &mut Outcome) -> HeartbeatResponse {
        let mut r = HeartbeatResponse::default();
        if let Some(e) = self.not_coordinator(req.group_id.0.as_str()) {
            r.error_code = out.error(e);
            return r;
        }
        let Some(group) = self.kafka.groups.get(req.group_id.0.as_str()) else {
            r.error_code = out.error(ResponseError::UnknownMemberId);
            return r;
        };
        let mut g = lock(&group);
        let member = req.member_id.as_str();
        let result = g
            .fenced(req.group_instance_id.as_ref(), member)
            .and_then(|()| g.check(member, req.generation_id))
            .and_then(|()| {
                if g.state == State::PreparingRebalance {
                    Err(ResponseError::RebalanceInProgress)
                } else {
                    Ok(())
                }
            });
        if let Some(m) = g.members.get_mut(member) {
            m.last_seen = Instant::now();
        }
        r.error_code = out.result(result);
        r
    }

    pub(super) fn leave_group(
        &self,
        req: LeaveGroupRequest,
        out: &mut Outcome,
    ) -> LeaveGroupResponse {
        let mut r = LeaveGroupResponse::default();
        if let Some(e) = self.not_coordinator(req.group_id.0.as_str()) {
            r.error_code = out.error(e);
            return r;
        }
        let group = self.kafka.groups.get(req.group_id.0.as_str());
        // Who leaves: (member id as asked, static instance id as asked). From version 3 a
        // static member may leave by its instance id alone.
        let leaving: Vec<(StrBytes, Option<StrBytes>)> = if self.version >= 3 {
            req.members
                .iter()
                .map(|m| (m.member_id.clone(), m.group_instance_id.clone()))
                .collect()
        } else {
            vec![(req.member_id.clone(), None)]
        };
        let now = Instant::now();
        for (asked, instance) in leaving {
            let result = match &group {
                None => Err(ResponseError::UnknownMemberId),
                Some(g) => {
                    let mut g = lock(g);
                    let id = match instance.as_ref().filter(|_| asked.is_empty()) {
                        Some(i) => g.statics.get(i.as_str()).cloned().unwrap_or_default(),
                        None => asked.to_string(),
                    };
                    g.fenced(instance.as_ref(), &id).and_then(|()| {
                        if g.members.contains_key(&id) {
                            g.remove(&id, now, self.kafka.groups.initial_delay);
                            Ok(())
                        } else {
                            Err(ResponseError::UnknownMemberId)
                        }
                    })
                }
            };
            let code = out.result(result);
            if self.version >= 3 {
                // The ids as asked: clients match answers to their requests by them.
                let mut m = MemberResponse::default();
                m.member_id = asked;
                m.group_instance_id = instance;
                m.error_code = code;
                r.members.push(m);
            } else {
                r.error_code = code;
            }
        }
        r
    }

    pub(super) fn list_groups(
        &self,
        req: ListGroupsRequest,
        _out: &mut Outcome,
    ) -> ListGroupsResponse {
        let mut r = ListGroupsResponse::default();
        let mut listed: BTreeMap<String, (String, &'static str)> = BTreeMap::new();
        for name in self.broker().groups().names() {
            listed.insert(name, (String::new(), State::Empty.name()));
        }
        for (name, g) in self.kafka.groups.all() {
            let g = lock(&g);
            if !g.members.is_empty() || !listed.contains_key(&name) && g.generation > 0 {
                listed.insert(name, (g.protocol_type.clone(), g.state.name()));
            }
        }
        for (name, (protocol_type, state)) in listed {
            if !req.states_filter.is_empty()
                && !req.states_filter.iter().any(|s| s.as_str() == state)
            {
                continue;
            }
            let mut l = ListedGroup::default();
            l.group_id = GroupId(StrBytes::from_string(name));
            l.protocol_type = StrBytes::from_string(protocol_type);
            l.group_state = StrBytes::from_static_str(state);
            r.groups.push(l);
        }
        r
    }

    pub(super) fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        out: &mut Outcome,
    ) -> DescribeGroupsResponse {
        let mut r = DescribeGroupsResponse::default();
        for id in req.groups {
            let name = id.0.to_string();
            let mut d = DescribedGroup::default();
            d.group_id = id;
            if !self.principal.holds(Permission::Consume) {
                d.error_code = out.error(ResponseError::GroupAuthorizationFailed);
            } else if let Some(g) = self.kafka.groups.get(&name) {
                let g = lock(&g);
                d.group_state = StrBytes::from_static_str(g.state.name());
                d.protocol_type = StrBytes::from_string(g.protocol_type.clone());
                let protocol = g.protocol.clone().unwrap_or_default();
                if g.state == State::Stable || g.state == State::CompletingRebalance {
                    d.protocol_data = StrBytes::from_string(protocol.clone());
                }
                d.members = g
                    .members
                    .iter()
                    .map(|(id, m)| {
                        let mut dm = DescribedGroupMember::default();
                        dm.member_id = StrBytes::from_string(id.clone());
                        dm.client_id = StrBytes::from_string(m.client_id.clone());
                        dm.client_host = StrBytes::from_string(m.host.clone());
                        dm.member_metadata = m.metadata(&protocol);
                        if g.state == State::Stable {
                            dm.member_assignment = m.assignment.clone();
                        }
                        dm
                    })
                    .collect();
            } else if self.broker().groups().exists(&name) {
                d.group_state = StrBytes::from_static_str(State::Empty.name());
            } else {
                d.group_state = StrBytes::from_static_str("Dead");
            }
            r.groups.push(d);
        }
        r
    }

    pub(super) async fn offset_commit(
        &self,
        req: OffsetCommitRequest,
        out: &mut Outcome,
    ) -> OffsetCommitResponse {
        let name = req.group_id.0.to_string();
        let member = req.member_id.to_string();
        let generation = req.generation_id_or_member_epoch;
        // A commit without a member, from a consumer outside any group, is taken while the
        // group has no members; a member's, while its generation is the group's.
        let simple = generation < 0 && member.is_empty();
        let group = self.kafka.groups.get(&name);
        let refused = self.group_refusal(&name).or_else(|| match &group {
            _ if simple => self
                .kafka
                .groups
                .has_members(&name)
                .then_some(ResponseError::UnknownMemberId),
            None => Some(ResponseError::UnknownMemberId),
            Some(g) => {
                let g = lock(g);
                g.fenced(req.group_instance_id.as_ref(), &member)
                    .err()
                    .or_else(|| g.commit_refusal(&member, generation))
            }
        });
        // Each partition on its own: one that does not exist fails alone.
        let mut entries = Vec::new();
        let mut codes: Vec<Vec<Option<ResponseError>>> = Vec::new();
        for t in &req.topics {
            let topic = t.name.0.to_string();
            let allowed = self.principal.may(Permission::Consume, &topic);
            let mut c = Vec::new();
            for p in &t.partitions {
                let e = refused
                    .or_else(|| (!allowed).then_some(ResponseError::TopicAuthorizationFailed))
                    .or_else(|| {
                        let index = u32::try_from(p.partition_index).ok()?;
                        let Ok(partition) = self.broker().partition(&(topic.clone(), index)) else {
                            return Some(ResponseError::UnknownTopicOrPartition);
                        };
                        let end = partition.log().end_offset();
                        u64::try_from(p.committed_offset)
                            .ok()
                            .filter(|&o| o <= end)
                            .map_or(Some(ResponseError::OffsetOutOfRange), |_| None)
                    })
                    .or_else(|| {
                        (p.partition_index < 0).then_some(ResponseError::UnknownTopicOrPartition)
                    });
                if e.is_none() {
                    entries.push((
                        topic.clone(),
                        p.partition_index as u32,
                        p.committed_offset as u64,
                    ));
                }
                c.push(e);
            }
            codes.push(c);
        }
        let committed = if entries.is_empty() {
            Ok(())
        } else {
            let broker = Arc::clone(self.broker());
            let name = name.clone();
            // A member's commit holds the group's join phase open while it is written, its
            // generation checked again: no rebalance completes between the check and the
            // write (a member that just lost its partitions cannot overwrite the new
            // owner's offsets), and the group's lock is not held across the fsync.
            let in_flight = match (simple, &group) {
                (false, Some(g)) => match CommitInFlight::begin(g, &member, generation) {
                    Ok(c) => Some(c),
                    Err(e) => return self.commit_answer(&req, codes, Err(e), out),
                },
                _ => None,
            };
            let result = crate::broker::blocking(move || {
                Ok(broker
                    .commit_kafka_offsets(&name, &entries)
                    .map_err(|e| kafka_error(&e)))
            })
            .await;
            drop(in_flight);
            result.unwrap_or_else(|e| Err(kafka_error(&e)))
        };
        self.commit_answer(&req, codes, committed, out)
    }

    /// The answer to a commit: each partition's own error, else the commit's.
    fn commit_answer(
        &self,
        req: &OffsetCommitRequest,
        codes: Vec<Vec<Option<ResponseError>>>,
        committed: Result<(), ResponseError>,
        out: &mut Outcome,
    ) -> OffsetCommitResponse {
        let mut r = OffsetCommitResponse::default();
        for (t, c) in req.topics.iter().zip(codes) {
            let mut t_out = OffsetCommitResponseTopic::default();
            t_out.name = t.name.clone();
            for (p, e) in t.partitions.iter().zip(c) {
                let mut p_out = OffsetCommitResponsePartition::default();
                p_out.partition_index = p.partition_index;
                let e = e.or(committed.err());
                p_out.error_code = e.map_or(0, |e| out.error(e));
                t_out.partitions.push(p_out);
            }
            r.topics.push(t_out);
        }
        r
    }

    pub(super) async fn offset_fetch(
        &self,
        req: OffsetFetchRequest,
        out: &mut Outcome,
    ) -> OffsetFetchResponse {
        let name = req.group_id.0.to_string();
        let mut r = OffsetFetchResponse::default();
        if crate::broker::validate_name(&name).is_err() {
            r.error_code = out.error(ResponseError::InvalidGroupId);
            return r;
        }
        if !self.principal.holds(Permission::Consume) {
            r.error_code = out.error(ResponseError::GroupAuthorizationFailed);
            return r;
        }
        if let Some(e) = self.not_coordinator(&name) {
            r.error_code = out.error(e);
            return r;
        }
        let broker = Arc::clone(self.broker());
        let group = name.clone();
        let offsets = crate::broker::blocking(move || match broker.groups().offsets(&group) {
            Err(crate::broker::BrokerError::GroupNotFound(_)) => Ok(Default::default()),
            other => other,
        })
        .await;
        let offsets = match offsets {
            Ok(o) => o,
            Err(e) => {
                r.error_code = out.error(kafka_error(&e));
                return r;
            }
        };
        let wanted: Vec<(String, Vec<i32>)> = match req.topics {
            Some(topics) => topics
                .into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect(),
            // Every partition the group committed.
            None => {
                let mut all: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for (topic, partition) in offsets.keys() {
                    all.entry(topic.clone())
                        .or_default()
                        .push(*partition as i32);
                }
                all.into_iter().collect()
            }
        };
        for (topic, partitions) in wanted {
            let mut t = OffsetFetchResponseTopic::default();
            t.name = TopicName(StrBytes::from_string(topic.clone()));
            let allowed = self.principal.may(Permission::Consume, &topic);
            for p in partitions {
                let mut p_out = OffsetFetchResponsePartition::default();
                p_out.partition_index = p;
                p_out.committed_leader_epoch = -1;
                p_out.metadata = Some(StrBytes::default());
                p_out.committed_offset = -1;
                if !allowed {
                    p_out.error_code = out.error(ResponseError::TopicAuthorizationFailed);
                } else if let Some(&o) = u32::try_from(p)
                    .ok()
                    .and_then(|p| offsets.get(&(topic.clone(), p)))
                {
                    p_out.committed_offset = o as i64;
                }
                t.partitions.push(p_out);
            }
            r.topics.push(t);
        }
        r
    }
}
