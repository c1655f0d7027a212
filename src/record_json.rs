//! The JSON form of a record, shared by the HTTP consume route, the SSE stream and
//! `mapq tail --format json`: `offset`, `timestamp_ms`, `key` (or `key_b64` when not UTF-8,
//! `null` when absent), `value` (JSON when produced as JSON, else a string when UTF-8) or
//! `value_b64`, and `headers`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::log::format::{FrameView, HeaderIter};

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
    #[schema(value_type = BTreeMap<String, String>)]
    pub headers: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
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
        value: &'a [u8],
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
        let json = value_is_json
            .then(|| serde_json::from_slice::<&RawValue>(value).ok())
            .flatten();
        let (value, value_b64) = match json {
            Some(raw) => (Some(ValueOut::Json(raw)), None),
            None => match std::str::from_utf8(value) {
                Ok(s) => (Some(ValueOut::Text(s)), None),
                Err(_) => (None, Some(b64(value))),
            },
        };
        let headers = headers
            .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v)))
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
