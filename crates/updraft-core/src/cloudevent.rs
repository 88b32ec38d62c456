//! CloudEvents (JSON format, structured and binary HTTP modes): the form in
//! which every event reaches a function, the checks on what is published,
//! and how an event is stored in a queue. The scheduler publishes and
//! delivers them (`updraft_scheduler::events`); this module does no I/O, so
//! the fuzz target `cloudevents` runs it on anything.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// CloudEvents' `specversion`.
pub const SPEC_VERSION: &str = "1.0";
/// Most events one batch may publish.
pub const BATCH_EVENTS_MAX: usize = 1000;
/// Largest body of a batch: events are each at most the queue's payload
/// limit, and a batch at most this in all.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// `type` of an event published as plain data.
pub const MESSAGE_TYPE: &str = "dev.updraft.message";
/// First byte of a stored [`Event`] (see [`Event::encode`]).
pub const EVENT_TAG: u8 = 2;
/// First byte of a stored structured CloudEvent, as [`Outgoing::Json`]
/// holds it.
pub const JSON_EVENT_TAG: u8 = 3;

/// Why a published CloudEvent is refused: a message that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEvent(pub String);

/// An event on its way to a function: CloudEvents attributes and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Every attribute but `specversion` and the data; without `id`, the
    /// message's id is the event's.
    pub attributes: Map<String, Value>,
    pub data: Bytes,
}

fn invalid(message: impl Into<String>) -> InvalidEvent {
    InvalidEvent(message.into())
}

impl Event {
    /// Plain data published to a queue or topic.
    pub fn from_data(source: String, content_type: Option<String>, data: Bytes) -> Event {
        let mut attributes = Map::new();
        attributes.insert("source".into(), source.into());
        attributes.insert("type".into(), MESSAGE_TYPE.into());
        if let Some(content_type) = content_type {
            attributes.insert("datacontenttype".into(), content_type.into());
        }
        Event { attributes, data }
    }

    /// An event the platform emits itself: `source`, `type`, an optional
    /// `subject`, and JSON `data` (none for a tick).
    pub fn platform(
        source: String,
        kind: &str,
        subject: Option<String>,
        data: Option<Value>,
    ) -> Event {
        let mut attributes = Map::new();
        attributes.insert("source".into(), source.into());
        attributes.insert("type".into(), kind.into());
        if let Some(subject) = subject {
            attributes.insert("subject".into(), subject.into());
        }
        let data = match data {
            Some(value) => {
                attributes.insert("datacontenttype".into(), "application/json".into());
                Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        Event { attributes, data }
    }

    /// A CloudEvent in structured mode (`application/cloudevents+json`),
    /// checked: `specversion` 1.0, non-empty `id`, `source` and `type`,
    /// lowercase attribute names, at most one of `data` and `data_base64`.
    pub fn from_structured(body: &[u8]) -> Result<Event, InvalidEvent> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("the CloudEvent is not JSON: {e}")))?;
        Event::from_value(value)
    }

    /// CloudEvents in batched mode (`application/cloudevents-batch+json`):
    /// a JSON array of 1 to [`BATCH_EVENTS_MAX`] structured events, each
    /// checked as [`Event::from_structured`] does. One bad event refuses
    /// the whole batch, naming it.
    pub fn from_batch(body: &[u8]) -> Result<Vec<Event>, InvalidEvent> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("the batch is not JSON: {e}")))?;
        let Value::Array(events) = value else {
            return Err(invalid(
                "a CloudEvents batch is a JSON array of structured events",
            ));
        };
        if events.is_empty() || events.len() > BATCH_EVENTS_MAX {
            return Err(invalid(format!(
                "the batch has {} events: send 1 to {BATCH_EVENTS_MAX}",
                events.len()
            )));
        }
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                Event::from_value(event)
                    .map_err(|InvalidEvent(m)| invalid(format!("event {i} of the batch: {m}")))
            })
            .collect()
    }

    fn from_value(value: Value) -> Result<Event, InvalidEvent> {
        let Value::Object(mut attributes) = value else {
            return Err(invalid("a CloudEvent is a JSON object"));
        };
        match attributes.remove("specversion") {
            Some(Value::String(v)) if v == SPEC_VERSION => {}
            Some(other) => {
                return Err(invalid(format!(
                    "specversion {other} is not supported: use \"1.0\""
                )));
            }
            None => {
                return Err(invalid(
                    "the CloudEvent has no specversion: add \"specversion\": \"1.0\"",
                ));
            }
        }
        for required in ["id", "source", "type"] {
            match attributes.get(required) {
                Some(Value::String(s)) if !s.is_empty() => {}
                _ => {
                    return Err(invalid(format!(
                        "the CloudEvent needs a non-empty string {required:?}"
                    )));
                }
            }
        }
        for name in attributes.keys() {
            let ok = !name.is_empty()
                && name.len() <= 20
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(invalid(format!(
                    "attribute name {name:?} is not allowed: use up to 20 lowercase letters and digits"
                )));
            }
        }
        let data = attributes.remove("data");
        let data_base64 = attributes.remove("data_base64");
        // The JSON event format: attribute values are strings, numbers or
        // booleans (or null: absent); `time` is an RFC 3339 string.
        for (name, value) in &attributes {
            if value.is_object() || value.is_array() {
                return Err(invalid(format!(
                    "attribute {name:?} is a JSON {}: CloudEvents attributes are strings, \
                     numbers or booleans",
                    if value.is_object() { "object" } else { "array" }
                )));
            }
        }
        if let Some(time) = attributes.get("time")
            && !time.is_string()
        {
            return Err(invalid(
                "time must be a string: an RFC 3339 timestamp like \"2026-01-01T00:00:00Z\"",
            ));
        }
        let data = match (data, data_base64) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "the CloudEvent has both data and data_base64: keep one",
                ));
            }
            (None, Some(Value::String(b64))) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| invalid(format!("data_base64 is not base64: {e}")))?,
            (None, Some(_)) => return Err(invalid("data_base64 must be a string")),
            (Some(Value::String(text)), None) if !is_json(&attributes) => text.into_bytes(),
            (Some(value), None) => {
                attributes
                    .entry("datacontenttype")
                    .or_insert_with(|| "application/json".into());
                serde_json::to_vec(&value).map_err(|e| invalid(e.to_string()))?
            }
            (None, None) => Vec::new(),
        };
        Ok(Event {
            attributes,
            data: data.into(),
        })
    }

    /// `[2][u32 length][attributes as JSON][data]`.
    pub fn encode(&self) -> Vec<u8> {
        let attributes = serde_json::to_vec(&self.attributes).unwrap_or_else(|_| b"{}".to_vec());
        let mut buf = Vec::with_capacity(5 + attributes.len() + self.data.len());
        buf.push(EVENT_TAG);
        buf.extend_from_slice(&(attributes.len() as u32).to_le_bytes());
        buf.extend_from_slice(&attributes);
        buf.extend_from_slice(&self.data);
        buf
    }

    /// The inverse of [`Event::encode`], without the tag.
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        let (attributes, data) = rest.split_at(len);
        Some(Event {
            attributes: serde_json::from_slice(attributes).ok()?,
            data: Bytes::copy_from_slice(data),
        })
    }

    fn text(&self, name: &str) -> Option<String> {
        match self.attributes.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// `id` and `time`, defaulted from the message.
    fn id_and_time(&self, id: &str, enqueued_ms: u64) -> (String, String) {
        let time = UNIX_EPOCH + Duration::from_millis(enqueued_ms);
        (
            self.text("id").unwrap_or_else(|| id.to_string()),
            self.text("time")
                .unwrap_or_else(|| humantime::format_rfc3339_millis(time).to_string()),
        )
    }

    /// HTTP binary mode: the attributes as `ce-*` headers (and
    /// `content-type`), for a `POST /` whose body is the data.
    pub fn binary_headers(&self, id: &str, enqueued_ms: u64) -> Vec<(String, Vec<u8>)> {
        let (id, time) = self.id_and_time(id, enqueued_ms);
        let mut headers = vec![
            (
                "ce-specversion".to_string(),
                SPEC_VERSION.as_bytes().to_vec(),
            ),
            ("ce-id".to_string(), id.into_bytes()),
            ("ce-time".to_string(), time.into_bytes()),
        ];
        for name in self.attributes.keys() {
            if matches!(name.as_str(), "id" | "time") {
                continue;
            }
            let Some(text) = self.text(name) else {
                continue;
            };
            let header = match name.as_str() {
                "datacontenttype" => "content-type".to_string(),
                _ => format!("ce-{name}"),
            };
            headers.push((header, text.into_bytes()));
        }
        headers
    }

    /// Structured mode: one JSON object, for a command's stdin. JSON data
    /// stays JSON, text becomes a string, other bytes `data_base64`.
    pub fn structured(&self, id: &str, enqueued_ms: u64) -> Bytes {
        // Written out directly, not through a cloned map: this runs for
        // every event a handler or command gets.
        fn field(out: &mut Vec<u8>, name: &str, value: &impl Serialize) {
            out.push(b',');
            let _ = serde_json::to_writer(&mut *out, name);
            out.push(b':');
            let _ = serde_json::to_writer(&mut *out, value);
        }
        let (id, time) = self.id_and_time(id, enqueued_ms);
        let mut out = Vec::with_capacity(256 + self.data.len() * 4 / 3);
        out.extend_from_slice(br#"{"specversion":"1.0""#);
        for (name, value) in &self.attributes {
            if !matches!(name.as_str(), "specversion" | "id" | "time") {
                field(&mut out, name, value);
            }
        }
        field(&mut out, "id", &id);
        field(&mut out, "time", &time);
        if !self.data.is_empty() {
            // JSON is UTF-8, which serde_json does not check inside a
            // string it skips (found by fuzz/cloudevents).
            // Nor the range of a number: the check is the parse a reader
            // of the event does (found by fuzz/cloudevents).
            let json = is_json(&self.attributes)
                && std::str::from_utf8(&self.data).is_ok()
                && serde_json::from_slice::<Value>(&self.data).is_ok();
            if json {
                // Valid JSON as it is: embedded without a parse into values.
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(&self.data);
            } else if let Ok(text) = std::str::from_utf8(&self.data) {
                field(&mut out, "data", &text);
            } else {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&self.data);
                field(&mut out, "data_base64", &b64);
            }
        }
        out.push(b'}');
        out.into()
    }
}

/// An event to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Attributes and data: plain data, or an event the platform emits.
    Event(Event),
    /// A structured CloudEvent, checked, with `time` (and a JSON `data`'s
    /// `datacontenttype`) filled in: stored and delivered as it is, so a
    /// handler or command gets it without a parse.
    Json(Bytes),
}

impl From<Event> for Outgoing {
    fn from(event: Event) -> Outgoing {
        Outgoing::Event(event)
    }
}

impl Outgoing {
    /// A structured CloudEvent, checked as [`Event::from_structured`] does.
    pub fn structured(body: &[u8]) -> Result<Outgoing, InvalidEvent> {
        Outgoing::structured_at(body, &rfc3339_now())
    }

    /// [`Outgoing::structured`] with `time` (RFC 3339) for an event that
    /// has none: a quick look at the top level where that is enough, the
    /// full parse otherwise, one result either way.
    pub fn structured_at(body: &[u8], time: &str) -> Result<Outgoing, InvalidEvent> {
        if let Some(json) = checked_json(body, time) {
            return Ok(Outgoing::Json(json));
        }
        Event::from_structured(body).map(|event| event.into_json(time))
    }

    /// A CloudEvents batch, checked as [`Event::from_batch`] does.
    pub fn batch(body: &[u8]) -> Result<Vec<Outgoing>, InvalidEvent> {
        // The common case without building JSON values: split the array,
        // check each event's top level. Anything unusual takes the full
        // parse, which also words the error.
        let Ok(events) = serde_json::from_slice::<Vec<&RawValue>>(body) else {
            return Ok(Event::from_batch(body)?
                .into_iter()
                .map(Outgoing::Event)
                .collect());
        };
        if events.is_empty() || events.len() > BATCH_EVENTS_MAX {
            return Err(invalid(format!(
                "the batch has {} events: send 1 to {BATCH_EVENTS_MAX}",
                events.len()
            )));
        }
        let time = rfc3339_now();
        let mut checked = Vec::with_capacity(events.len());
        for (i, raw) in events.iter().enumerate() {
            checked.push(match checked_json(raw.get().as_bytes(), &time) {
                Some(json) => Outgoing::Json(json),
                None => Event::from_structured(raw.get().as_bytes())
                    .map(|event| event.into_json(&time))
                    .map_err(|InvalidEvent(m)| invalid(format!("event {i} of the batch: {m}")))?,
            });
        }
        Ok(checked)
    }

    /// `[2][attributes][data]` or `[3][structured JSON]`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Outgoing::Event(event) => event.encode(),
            Outgoing::Json(json) => {
                let mut buf = Vec::with_capacity(1 + json.len());
                buf.push(JSON_EVENT_TAG);
                buf.extend_from_slice(json);
                buf
            }
        }
    }
}

impl Event {
    /// As structured JSON to store, with `time` if it has none.
    fn into_json(self, time: &str) -> Outgoing {
        let id = self.text("id").unwrap_or_default();
        let mut event = self;
        event
            .attributes
            .entry("time")
            .or_insert_with(|| time.into());
        // `time` is set, so the message time (0 here) is never used.
        Outgoing::Json(event.structured(&id, 0))
    }
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A well-formed structured CloudEvent as it will be stored, when a look
/// at its top level is enough to check it (and fill in `time` and a JSON
/// `data`'s `datacontenttype`); `None` for anything else, which
/// [`Event::from_structured`] then parses in full.
fn checked_json(body: &[u8], time: &str) -> Option<Bytes> {
    struct TopLevel<'a>(Vec<(&'a str, &'a RawValue)>);
    impl<'de> serde::Deserialize<'de> for TopLevel<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Entries;
            impl<'de> serde::de::Visitor<'de> for Entries {
                type Value = TopLevel<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Self::Value, A::Error> {
                    let mut entries = Vec::with_capacity(8);
                    while let Some(name) = map.next_key::<&'de str>()? {
                        entries.push((name, map.next_value::<&'de RawValue>()?));
                    }
                    Ok(TopLevel(entries))
                }
            }
            d.deserialize_map(Entries)
        }
    }
    let TopLevel(entries) = serde_json::from_slice(body).ok()?;
    let raw = |name: &str| {
        entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.get())
    };
    let plain_string = |v: &str| v.len() > 2 && v.starts_with('"') && !v.contains('\\');
    // A value that is not a plain string is stored as it is, and parsed
    // at delivery: an out-of-range number (found by fuzz/cloudevents) or
    // a lone surrogate escape must be refused as the full parse refuses it.
    if entries
        .iter()
        .any(|(_, v)| !plain_string(v.get()) && serde_json::from_str::<Value>(v.get()).is_err())
    {
        return None;
    }
    for (i, (name, _)) in entries.iter().enumerate() {
        let ok = !name.is_empty()
            && name.len() <= 20
            && name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
            && !entries[..i].iter().any(|(n, _)| n == name);
        if !ok {
            return None;
        }
    }
    if raw("specversion")? != "\"1.0\"" || raw("data_base64").is_some() {
        return None;
    }
    for required in ["id", "source", "type"] {
        if !plain_string(raw(required)?) {
            return None;
        }
    }
    // An attribute that is an object or an array, or a `time` that is not
    // a string: the full parse refuses it (found by fuzz/cloudevents).
    let structured = |v: &str| v.starts_with(['{', '[']);
    if entries
        .iter()
        .any(|(n, v)| !matches!(*n, "data" | "data_base64") && structured(v.get()))
        || raw("time").is_some_and(|t| !t.starts_with('"'))
    {
        return None;
    }
    let content_type = raw("datacontenttype");
    let json_type = match content_type {
        None => false,
        Some(t) if plain_string(t) => t.contains("json"),
        Some(_) => return None,
    };
    // Data that is not a string is JSON, and says so.
    let json_data = raw("data").is_some_and(|d| !d.starts_with('"'));
    if json_data && content_type.is_some() && !json_type {
        // JSON data said to be something else: the full parse decides.
        return None;
    }
    let add_type = json_data && content_type.is_none();
    let add_time = raw("time").is_none();
    if !add_type && !add_time {
        return Some(Bytes::copy_from_slice(body));
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    out.push(b'{');
    if add_time {
        out.extend_from_slice(b"\"time\":\"");
        out.extend_from_slice(time.as_bytes());
        out.extend_from_slice(b"\",");
    }
    if add_type {
        out.extend_from_slice(b"\"datacontenttype\":\"application/json\",");
    }
    let rest = std::str::from_utf8(body)
        .ok()?
        .trim_start()
        .strip_prefix('{')?;
    out.extend_from_slice(rest.as_bytes());
    Some(out.into())
}

fn is_json(attributes: &Map<String, Value>) -> bool {
    match attributes.get("datacontenttype") {
        Some(Value::String(t)) => t.contains("json"),
        _ => false,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_events_are_checked_and_round_trip() {
        let event = Event::from_structured(
            br#"{"specversion":"1.0","id":"e1","source":"/shop","type":"order.created",
                 "datacontenttype":"application/json","data":{"n":1},"shopid":"7"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&event.data[..], br#"{"n":1}"#);
        assert_eq!(Event::decode(&event.encode()[1..]), Some(event.clone()));
        let headers = event.binary_headers("m1", 0);
        let header = |name: &str| {
            let (_, value) = headers
                .iter()
                .find(|(n, _)| n == name)
                .cloned()
                .unwrap_or_default();
            String::from_utf8(value).unwrap_or_default()
        };
        assert_eq!(header("ce-id"), "e1");
        assert_eq!(header("ce-type"), "order.created");
        assert_eq!(header("ce-shopid"), "7");
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("ce-time"), "1970-01-01T00:00:00.000Z");
        let raw = event.structured("m1", 0);
        let structured: Value = serde_json::from_slice(&raw).unwrap_or_default();
        assert_eq!(structured["data"]["n"], 1);
        assert_eq!(structured["specversion"], "1.0");
        // Its own id, each attribute once.
        assert_eq!(structured["id"], "e1");
        assert_eq!(structured["shopid"], "7");
        assert_eq!(structured["time"], "1970-01-01T00:00:00.000Z");
        let text = String::from_utf8_lossy(&raw);
        assert_eq!(text.matches("\"id\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"specversion\"").count(), 1, "{text}");
        // Data said to be JSON that is not goes as text.
        let odd = Event::from_data(
            "/queues/q".into(),
            Some("application/json".into()),
            Bytes::from_static(b"{oops"),
        );
        let structured: Value =
            serde_json::from_slice(&odd.structured("m3", 0)).unwrap_or_default();
        assert_eq!(structured["data"], "{oops");

        // Nor is JSON data that is not UTF-8 (found by fuzz/cloudevents).
        let odd = Event::from_data(
            "/queues/q".into(),
            Some("application/json".into()),
            Bytes::from_static(b"{\"a\":\"\xff\"}"),
        );
        let structured: Value =
            serde_json::from_slice(&odd.structured("m4", 0)).unwrap_or_default();
        assert_eq!(structured["data_base64"], "eyJhIjoi/yJ9");

        let binary = Event::from_data("/queues/q".into(), None, Bytes::from_static(&[0xff, 0]));
        let structured: Value =
            serde_json::from_slice(&binary.structured("m2", 0)).unwrap_or_default();
        assert_eq!(structured["id"], "m2");
        assert_eq!(structured["data_base64"], "/wA=");

        for (bad, says) in [
            (&br#"[1]"#[..], "JSON object"),
            (br#"{"id":"1","source":"s","type":"t"}"#, "specversion"),
            (br#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#, "not supported"),
            (br#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#, "\"id\""),
            (br#"{"specversion":"1.0","id":"1","type":"t"}"#, "\"source\""),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"t","Bad":1}"#, "not allowed"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}"#, "both"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!!"}"#, "base64"),
        ] {
            let message = Event::from_structured(bad).map(|_| ()).unwrap_err().to_string();
            assert!(message.contains(says), "{message} should say {says}");
            // Publishing refuses it the same way, alone or in a batch.
            let message = Outgoing::structured(bad).map(|_| ()).unwrap_err().to_string();
            assert!(message.contains(says), "{message} should say {says}");
            let mut batch = br#"[{"specversion":"1.0","id":"1","source":"s","type":"t"},"#.to_vec();
            batch.extend_from_slice(bad);
            batch.push(b']');
            let message = Outgoing::batch(&batch).map(|_| ()).unwrap_err().to_string();
            assert!(message.contains("event 1 of the batch"), "{message}");
            assert!(message.contains(says), "{message} should say {says}");
        }
    }

    /// The JSON event format: attributes are strings, numbers or booleans,
    /// `time` a string. An object `time` was once stored as given and
    /// delivered as a string (found by fuzz/cloudevents).
    #[test]
    fn attributes_that_are_objects_or_arrays_are_refused() {
        for (body, says) in [
            (
                &br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","time":{"n":1}}"#[..],
                "\"time\" is a JSON object",
            ),
            (
                br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","tags":["a"]}"#,
                "\"tags\" is a JSON array",
            ),
            (
                br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","time":7}"#,
                "time must be a string",
            ),
        ] {
            let text = String::from_utf8_lossy(body);
            let Err(InvalidEvent(message)) = Outgoing::structured_at(body, "2026-01-01T00:00:00Z")
            else {
                panic!("{text} was accepted");
            };
            assert!(message.contains(says), "{text}: {message}");
            assert!(Event::from_structured(body).is_err(), "{text}");
        }
    }

    /// A number attribute comes out of the queue as it went in: serde_json
    /// parses floats exactly (`float_roundtrip`; found by fuzz/cloudevents,
    /// where 7.00002e31 came back as 7.000020000000001e31).
    #[test]
    fn number_attributes_survive_the_queue_exactly() {
        let body = br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","adat":7.00002e31}"#;
        let event = Event::from_structured(body).unwrap();
        let encoded = event.encode();
        assert_eq!(Event::decode(&encoded[1..]), Some(event));
    }

    /// Structured events are stored as published, checked at their top
    /// level only; what a function gets is what the full parse gives.
    #[test]
    fn published_json_is_the_full_parse_without_one() {
        let time = "2026-01-02T03:04:05.678Z";
        let full = |body: &[u8]| -> Value {
            let Ok(Outgoing::Json(json)) = Event::from_structured(body).map(|e| e.into_json(time))
            else {
                panic!("{}", String::from_utf8_lossy(body));
            };
            serde_json::from_slice(&json).unwrap_or_default()
        };
        for (body, quick) in [
            (&br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","data":{"n":[1,2]}}"#[..], true),
            (br#" {"specversion":"1.0","id":"e1","source":"/s","type":"t","data":"text"}"#, true),
            (br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","datacontenttype":"application/json","data":"s"}"#, true),
            (br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","time":"2020-01-01T00:00:00Z","x1":null}"#, true),
            (br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","datacontenttype":"text/csv","data":7}"#, false),
            // Escapes, base64 data: the full parse.
            (br#"{"specversion":"1.0","\u0069d":"e1","source":"/s","type":"t"}"#, false),
            (br#"{"specversion":"1.0","id":"e\"1","source":"/s","type":"t"}"#, false),
            (br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","data_base64":"/wA="}"#, false),
        ] {
            let Some(json) = checked_json(body, time) else {
                assert!(!quick, "{}", String::from_utf8_lossy(body));
                continue;
            };
            assert!(quick, "{}", String::from_utf8_lossy(body));
            let quick: Value = serde_json::from_slice(&json).unwrap_or_default();
            assert_eq!(quick, full(body), "{}", String::from_utf8_lossy(body));
            assert!(quick["time"].is_string());
        }
        // A batch keeps its order; each event is stored whole.
        let batch = br#"[{"specversion":"1.0","id":"a","source":"/s","type":"t","data":1},
                         {"specversion":"1.0","id":"b","source":"/s","type":"t","data_base64":"/wA="}]"#;
        let events = Outgoing::batch(batch).unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<Value> = events
            .iter()
            .map(|e| match e {
                Outgoing::Json(json) => serde_json::from_slice::<Value>(json).unwrap_or_default(),
                Outgoing::Event(_) => Value::Null,
            })
            .collect();
        assert_eq!((&ids[0]["id"], &ids[0]["data"]), (&"a".into(), &1.into()));
        assert_eq!(
            (&ids[1]["id"], &ids[1]["data_base64"]),
            (&"b".into(), &"/wA=".into())
        );
        assert!(Outgoing::batch(b"[]").is_err());
    }
}
