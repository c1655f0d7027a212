//! Records on the wire. Produce: [`ProduceRequest`] of [`RecordIn`] (JSON and NDJSON
//! bodies), answered by [`ProduceResponse`]. Consume: [`ConsumeResponse`] of [`RecordOut`],
//! the JSON form of a record shared by the consume route, the SSE stream and
//! `mapq tail --format json`: `offset`, `timestamp_ms`, `key` (or `key_b64` when not UTF-8,
//! `null` when absent), `value` (JSON when produced as JSON, else a string when UTF-8) or
//! `value_b64`, and `headers`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::log::format::{FrameView, HeaderIter};

/// One record of a JSON or NDJSON produce request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a record object such as {\"key\": \"k\", \"value\": {\"any\": \"json\"}}"
)]
pub struct RecordIn<'a> {
    /// Key as a string; or use `key_b64`. Both absent: null key.
    #[serde(borrow, default)]
    pub key: Option<Cow<'a, str>>,
    /// Key bytes, base64.
    #[serde(borrow, default)]
    pub key_b64: Option<Cow<'a, str>>,
    /// Any JSON value, stored as its JSON text and returned as JSON.
    #[serde(borrow, default, deserialize_with = "present")]
    #[schema(value_type = Option<Value>)]
    pub value: Option<&'a RawValue>,
    /// Value bytes, base64. A record with neither `value` nor `value_b64` has a null value
    /// (a tombstone), as distinct from an empty one.
    #[serde(borrow, default)]
    pub value_b64: Option<Cow<'a, str>>,
    /// Header names and values; a `null` value is stored as a null header value, as
    /// distinct from an empty string.
    #[serde(borrow, default)]
    #[schema(value_type = Option<BTreeMap<String, Option<String>>>)]
    pub headers: Option<BTreeMap<Cow<'a, str>, Option<Cow<'a, str>>>>,
    pub partition: Option<u32>,
    /// Milliseconds since the Unix epoch; absent or 0: the server's clock.
    pub timestamp_ms: Option<i64>,
}

/// A present `value`, even `null`, is `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// `application/json` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "an object {\"records\": [...]} of record objects"
)]
pub struct ProduceRequest<'a> {
    #[serde(borrow)]
    pub records: Vec<RecordIn<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecordOffset {
    pub partition: u32,
    pub offset: u64,
}

/// One entry per record, in request order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProduceResponse {
    pub offsets: Vec<RecordOffset>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumeResponse<'a> {
    #[schema(value_type = Vec<RecordOut>)]
    pub records: Vec<RecordOut<'a>>,
    /// The offset to ask for next.
    pub next_offset: u64,
    /// The offset the next produced record will get.
    pub high_watermark: u64,
}

/// A member fetch's records (`GET /v1/groups/{group}/members/{member}/records`).
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberRecords<'a> {
    #[schema(value_type = Vec<MemberRecordOut>)]
    pub records: Vec<MemberRecordOut<'a>>,
}

/// A record of a member fetch: the record object of partition consume, with its topic and
/// partition.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberRecordOut<'a> {
    pub topic: &'a str,
    pub partition: u32,
    #[serde(flatten)]
    #[schema(inline)]
    pub record: RecordOut<'a>,
}

/// `POST /v1/groups/{group}/leases`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseResponse<'a> {
    #[schema(value_type = Vec<LeasedRecordOut>)]
    pub records: Vec<LeasedRecordOut<'a>>,
    /// The group's in-flight window is full: fewer records (or none) than asked for.
    pub window_full: bool,
}

/// A leased record: the record object of partition consume, with its topic, partition,
/// lease token, delivery (1 for the first) and when the lease ends.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeasedRecordOut<'a> {
    pub topic: &'a str,
    pub partition: u32,
    #[serde(flatten)]
    #[schema(inline)]
    pub record: RecordOut<'a>,
    pub lease: &'a str,
    pub delivery: u32,
    pub lease_expires_ms: i64,
}

/// A record as JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordOut<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    /// The key when it is UTF-8; `null` when the record has no key.
    #[schema(value_type = Option<String>)]
    pub key: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    /// The value: as JSON when produced as JSON, else a string when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub value: Option<ValueOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
    /// Header names and values; `null` for a null header value.
    #[schema(value_type = BTreeMap<String, Option<String>>)]
    pub headers: BTreeMap<Cow<'a, str>, Option<Cow<'a, str>>>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ValueOut<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl<'a> RecordOut<'a> {
    /// The JSON form of a record from its parts.
    pub fn new(
        offset: u64,
        timestamp_ms: i64,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        value_is_json: bool,
        headers: HeaderIter<'a>,
    ) -> Self {
        let (key, key_b64) = match key {
            None => (None, None),
            Some(k) => match std::str::from_utf8(k) {
                Ok(s) => (Some(Cow::Borrowed(s)), None),
                Err(_) => (None, Some(b64(k))),
            },
        };
        let (value, value_b64) = match value {
            // A null value: neither field.
            None => (None, None),
            Some(value) => match value_is_json
                .then(|| serde_json::from_slice::<&RawValue>(value).ok())
                .flatten()
            {
                Some(raw) => (Some(ValueOut::Json(raw)), None),
                None => match std::str::from_utf8(value) {
                    Ok(s) => (Some(ValueOut::Text(s)), None),
                    Err(_) => (None, Some(b64(value))),
                },
            },
        };
        let headers = headers
            .map(|(k, v)| (String::from_utf8_lossy(k), v.map(String::from_utf8_lossy)))
            .collect();
        RecordOut {
            offset,
            timestamp_ms,
            key,
            key_b64,
            value,
            value_b64,
            headers,
        }
    }

    /// The JSON form of a frame.
    pub fn of_frame(f: &FrameView<'a>) -> Self {
        Self::new(
            f.offset,
            f.timestamp_ms,
            f.key(),
            f.value(),
            f.value_is_json(),
            f.headers(),
        )
    }
}
