//! The state of one queue group (API.md, "Queue groups"): for each partition of its topics,
//! which records are settled (accepted or dead-lettered), which are leased to a worker and
//! until when, which wait to be delivered again, and how often each was delivered. A pure
//! state machine driven by [`Event`]s: the live path decides on events and applies them,
//! start-up replays them from the group's journal, so both reach the same state.
//!
//! The rules:
//! - Records are handed out (leased) for `lease_ms`; each hand-out counts a delivery, and
//!   the count is in the lease's event, journalled before the answer.
//! - A lease token names the record and the delivery: once the record was leased again, an
//!   older token acts on nothing (`lease_lost`). A repeated `accept` is `ok`, `repeat`.
//! - A lease that expires, or a `release`, makes the record available again (after its
//!   delay). A record that failed `max_deliveries` deliveries, or was rejected, is
//!   dead-lettered (once) and settled.
//! - Offsets below a partition's floor are all settled; only the records from the floor on
//!   that were handed out at least once are kept, so the state stays as small as what is
//!   in flight.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::assignor::TopicPartition;

/// Why a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// Failed `max_deliveries` deliveries (released, or its lease expired).
    MaxDeliveries,
    /// A worker rejected it.
    Rejected,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::MaxDeliveries => "max_deliveries",
            DeadReason::Rejected => "rejected",
        }
    }
}

/// One record handed out at least once and not yet below its partition's floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rec {
    /// Leased for its `d`-th delivery until `exp` (ms since the Unix epoch).
    Leased { d: u32, exp: i64 },
    /// Delivered `d` times, to be delivered again from `at` on.
    Waiting { d: u32, at: i64 },
    /// Settled after `d` deliveries: accepted, or dead-lettered.
    Settled { d: u32, accepted: bool },
}

/// A change of the state: what the journal holds, one per record of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "e")]
pub enum Event {
    /// The record `o` of `t`/`p` leased for its `d`-th delivery until `exp`.
    Lease {
        t: String,
        p: u32,
        o: u64,
        d: u32,
        exp: i64,
    },
    Accept {
        t: String,
        p: u32,
        o: u64,
    },
    /// The records `o` to `o + n - 1` of `t`/`p` leased for their `d`-th delivery until
    /// `exp`: `n` [`Event::Lease`]s in a row, journalled as one (see [`Event::absorb`]).
    LeaseRun {
        t: String,
        p: u32,
        o: u64,
        n: u64,
        d: u32,
        exp: i64,
    },
    /// The records `o` to `o + n - 1` of `t`/`p` accepted: `n` [`Event::Accept`]s in a row.
    AcceptRun {
        t: String,
        p: u32,
        o: u64,
        n: u64,
    },
    /// Available again from `at`.
    Release {
        t: String,
        p: u32,
        o: u64,
        at: i64,
    },
    Extend {
        t: String,
        p: u32,
        o: u64,
        exp: i64,
    },
    /// Dead-lettered (appended to the dead-letter topic, or dropped) and settled.
    Dead {
        t: String,
        p: u32,
        o: u64,
        reason: DeadReason,
    },
    /// Retention removed the records below `to` before they were settled: they are
    /// skipped (settled, not delivered again).
    Skip {
        t: String,
        p: u32,
        to: u64,
    },
    /// The topic `t` was deleted: its partitions' queues are forgotten (a topic created
    /// again under the name starts afresh).
    Forget {
        t: String,
    },
    /// The whole state, from which the journal's later events go on.
    Snapshot {
        state: Box<QueueState>,
    },
}

impl Event {
    /// Takes `next`, the event staged right after this one, into this one when together
    /// they are a run ([`Event::LeaseRun`], [`Event::AcceptRun`]): the next record of the
    /// same partition, with the same delivery and expiry. Whether it did.
    pub fn absorb(&mut self, next: &Event) -> bool {
        let (Some(run), Some(one)) = (self.run(), next.run()) else {
            return false;
        };
        let joins = one.n == 1
            && (one.t, one.p, one.lease) == (run.t, run.p, run.lease)
            && run.o.checked_add(run.n) == Some(one.o);
        if !joins {
            return false;
        }
        let Run { p, o, n, lease, .. } = run;
        let t = match self {
            Event::Lease { t, .. }
            | Event::LeaseRun { t, .. }
            | Event::Accept { t, .. }
            | Event::AcceptRun { t, .. } => std::mem::take(t),
            _ => return false,
        };
        let n = n + 1;
        *self = match lease {
            Some((d, exp)) => Event::LeaseRun { t, p, o, n, d, exp },
            None => Event::AcceptRun { t, p, o, n },
        };
        true
    }

    /// A lease or an accept as a run.
    fn run(&self) -> Option<Run<'_>> {
        let (t, p, o, n, lease) = match self {
            Event::Lease { t, p, o, d, exp } => (t, *p, *o, 1, Some((*d, *exp))),
            Event::LeaseRun { t, p, o, n, d, exp } => (t, *p, *o, *n, Some((*d, *exp))),
            Event::Accept { t, p, o } => (t, *p, *o, 1, None),
            Event::AcceptRun { t, p, o, n } => (t, *p, *o, *n, None),
            _ => return None,
        };
        Some(Run { t, p, o, n, lease })
    }

    /// How many single-record events this one stands for (a run's length; else 1).
    pub fn weight(&self) -> u64 {
        self.run().map_or(1, |r| r.n)
    }
}

/// Leases or accepts of consecutive records: topic, partition, first offset, how many, and
/// the leases' delivery and expiry (`None` for accepts).
#[derive(Clone, Copy)]
struct Run<'a> {
    t: &'a str,
    p: u32,
    o: u64,
    n: u64,
    lease: Option<(u32, i64)>,
}

/// One partition's queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionQueue {
    /// Every offset below is settled.
    pub floor: u64,
    /// The lowest offset never handed out.
    pub next: u64,
    /// The records from the floor on that were handed out.
    #[serde(with = "as_list")]
    pub recs: BTreeMap<u64, Rec>,
    /// The last [`RECENT`] records settled below the floor: offset -> (delivery, accepted),
    /// so that a late ack of one still gets its exact answer.
    #[serde(default)]
    pub recent: Recent,
    /// Records dead-lettered so far.
    pub dead_lettered: u64,
}

/// Settled records remembered below a partition's floor.
pub const RECENT: usize = 10_000;

/// The longest run of leases or accepts a journal event may hold: more than one request
/// makes (a lease takes at most 10,000 records, an ack request's body holds fewer acks).
const MAX_RUN: u64 = 1_000_000;

/// The last [`RECENT`] records settled below a partition's floor, by offset: (delivery,
/// accepted). The floor only rises, so they come in offset order: a ring, oldest first,
/// searched by bisection (a map cost three tree operations per settled record). In a
/// snapshot, a list of `[offset, [delivery, accepted]]` pairs, as the map was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recent(std::collections::VecDeque<(u64, (u32, bool))>);

impl Recent {
    /// Remembers `o`, above every offset remembered; forgets the oldest past [`RECENT`].
    fn push(&mut self, o: u64, settled: (u32, bool)) {
        debug_assert!(self.0.back().is_none_or(|(last, _)| *last < o));
        self.0.push_back((o, settled));
        if self.0.len() > RECENT {
            self.0.pop_front();
        }
    }

    pub fn get(&self, o: u64) -> Option<&(u32, bool)> {
        self.0
            .binary_search_by_key(&o, |(k, _)| *k)
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Recent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for Recent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut pairs = Vec::<(u64, (u32, bool))>::deserialize(d)?;
        // Kept in offset order, one per offset, the newest RECENT, whatever the list held.
        pairs.sort_by_key(|(o, _)| *o);
        pairs.dedup_by_key(|(o, _)| *o);
        let extra = pairs.len().saturating_sub(RECENT);
        Ok(Recent(pairs.into_iter().skip(extra).collect()))
    }
}

/// A map with integer keys as a list of pairs: JSON object keys are strings, which the
/// journal's tagged events could not read back as integers.
mod as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<V: Serialize, S: Serializer>(
        map: &BTreeMap<u64, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, V: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u64, V>, D::Error> {
        Ok(Vec::<(u64, V)>::deserialize(d)?.into_iter().collect())
    }
}

impl PartitionQueue {
    /// A partition nothing was handed out of yet, from `start` (its log's start).
    pub fn starting_at(start: u64) -> Self {
        PartitionQueue {
            floor: start,
            next: start,
            ..Default::default()
        }
    }

    /// Moves the floor past settled records.
    fn raise_floor(&mut self) {
        while let Some((&o, &Rec::Settled { d, accepted })) = self.recs.first_key_value() {
            if o != self.floor {
                break;
            }
            self.recs.remove(&o);
            self.recent.push(o, (d, accepted));
            self.floor += 1;
        }
        if self.recs.is_empty() {
            self.floor = self.floor.max(self.next);
        }
    }

    /// Records leased and not expired at `now_ms`.
    pub fn in_flight(&self, now_ms: i64) -> u64 {
        self.recs
            .values()
            .filter(|r| matches!(r, Rec::Leased { exp, .. } if *exp > now_ms))
            .count() as u64
    }

    /// Records not settled and not in flight, up to `end`.
    pub fn backlog(&self, end: u64, now_ms: i64) -> u64 {
        let settled = self
            .recs
            .values()
            .filter(|r| matches!(r, Rec::Settled { .. }))
            .count() as u64;
        end.saturating_sub(self.floor)
            .saturating_sub(settled)
            .saturating_sub(self.in_flight(now_ms))
    }

    /// The lowest offset not settled (`end` when all are).
    pub fn oldest_unsettled(&self, end: u64) -> u64 {
        self.recs
            .iter()
            .find(|(_, r)| !matches!(r, Rec::Settled { .. }))
            .map(|(o, _)| *o)
            .unwrap_or(self.next.max(self.floor))
            .min(end.max(self.floor))
    }
}

/// A queue group's state: its partitions' queues.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// `(topic, partition)` -> its queue. A list, for JSON.
    pub partitions: Vec<(String, u32, PartitionQueue)>,
}

/// What an ack asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    Accept,
    Release { delay_ms: u64 },
    Reject,
    Extend { lease_ms: u64 },
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Applied (`repeat`: an accept of a record already accepted under this token).
    Ok { repeat: bool },
    /// The token's delivery is no longer the record's: it acts on nothing.
    LeaseLost,
}

/// A lease token, as the API shows it: `<delivery>.<partition>.<offset>.<topic>` (topic
/// names hold no character that would make this ambiguous: they come last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub delivery: u32,
}

/// A token's text, written from borrowed parts (see [`Token::encode`]).
pub(crate) struct TokenOf<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub delivery: u32,
}

impl std::fmt::Display for TokenOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.delivery, self.partition, self.offset, self.topic
        )
    }
}

impl Token {
    pub fn encode(&self) -> String {
        TokenOf {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            delivery: self.delivery,
        }
        .to_string()
    }

    /// `None` for a string that is not a token.
    pub fn decode(s: &str) -> Option<Token> {
        let mut parts = s.splitn(4, '.');
        let delivery = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let topic = parts.next()?;
        if delivery == 0 || super::validate_name(topic).is_err() {
            return None;
        }
        Some(Token {
            topic: topic.to_owned(),
            partition,
            offset,
            delivery,
        })
    }
}

impl QueueState {
    fn find(&self, t: &str, p: u32) -> Option<&PartitionQueue> {
        self.partitions
            .iter()
            .find(|(pt, pp, _)| pt == t && *pp == p)
            .map(|(_, _, q)| q)
    }

    /// The queue of `t`/`p`, created (empty, from `start`) when missing.
    pub fn queue_mut(&mut self, t: &str, p: u32, start: u64) -> &mut PartitionQueue {
        let i = match self
            .partitions
            .iter()
            .position(|(pt, pp, _)| pt == t && *pp == p)
        {
            Some(i) => i,
            None => {
                self.partitions
                    .push((t.to_owned(), p, PartitionQueue::starting_at(start)));
                self.partitions.len() - 1
            }
        };
        &mut self.partitions[i].2
    }

    pub fn queue(&self, tp: &TopicPartition) -> Option<&PartitionQueue> {
        self.find(&tp.0, tp.1)
    }

    /// Applies an event. Events are applied as they were decided, so one that does not fit
    /// (a replay of a journal written by a newer rule) is skipped, never a panic.
    pub fn apply(&mut self, e: &Event) {
        match e {
            Event::Snapshot { state } => *self = (**state).clone(),
            Event::Lease { t, p, o, d, exp } => self.lease(t, *p, *o, *d, *exp),
            // (A run longer than any request makes does not fit: skipped.)
            Event::LeaseRun { n, .. } | Event::AcceptRun { n, .. } if *n > MAX_RUN => {}
            Event::LeaseRun { t, p, o, n, d, exp } => {
                for o in *o..o.saturating_add(*n) {
                    self.lease(t, *p, o, *d, *exp);
                }
            }
            Event::Accept { t, p, o } => self.settle(t, *p, *o, true),
            Event::AcceptRun { t, p, o, n } => {
                for o in *o..o.saturating_add(*n) {
                    self.settle(t, *p, o, true);
                }
            }
            Event::Forget { t } => self.partitions.retain(|(pt, _, _)| pt != t),
            Event::Skip { t, p, to } => {
                let q = self.queue_mut(t, *p, *to);
                q.recs = q.recs.split_off(to);
                q.floor = q.floor.max(*to);
                q.next = q.next.max(*to);
                q.raise_floor();
            }
            Event::Dead { t, p, o, .. } => {
                self.settle(t, *p, *o, false);
                self.queue_mut(t, *p, *o).dead_lettered += 1;
            }
            Event::Release { t, p, o, at } => {
                let q = self.queue_mut(t, *p, *o);
                if let Some(r) = q.recs.get_mut(o) {
                    if let Rec::Leased { d, .. } | Rec::Waiting { d, .. } = *r {
                        *r = Rec::Waiting { d, at: *at };
                    }
                }
            }
            Event::Extend { t, p, o, exp } => {
                let q = self.queue_mut(t, *p, *o);
                if let Some(Rec::Leased { exp: e, .. }) = q.recs.get_mut(o) {
                    *e = *exp;
                }
            }
        }
    }

    fn lease(&mut self, t: &str, p: u32, o: u64, d: u32, exp: i64) {
        let q = self.queue_mut(t, p, o);
        if o < q.floor {
            return;
        }
        q.recs.insert(o, Rec::Leased { d, exp });
        q.next = q.next.max(o + 1);
    }

    fn settle(&mut self, t: &str, p: u32, o: u64, accepted: bool) {
        let q = self.queue_mut(t, p, o);
        if o < q.floor {
            return;
        }
        let d = match q.recs.get(&o) {
            Some(Rec::Leased { d, .. } | Rec::Waiting { d, .. } | Rec::Settled { d, .. }) => *d,
            None => 0,
        };
        q.recs.insert(o, Rec::Settled { d, accepted });
        q.next = q.next.max(o + 1);
        q.raise_floor();
    }

    /// Leases in flight at `now_ms`, over all partitions.
    pub fn in_flight(&self, now_ms: i64) -> u64 {
        self.partitions
            .iter()
            .map(|(_, _, q)| q.in_flight(now_ms))
            .sum()
    }

    /// Records to deliver again now (released and due, or whose lease expired), in offset
    /// order per partition, with the delivery each would be: at most `max`. Those that
    /// failed `max_deliveries` deliveries are not among them (see [`Self::due_dead`]).
    pub fn redeliverable(
        &self,
        now_ms: i64,
        max_deliveries: u32,
        max: usize,
    ) -> Vec<(TopicPartition, u64, u32)> {
        let mut out = Vec::new();
        for (t, p, q) in &self.partitions {
            for (o, r) in &q.recs {
                if out.len() >= max {
                    return out;
                }
                let d = match *r {
                    Rec::Waiting { d, at } if at <= now_ms => d,
                    Rec::Leased { d, exp } if exp <= now_ms => d,
                    _ => continue,
                };
                if d < max_deliveries {
                    out.push(((t.clone(), *p), *o, d + 1));
                }
            }
        }
        out
    }

    /// Records that failed their last allowed delivery (released, or lease expired) and
    /// wait to be dead-lettered.
    pub fn due_dead(&self, now_ms: i64, max_deliveries: u32) -> Vec<(TopicPartition, u64, u32)> {
        let mut out = Vec::new();
        for (t, p, q) in &self.partitions {
            for (o, r) in &q.recs {
                let d = match *r {
                    Rec::Waiting { d, .. } => d,
                    Rec::Leased { d, exp } if exp <= now_ms => d,
                    _ => continue,
                };
                if d >= max_deliveries {
                    out.push(((t.clone(), *p), *o, d));
                }
            }
        }
        out
    }

    /// The earliest time a lease expires or a released record becomes due (for a waiting
    /// lease request to wake up at).
    pub fn next_due(&self, now_ms: i64) -> Option<i64> {
        self.partitions
            .iter()
            .flat_map(|(_, _, q)| q.recs.values())
            .filter_map(|r| match *r {
                Rec::Leased { exp, .. } if exp > now_ms => Some(exp),
                Rec::Waiting { at, .. } if at > now_ms => Some(at),
                _ => None,
            })
            .min()
    }

    /// What an ack with `token` does at `now_ms`, as the events to journal (and apply), and
    /// its outcome. `Reject` and a `Release` of a last delivery give no event: the caller
    /// dead-letters the record, then journals [`Event::Dead`].
    pub fn ack(
        &self,
        token: &Token,
        kind: AckKind,
        now_ms: i64,
        max_deliveries: u32,
    ) -> (AckOutcome, Option<Event>, Option<DeadReason>) {
        let lost = (AckOutcome::LeaseLost, None, None);
        let Some(q) = self.find(&token.topic, token.partition) else {
            return lost;
        };
        let (t, p, o) = (token.topic.clone(), token.partition, token.offset);
        let settled = if o < q.floor {
            match q.recent.get(o) {
                Some(&(d, accepted)) => Some(Rec::Settled { d, accepted }),
                // Settled long ago: an accept may be a retry of the one that settled it.
                None if kind == AckKind::Accept => {
                    return (AckOutcome::Ok { repeat: true }, None, None)
                }
                None => return lost,
            }
        } else {
            q.recs.get(&o).copied()
        };
        match settled.as_ref() {
            Some(Rec::Settled { d, accepted }) => {
                if *d == token.delivery && *accepted && kind == AckKind::Accept {
                    (AckOutcome::Ok { repeat: true }, None, None)
                } else {
                    lost
                }
            }
            // Leased under this token (an expired lease not handed out again still counts).
            Some(Rec::Leased { d, .. }) if *d == token.delivery => {
                let ok = AckOutcome::Ok { repeat: false };
                match kind {
                    AckKind::Accept => (ok, Some(Event::Accept { t, p, o }), None),
                    AckKind::Reject => (ok, None, Some(DeadReason::Rejected)),
                    AckKind::Release { .. } if *d >= max_deliveries => {
                        (ok, None, Some(DeadReason::MaxDeliveries))
                    }
                    AckKind::Release { delay_ms } => {
                        let at = now_ms.saturating_add(delay_ms as i64);
                        (ok, Some(Event::Release { t, p, o, at }), None)
                    }
                    AckKind::Extend { lease_ms } => {
                        let exp = now_ms.saturating_add(lease_ms as i64);
                        (ok, Some(Event::Extend { t, p, o, exp }), None)
                    }
                }
            }
            _ => lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "jobs";

    fn lease(o: u64, d: u32, exp: i64) -> Event {
        Event::Lease {
            t: T.into(),
            p: 0,
            o,
            d,
            exp,
        }
    }

    fn token(o: u64, d: u32) -> Token {
        Token {
            topic: T.into(),
            partition: 0,
            offset: o,
            delivery: d,
        }
    }

    /// Applies what an ack decided, dead-lettering as the caller would.
    fn ack(s: &mut QueueState, o: u64, d: u32, kind: AckKind, now: i64) -> AckOutcome {
        let (outcome, event, dead) = s.ack(&token(o, d), kind, now, 3);
        if let Some(e) = event {
            s.apply(&e);
        }
        if let Some(reason) = dead {
            s.apply(&Event::Dead {
                t: T.into(),
                p: 0,
                o,
                reason,
            });
        }
        outcome
    }

    #[test]
    fn tokens_round_trip_and_malformed_ones_are_refused() {
        let t = Token {
            topic: "a.b-c".into(),
            partition: 3,
            offset: 17,
            delivery: 2,
        };
        assert_eq!(Token::decode(&t.encode()), Some(t));
        for bad in [
            "",
            "x",
            "1.2.3",
            "0.1.2.t",
            "1.-2.3.t",
            "1.2.3.",
            "1.2.3.a/b",
        ] {
            assert_eq!(Token::decode(bad), None, "{bad:?}");
        }
    }

    /// Consecutive leases of one partition with one delivery and expiry, and consecutive
    /// accepts, are journalled as runs; applying a run is applying its events one by one.
    #[test]
    fn runs_take_the_next_record_only_and_apply_as_their_events() {
        let accept = |o| Event::Accept {
            t: T.into(),
            p: 0,
            o,
        };
        let mut run = lease(5, 1, 100);
        assert!(run.absorb(&lease(6, 1, 100)));
        assert!(run.absorb(&lease(7, 1, 100)));
        assert_eq!(
            run,
            Event::LeaseRun {
                t: T.into(),
                p: 0,
                o: 5,
                n: 3,
                d: 1,
                exp: 100
            }
        );
        assert_eq!(run.weight(), 3);
        // Not the next offset, another delivery, another expiry, another partition, or
        // another kind: not taken.
        for other in [
            lease(9, 1, 100),
            lease(7, 1, 100),
            lease(8, 2, 100),
            lease(8, 1, 101),
            Event::Lease {
                t: T.into(),
                p: 1,
                o: 8,
                d: 1,
                exp: 100,
            },
            accept(8),
        ] {
            let before = run.clone();
            assert!(!run.absorb(&other), "{other:?}");
            assert_eq!(run, before);
        }
        let mut accepts = accept(5);
        assert!(accepts.absorb(&accept(6)));
        assert!(!accepts.absorb(&accept(6)));
        assert!(!accepts.absorb(&lease(7, 1, 100)));
        assert_eq!(accepts.weight(), 2);
        // The JSON a journal holds, and the state it gives.
        assert_eq!(
            serde_json::to_string(&run).unwrap(),
            r#"{"e":"lease_run","t":"jobs","p":0,"o":5,"n":3,"d":1,"exp":100}"#
        );
        let mut one_by_one = QueueState::default();
        for o in 5..8 {
            one_by_one.apply(&lease(o, 1, 100));
        }
        one_by_one.apply(&accept(5));
        one_by_one.apply(&accept(6));
        let mut by_runs = QueueState::default();
        by_runs.apply(&run);
        by_runs.apply(&accepts);
        assert_eq!(by_runs, one_by_one);
        assert_eq!(by_runs.queue(&(T.into(), 0)).unwrap().floor, 7);
    }

    /// The settled records remembered below the floor: the newest RECENT, found by offset,
    /// read from a snapshot's list of pairs in any order.
    #[test]
    fn recent_keeps_the_newest_and_reads_a_snapshots_pairs() {
        let mut r = Recent::default();
        for o in 0..(RECENT as u64 + 5) {
            r.push(o, ((o % 7) as u32, o % 2 == 0));
        }
        assert_eq!(r.len(), RECENT);
        assert_eq!(r.get(4), None);
        assert_eq!(r.get(5), Some(&(5, false)));
        assert_eq!(
            r.get(RECENT as u64 + 4),
            Some(&(((RECENT + 4) % 7) as u32, true))
        );
        assert_eq!(r.get(RECENT as u64 + 5), None);
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.starts_with("[[5,[5,false]],[6,[6,true]],"),
            "{}",
            &json[..40]
        );
        assert_eq!(serde_json::from_str::<Recent>(&json).unwrap(), r);
        let read: Recent =
            serde_json::from_str("[[9,[2,false]],[3,[1,true]],[9,[2,false]]]").unwrap();
        assert_eq!(
            (read.len(), read.get(3), read.get(9)),
            (2, Some(&(1, true)), Some(&(2, false)))
        );
    }

    #[test]
    fn every_transition_of_a_record() {
        let mut s = QueueState::default();
        // Leased (delivery 1), accepted: settled, the floor moves; a repeated accept is ok.
        s.apply(&lease(0, 1, 100));
        assert_eq!(s.in_flight(0), 1);
        assert_eq!(
            ack(&mut s, 0, 1, AckKind::Accept, 10),
            AckOutcome::Ok { repeat: false }
        );
        assert_eq!(
            ack(&mut s, 0, 1, AckKind::Accept, 11),
            AckOutcome::Ok { repeat: true }
        );
        assert_eq!(s.queue(&(T.into(), 0)).unwrap().floor, 1);
        // Released with a delay: not redeliverable before it, then delivery 2; the old token
        // is lost once the record is leased again.
        s.apply(&lease(1, 1, 100));
        let release = AckKind::Release { delay_ms: 50 };
        assert_eq!(
            ack(&mut s, 1, 1, release, 10),
            AckOutcome::Ok { repeat: false }
        );
        assert!(s.redeliverable(59, 3, 10).is_empty());
        assert_eq!(s.redeliverable(60, 3, 10), vec![((T.into(), 0), 1, 2)]);
        s.apply(&lease(1, 2, 200));
        assert_eq!(
            ack(&mut s, 1, 1, AckKind::Accept, 61),
            AckOutcome::LeaseLost
        );
        // Extended: not expired at the old time.
        let extend = AckKind::Extend { lease_ms: 1000 };
        assert_eq!(
            ack(&mut s, 1, 2, extend, 100),
            AckOutcome::Ok { repeat: false }
        );
        assert!(s.redeliverable(300, 3, 10).is_empty());
        assert_eq!(s.next_due(300), Some(1100));
        // Expired: redeliverable (delivery 3); an expired lease's own token still acts while
        // nobody else leased the record.
        assert_eq!(s.redeliverable(1100, 3, 10), vec![((T.into(), 0), 1, 3)]);
        s.apply(&lease(1, 3, 2000));
        // Third (last) delivery released: dead-lettered, settled, counted.
        let release = AckKind::Release { delay_ms: 0 };
        assert_eq!(
            ack(&mut s, 1, 3, release, 1200),
            AckOutcome::Ok { repeat: false }
        );
        let q = s.queue(&(T.into(), 0)).unwrap();
        assert_eq!((q.floor, q.dead_lettered), (2, 1));
        // Rejected: dead-lettered at once, whatever its delivery.
        s.apply(&lease(2, 1, 5000));
        assert_eq!(
            ack(&mut s, 2, 1, AckKind::Reject, 1300),
            AckOutcome::Ok { repeat: false }
        );
        assert_eq!(
            ack(&mut s, 2, 1, AckKind::Accept, 1301),
            AckOutcome::LeaseLost
        );
        // A lease that expired on its last delivery waits for its dead-lettering.
        s.apply(&lease(3, 3, 1400));
        assert!(s.redeliverable(1500, 3, 10).is_empty());
        assert_eq!(s.due_dead(1500, 3), vec![((T.into(), 0), 3, 3)]);
        // Unknown partition or offset: lost.
        let mut other = token(9, 1);
        assert_eq!(
            s.ack(&other, AckKind::Accept, 0, 3).0,
            AckOutcome::LeaseLost
        );
        other.topic = "nope".into();
        assert_eq!(
            s.ack(&other, AckKind::Accept, 0, 3).0,
            AckOutcome::LeaseLost
        );
    }

    #[test]
    fn a_replay_of_the_events_rebuilds_the_same_state_and_a_snapshot_stands_for_them() {
        let mut s = QueueState::default();
        let mut events = Vec::new();
        let mut push = |s: &mut QueueState, e: Event| {
            s.apply(&e);
            events.push(e);
        };
        for o in 0..6 {
            push(&mut s, lease(o, 1, 100));
        }
        push(
            &mut s,
            Event::Accept {
                t: T.into(),
                p: 0,
                o: 0,
            },
        );
        push(
            &mut s,
            Event::Accept {
                t: T.into(),
                p: 0,
                o: 2,
            },
        );
        push(
            &mut s,
            Event::Release {
                t: T.into(),
                p: 0,
                o: 1,
                at: 50,
            },
        );
        push(
            &mut s,
            Event::Dead {
                t: T.into(),
                p: 0,
                o: 3,
                reason: DeadReason::Rejected,
            },
        );
        let mut replayed = QueueState::default();
        for e in &events {
            let json = serde_json::to_vec(e).unwrap();
            replayed.apply(&serde_json::from_slice(&json).unwrap());
        }
        assert_eq!(replayed, s);
        let snap = Event::Snapshot {
            state: Box::new(s.clone()),
        };
        let mut from_snapshot = QueueState::default();
        from_snapshot.apply(&serde_json::from_slice(&serde_json::to_vec(&snap).unwrap()).unwrap());
        assert_eq!(from_snapshot, s);
        let q = s.queue(&(T.into(), 0)).unwrap();
        assert_eq!(
            (q.floor, q.next, q.backlog(10, 0), q.in_flight(0)),
            (1, 6, 5, 2)
        );
        assert_eq!(q.oldest_unsettled(10), 1);
    }
}
