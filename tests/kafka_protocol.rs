//! The Kafka listener request by request, with exact versions, sequences and bytes: what a
//! client library relies on without saying (ranges, order, duplicates after a restart, a
//! fetch from inside a batch, error codes, and a connection closed only for bad bytes).

mod common;

use std::time::{Duration, Instant};

use common::kafka::{batch, decode, KafkaClient};
use common::server::Server;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    FetchRequest, GroupId, HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest,
    LeaveGroupRequest, MetadataRequest, OffsetCommitRequest, ProduceRequest, ProducerId,
    SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn produce_request(topic: &str, acks: i16, records: bytes::Bytes) -> ProduceRequest {
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(records);
    let mut t = TopicProduceData::default();
    t.name = name(topic);
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = acks;
    r.timeout_ms = 10_000;
    r.topic_data = vec![t];
    r
}

/// Produces `records` (acks=all, version 9); the partition's error code and base offset.
fn produce(c: &mut KafkaClient, topic: &str, records: bytes::Bytes) -> (i16, i64) {
    let r = c.call(9, &produce_request(topic, -1, records));
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch_request(topic: &str, offset: i64, partition_max: i32, wait_ms: i32) -> FetchRequest {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = offset;
    p.partition_max_bytes = partition_max;
    let mut t = FetchTopic::default();
    t.topic = name(topic);
    t.partitions = vec![p];
    let mut r = FetchRequest::default();
    r.max_wait_ms = wait_ms;
    r.min_bytes = 1;
    r.max_bytes = 50 << 20;
    r.topics = vec![t];
    r
}

/// Fetches (version 11): the partition's error code and records.
fn fetch(
    c: &mut KafkaClient,
    topic: &str,
    offset: i64,
    partition_max: i32,
    wait_ms: i32,
) -> (i16, Vec<kafka_protocol::records::Record>) {
    let mut r = c.call(11, &fetch_request(topic, offset, partition_max, wait_ms));
    let p = r.responses.remove(0).partitions.remove(0);
    (p.error_code, decode(p.records))
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

#[test]
fn api_versions_advertise_ranges_and_an_unsupported_version_gets_them_in_version_0() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = KafkaClient::connect(&server.kafka_addr());
    let r = c.call(3, &ApiVersionsRequest::default());
    assert_eq!(r.error_code, 0);
    let range = |key: ApiKey| {
        r.api_keys
            .iter()
            .find(|k| k.api_key == key as i16)
            .map(|k| (k.min_version, k.max_version))
    };
    // librdkafka needs these to overlap what it speaks to switch on idempotence, groups
    // and headers.
    assert_eq!(range(ApiKey::Produce), Some((3, 9)));
    assert_eq!(range(ApiKey::Fetch), Some((4, 12)));
    assert_eq!(range(ApiKey::InitProducerId), Some((0, 4)));
    assert_eq!(range(ApiKey::JoinGroup), Some((0, 7)));
    assert_eq!(range(ApiKey::SaslHandshake), Some((0, 1)));
    // Transactions are not offered: their APIs are not advertised.
    assert_eq!(range(ApiKey::EndTxn), None);

    // A version from the future: the answer is in version 0, with the error and the ranges
    // (KIP-511), and the connection goes on.
    let mut raw = Vec::new();
    raw.extend_from_slice(&(ApiKey::ApiVersions as i16).to_be_bytes());
    raw.extend_from_slice(&99i16.to_be_bytes());
    raw.extend_from_slice(&77i32.to_be_bytes());
    raw.extend_from_slice(&4i16.to_be_bytes());
    raw.extend_from_slice(b"test");
    raw.push(0);
    c.send_raw(&raw);
    let (id, r) = c.recv::<ApiVersionsRequest>(0);
    assert_eq!(id, 77);
    assert_eq!(r.error_code, code(ResponseError::UnsupportedVersion));
    assert!(r.api_keys.len() >= 19);
    let m = c.call(1, &MetadataRequest::default());
    assert_eq!(m.brokers.len(), 1);
}

#[test]
fn pipelined_requests_are_answered_in_order_and_acks_0_is_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = KafkaClient::connect(&server.kafka_addr());
    let a = c.send(1, &MetadataRequest::default());
    let b = c.send(9, &produce_request("fire", 0, batch(0, 3, None)));
    let d = c.send(3, &ApiVersionsRequest::default());
    let e = c.send(9, &produce_request("fire", -1, batch(3, 1, None)));
    assert!(a < b && b < d && d < e);
    assert_eq!(c.recv::<MetadataRequest>(1).0, a);
    // No answer for acks=0: the next one is the ApiVersions'.
    assert_eq!(c.recv::<ApiVersionsRequest>(3).0, d);
    let (id, r) = c.recv::<ProduceRequest>(9);
    assert_eq!(id, e);
    assert_eq!(
        r.responses[0].partition_responses[0].base_offset, 3,
        "the acks=0 records were appended first"
    );
}

#[test]
fn idempotent_retries_are_stored_once_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let server = Server::start(dir.path(), &[("MAPQ_KAFKA_LISTEN", &kafka)]);
    let mut c = KafkaClient::connect(&kafka);
    let init = c.call(4, &InitProducerIdRequest::default());
    assert_eq!(init.error_code, 0);
    let (id, epoch) = (init.producer_id.0, init.producer_epoch);
    assert!(id >= 0 && epoch == 0);

    assert_eq!(
        produce(&mut c, "idem", batch(0, 3, Some((id, 0, 0)))),
        (0, 0)
    );
    // The same batch again (a retry whose answer was lost): its first offset, nothing new.
    assert_eq!(
        produce(&mut c, "idem", batch(0, 3, Some((id, 0, 0)))),
        (0, 0)
    );
    assert_eq!(
        produce(&mut c, "idem", batch(3, 2, Some((id, 0, 3)))),
        (0, 3)
    );
    // A gap in the sequence.
    let (e, _) = produce(&mut c, "idem", batch(5, 1, Some((id, 0, 9))));
    assert_eq!(e, code(ResponseError::OutOfOrderSequenceNumber));
    // A new epoch of the same id starts at sequence 0 and fences the old one.
    let mut again = InitProducerIdRequest::default();
    again.producer_id = ProducerId(id);
    again.producer_epoch = 0;
    let bumped = c.call(4, &again);
    assert_eq!((bumped.producer_id.0, bumped.producer_epoch), (id, 1));
    assert_eq!(
        produce(&mut c, "idem", batch(5, 2, Some((id, 1, 0)))),
        (0, 5)
    );
    let (e, _) = produce(&mut c, "idem", batch(7, 1, Some((id, 0, 5))));
    assert_eq!(e, code(ResponseError::InvalidProducerEpoch));

    // After a restart the sequences are rebuilt from the log: the last batch retried is
    // still a duplicate, and the next one follows on.
    drop(c);
    assert_eq!(server.terminate(), 0);
    let server = Server::start(dir.path(), &[("MAPQ_KAFKA_LISTEN", &kafka)]);
    let mut c = KafkaClient::connect(&kafka);
    assert_eq!(
        produce(&mut c, "idem", batch(5, 2, Some((id, 1, 0)))),
        (0, 5)
    );
    assert_eq!(
        produce(&mut c, "idem", batch(7, 1, Some((id, 1, 2)))),
        (0, 7)
    );
    let (e, _) = produce(&mut c, "idem", batch(8, 1, Some((id, 1, 7))));
    assert_eq!(e, code(ResponseError::OutOfOrderSequenceNumber));
    // And ids are never given twice.
    let other = c.call(4, &InitProducerIdRequest::default());
    assert_ne!(other.producer_id.0, id);

    let (e, records) = fetch(&mut c, "idem", 0, 1 << 20, 0);
    assert_eq!(e, 0);
    let keys: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"]);
    drop(server);
}

#[test]
fn fetch_starts_inside_a_batch_waits_for_records_and_gives_at_least_one_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let addr = server.kafka_addr();
    let mut c = KafkaClient::connect(&addr);
    assert_eq!(produce(&mut c, "f", batch(0, 10, None)), (0, 0));

    let (e, records) = fetch(&mut c, "f", 5, 1 << 20, 0);
    assert_eq!(e, 0);
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        [5, 6, 7, 8, 9],
        "from the offset asked, inside the batch"
    );
    assert_eq!(records[0].value.as_deref(), Some(&b"v5"[..]));
    assert_eq!(records[0].timestamp, 1_700_000_000_005);

    // A byte budget smaller than one record still gets that record, whole.
    let (e, records) = fetch(&mut c, "f", 2, 1, 0);
    assert_eq!(e, 0);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key.as_deref(), Some(&b"k2"[..]));

    // At the end: the fetch waits, and the append wakes it.
    let appender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut other = KafkaClient::connect(&addr);
        produce(&mut other, "f", batch(10, 1, None))
    });
    let started = Instant::now();
    let (e, records) = fetch(&mut c, "f", 10, 1 << 20, 10_000);
    assert_eq!(e, 0);
    assert_eq!(records.len(), 1);
    // It waited for the append (made 300 ms after the fetch was sent), and no longer.
    assert!(
        started.elapsed() >= Duration::from_millis(250)
            && started.elapsed() < Duration::from_secs(5),
        "woken by the append, not by the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(appender.join().unwrap(), (0, 10));
    // Nothing comes: the wait ends at max_wait_ms with no records.
    let started = Instant::now();
    let (e, records) = fetch(&mut c, "f", 11, 1 << 20, 200);
    assert_eq!((e, records.len()), (0, 0));
    assert!(started.elapsed() >= Duration::from_millis(150));

    let (e, _) = fetch(&mut c, "f", 12, 1 << 20, 0);
    assert_eq!(e, code(ResponseError::OffsetOutOfRange));
    let (e, _) = fetch(&mut c, "nosuch", 0, 1 << 20, 0);
    assert_eq!(e, code(ResponseError::UnknownTopicOrPartition));
}

#[test]
fn errors_are_kafka_codes_and_bad_bytes_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let addr = server.kafka_addr();
    let mut c = KafkaClient::connect(&addr);
    let create = |c: &mut KafkaClient, topic: &str, rf: i16, configs: &[(&str, &str)]| {
        let mut t = CreatableTopic::default();
        t.name = name(topic);
        t.num_partitions = 3;
        t.replication_factor = rf;
        t.configs = configs
            .iter()
            .map(|(k, v)| {
                let mut c = CreatableTopicConfig::default();
                c.name = StrBytes::from_string((*k).into());
                c.value = Some(StrBytes::from_string((*v).into()));
                c
            })
            .collect();
        let mut r = CreateTopicsRequest::default();
        r.topics = vec![t];
        r.timeout_ms = 10_000;
        c.call(5, &r).topics.remove(0)
    };
    let made = create(&mut c, "made", 1, &[("retention.ms", "60000")]);
    assert_eq!((made.error_code, made.num_partitions), (0, 3));
    assert_eq!(
        create(&mut c, "made", 1, &[]).error_code,
        code(ResponseError::TopicAlreadyExists)
    );
    assert_eq!(
        create(&mut c, "rf3", 3, &[]).error_code,
        code(ResponseError::InvalidReplicationFactor)
    );
    let compact = create(&mut c, "compact", 1, &[("cleanup.policy", "compact")]);
    assert_eq!(compact.error_code, code(ResponseError::InvalidConfig));
    assert!(compact.error_message.unwrap().contains("cleanup.policy"));
    assert_eq!(
        create(&mut c, "bad name!", 1, &[]).error_code,
        code(ResponseError::InvalidTopicException)
    );

    let mut describe = DescribeConfigsRequest::default();
    let mut res = DescribeConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = StrBytes::from_static_str("made");
    describe.resources = vec![res];
    let d = c.call(4, &describe).results.remove(0);
    assert_eq!(d.error_code, 0);
    let retention = d
        .configs
        .iter()
        .find(|e| e.name.as_str() == "retention.ms")
        .unwrap();
    assert_eq!(retention.value.as_deref(), Some("60000"));

    // A batch whose CRC does not match.
    let mut bad = batch(0, 2, None).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    let (e, _) = produce(&mut c, "made", bad.into());
    assert_eq!(e, code(ResponseError::CorruptMessage));

    // A commit from a member the group does not know.
    let mut commit = OffsetCommitRequest::default();
    commit.group_id = GroupId(StrBytes::from_static_str("g"));
    commit.generation_id_or_member_epoch = 5;
    commit.member_id = StrBytes::from_static_str("stranger");
    let mut t = OffsetCommitRequestTopic::default();
    t.name = name("made");
    let mut p = OffsetCommitRequestPartition::default();
    p.committed_offset = 0;
    t.partitions = vec![p];
    commit.topics = vec![t];
    let r = c.call(8, &commit);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        code(ResponseError::UnknownMemberId)
    );

    let mut delete = DeleteTopicsRequest::default();
    delete.topic_names = vec![name("made")];
    delete.timeout_ms = 10_000;
    assert_eq!(c.call(4, &delete).responses[0].error_code, 0);
    assert_eq!(
        c.call(4, &delete).responses[0].error_code,
        code(ResponseError::UnknownTopicOrPartition)
    );

    // Counts that do not fit their bytes are refused before anything is allocated for
    // them: a batch claiming 2^31 records, a request claiming 2^31 topics.
    let mut lying = batch(0, 1, None).to_vec();
    lying[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    let (e, _) = produce(&mut c, "made2", lying.into());
    assert_eq!(e, code(ResponseError::CorruptMessage));
    let mut liar = KafkaClient::connect(&addr);
    let mut raw = Vec::new();
    raw.extend_from_slice(&(ApiKey::Metadata as i16).to_be_bytes());
    raw.extend_from_slice(&1i16.to_be_bytes());
    raw.extend_from_slice(&5i32.to_be_bytes());
    raw.extend_from_slice(&(-1i16).to_be_bytes());
    raw.extend_from_slice(&i32::MAX.to_be_bytes());
    liar.send_raw(&raw);
    assert!(
        liar.recv_raw().is_none(),
        "a body that cannot be decoded closes the connection"
    );
    // Requests other than Produce are small: a 2 MiB one is refused unread.
    let mut big = KafkaClient::connect(&addr);
    let mut raw = Vec::new();
    raw.extend_from_slice(&(ApiKey::Metadata as i16).to_be_bytes());
    raw.extend_from_slice(&1i16.to_be_bytes());
    raw.extend_from_slice(&6i32.to_be_bytes());
    raw.resize(2 << 20, 0);
    big.send_raw(&raw);
    assert!(big.recv_raw().is_none());

    // Garbage closes that connection, and only it.
    let mut junk = KafkaClient::connect(&addr);
    junk.send_raw(&[0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 9, 9]);
    assert!(
        junk.recv_raw().is_none(),
        "an unknown API key closes the connection"
    );
    let mut huge = KafkaClient::connect(&addr);
    std::io::Write::write_all(&mut huge.stream, &i32::MAX.to_be_bytes()).unwrap();
    assert!(
        huge.recv_raw().is_none(),
        "a frame beyond the limit closes the connection"
    );
    assert_eq!(c.call(1, &MetadataRequest::default()).brokers.len(), 1);
}

/// Joins `group` as a new member (version 5: the first join asks for a member id).
fn join(
    c: &mut KafkaClient,
    group: &str,
    member: &str,
) -> kafka_protocol::messages::JoinGroupResponse {
    let mut j = JoinGroupRequest::default();
    j.group_id = GroupId(StrBytes::from_string(group.to_owned()));
    j.session_timeout_ms = 10_000;
    j.rebalance_timeout_ms = 10_000;
    j.member_id = StrBytes::from_string(member.to_owned());
    j.protocol_type = StrBytes::from_static_str("consumer");
    let mut p = JoinGroupRequestProtocol::default();
    p.name = StrBytes::from_static_str("range");
    p.metadata = bytes::Bytes::from_static(b"subscription");
    j.protocols = vec![p];
    c.call(5, &j)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_group_and_an_http_group_keep_to_their_own_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let addr = server.kafka_addr();
    let http = reqwest::Client::new();
    let mut c = KafkaClient::connect(&addr);
    assert_eq!(produce(&mut c, "gt", batch(0, 5, None)), (0, 0));

    // The classic protocol: a member id first, then the join, the leader's sync.
    let first = join(&mut c, "kgroup", "");
    assert_eq!(first.error_code, code(ResponseError::MemberIdRequired));
    let id = first.member_id.to_string();
    let joined = join(&mut c, "kgroup", &id);
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.leader.as_str(), id, "the only member leads");
    assert_eq!(joined.members.len(), 1);
    assert_eq!(joined.members[0].metadata.as_ref(), b"subscription");
    let generation = joined.generation_id;
    let mut sync = SyncGroupRequest::default();
    sync.group_id = GroupId(StrBytes::from_static_str("kgroup"));
    sync.generation_id = generation;
    sync.member_id = StrBytes::from_string(id.clone());
    let mut a = SyncGroupRequestAssignment::default();
    a.member_id = StrBytes::from_string(id.clone());
    a.assignment = bytes::Bytes::from_static(b"gt-0");
    sync.assignments = vec![a];
    let synced = c.call(3, &sync);
    assert_eq!(
        (synced.error_code, synced.assignment.as_ref()),
        (0, &b"gt-0"[..])
    );

    // Commits with the member's generation are the group's offsets over HTTP; a stale
    // generation is refused.
    let commit = |generation: i32, offset: i64| {
        let mut r = OffsetCommitRequest::default();
        r.group_id = GroupId(StrBytes::from_static_str("kgroup"));
        r.generation_id_or_member_epoch = generation;
        r.member_id = StrBytes::from_string(id.clone());
        let mut t = OffsetCommitRequestTopic::default();
        t.name = name("gt");
        let mut p = OffsetCommitRequestPartition::default();
        p.committed_offset = offset;
        t.partitions = vec![p];
        r.topics = vec![t];
        r
    };
    let r = c.call(8, &commit(generation, 3));
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let r = c.call(8, &commit(generation - 1, 4));
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        code(ResponseError::IllegalGeneration)
    );
    let g = common::server::get_json(&http, server.url("/v1/groups/kgroup/offsets")).await;
    assert_eq!(g["offsets"][0]["offset"], 3, "{g}");

    // While the Kafka member is there, HTTP keeps off the name.
    let r = http
        .put(server.url("/v1/groups/kgroup/offsets"))
        .json(&serde_json::json!({"offsets": [{"topic": "gt", "partition": 0, "offset": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "group_exists", "{body}");
    let r = http
        .put(server.url("/v1/groups/kgroup"))
        .json(&serde_json::json!({"type": "queue", "topics": ["gt"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // The member leaves: the offsets stay, and HTTP may commit again.
    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(StrBytes::from_static_str("kgroup"));
    leave.member_id = StrBytes::from_string(id.clone());
    assert_eq!(c.call(2, &leave).error_code, 0);
    let r = http
        .put(server.url("/v1/groups/kgroup/offsets"))
        .json(&serde_json::json!({"offsets": [{"topic": "gt", "partition": 0, "offset": 5}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // A commit of an existing and a missing partition: the first lands, the second alone
    // fails.
    let joined = join(&mut c, "kgroup", "");
    let id = join(&mut c, "kgroup", joined.member_id.as_str());
    // (Commits wait for the leader's assignment: REBALANCE_IN_PROGRESS before the sync.)
    let mut sync = SyncGroupRequest::default();
    sync.group_id = GroupId(StrBytes::from_static_str("kgroup"));
    sync.generation_id = id.generation_id;
    sync.member_id = id.member_id.clone();
    assert_eq!(c.call(3, &sync).error_code, 0);
    let mut r = OffsetCommitRequest::default();
    r.group_id = GroupId(StrBytes::from_static_str("kgroup"));
    r.generation_id_or_member_epoch = id.generation_id;
    r.member_id = id.member_id.clone();
    let mut t = OffsetCommitRequestTopic::default();
    t.name = name("gt");
    t.partitions = [(0, 4), (7, 1)]
        .into_iter()
        .map(|(index, offset)| {
            let mut p = OffsetCommitRequestPartition::default();
            p.partition_index = index;
            p.committed_offset = offset;
            p
        })
        .collect();
    r.topics = vec![t];
    let answer = c.call(8, &r);
    let codes: Vec<i16> = answer.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, [0, code(ResponseError::UnknownTopicOrPartition)]);
    let g = common::server::get_json(&http, server.url("/v1/groups/kgroup/offsets")).await;
    assert_eq!(g["offsets"][0]["offset"], 4, "{g}");
    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(StrBytes::from_static_str("kgroup"));
    leave.member_id = id.member_id.clone();
    assert_eq!(c.call(2, &leave).error_code, 0);

    // A static member (group.instance.id) joins at once, and when it comes back after a
    // restart it replaces its old self instead of waiting for its session to expire.
    let static_join = |c: &mut KafkaClient| {
        let mut j = JoinGroupRequest::default();
        j.group_id = GroupId(StrBytes::from_static_str("sgroup"));
        j.session_timeout_ms = 60_000;
        j.rebalance_timeout_ms = 60_000;
        j.group_instance_id = Some(StrBytes::from_static_str("host-1"));
        j.protocol_type = StrBytes::from_static_str("consumer");
        let mut p = JoinGroupRequestProtocol::default();
        p.name = StrBytes::from_static_str("range");
        j.protocols = vec![p];
        c.call(5, &j)
    };
    let first = static_join(&mut c);
    assert_eq!(first.error_code, 0);
    let started = Instant::now();
    let again = static_join(&mut c);
    assert_eq!(again.error_code, 0);
    assert_ne!(again.member_id, first.member_id);
    assert_eq!(again.members.len(), 1, "the old member is gone");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The old member, alive somewhere, is fenced by its instance id.
    let mut hb = HeartbeatRequest::default();
    hb.group_id = GroupId(StrBytes::from_static_str("sgroup"));
    hb.generation_id = again.generation_id;
    hb.member_id = first.member_id.clone();
    hb.group_instance_id = Some(StrBytes::from_static_str("host-1"));
    assert_eq!(
        c.call(3, &hb).error_code,
        code(ResponseError::FencedInstanceId)
    );
    // It leaves by its instance id alone; the answer names it as it was asked.
    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(StrBytes::from_static_str("sgroup"));
    let mut who = MemberIdentity::default();
    who.group_instance_id = Some(StrBytes::from_static_str("host-1"));
    leave.members = vec![who];
    let left = c.call(3, &leave);
    assert_eq!(left.members.len(), 1);
    assert_eq!(left.members[0].error_code, 0);
    assert_eq!(left.members[0].member_id.as_str(), "");
    assert_eq!(left.members[0].group_instance_id.as_deref(), Some("host-1"));

    // An HTTP group with members keeps Kafka members off its name.
    let r = http
        .put(server.url("/v1/groups/hgroup"))
        .json(&serde_json::json!({"type": "partitioned"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let refused = join(&mut c, "hgroup", "");
    assert_eq!(
        refused.error_code,
        code(ResponseError::InconsistentGroupProtocol)
    );
}
