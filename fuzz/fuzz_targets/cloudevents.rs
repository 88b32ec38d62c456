//! CloudEvents as published (`POST /v1/queues/{name}` and topics with
//! `application/cloudevents+json` or `-batch+json`) and as stored in a
//! queue and delivered.
//!
//! Properties: what publishing accepts (the quick top-level look or the
//! full parse) is what the full parse accepts; what it stores parses again
//! at delivery to the same attributes (with `time` filled in) and data;
//! a parsed event survives the queue's encoding; a batch is accepted only
//! if each of its events is; delivery's structured form is JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use updraft_core::cloudevent::{EVENT_TAG, Event, Outgoing};

const TIME: &str = "2026-01-02T03:04:05.678Z";

fuzz_target!(|data: &[u8]| {
    let full = Event::from_structured(data);
    let published = Outgoing::structured_at(data, TIME);
    assert_eq!(
        full.is_ok(),
        published.is_ok(),
        "{:?}: the full parse says {:?}, publishing {:?}",
        String::from_utf8_lossy(data),
        full.as_ref().err(),
        published.as_ref().err()
    );
    if let (Ok(event), Ok(published)) = (&full, &published) {
        check_event(event);
        let stored = match published {
            Outgoing::Json(json) => json.clone(),
            Outgoing::Event(_) => panic!("a structured event is stored as JSON"),
        };
        // The invoker parses the stored JSON again to deliver it.
        let delivered = Event::from_structured(&stored).unwrap_or_else(|e| {
            panic!(
                "{:?} was accepted but its stored form {:?} is not: {e}",
                String::from_utf8_lossy(data),
                String::from_utf8_lossy(&stored)
            )
        });
        let mut expected = event.attributes.clone();
        expected.entry("time").or_insert_with(|| TIME.into());
        assert_eq!(
            delivered.attributes,
            expected,
            "{:?}",
            String::from_utf8_lossy(data)
        );
        assert_eq!(
            delivered.data,
            event.data,
            "{:?} stored as {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&stored)
        );
    }

    if let Ok(events) = Event::from_batch(data) {
        for event in &events {
            check_event(event);
        }
        let outgoing =
            Outgoing::batch(data).expect("publishing takes a batch the full parse takes");
        assert_eq!(outgoing.len(), events.len());
    } else {
        assert!(
            Outgoing::batch(data).is_err(),
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }

    // Plain data published to a queue, with any content type.
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let content_type = std::str::from_utf8(&data[..split]).ok().map(str::to_string);
    let body = bytes::Bytes::copy_from_slice(data.get(split + 1..).unwrap_or_default());
    check_event(&Event::from_data("/queues/q".into(), content_type, body));
});

/// A queue round trip, and the two forms a function gets.
fn check_event(event: &Event) {
    let encoded = event.encode();
    assert_eq!(encoded[0], EVENT_TAG);
    assert_eq!(Event::decode(&encoded[1..]).as_ref(), Some(event));
    let structured = event.structured("message-id", 1_700_000_000_000);
    let value: Value = serde_json::from_slice(&structured).unwrap_or_else(|e| {
        panic!(
            "structured form {:?} is not JSON: {e}",
            String::from_utf8_lossy(&structured)
        )
    });
    assert_eq!(value["specversion"], "1.0");
    assert!(value["id"].is_string() && value["time"].is_string());
    for (name, value) in event.binary_headers("message-id", 0) {
        assert!(name == "content-type" || name.starts_with("ce-"), "{name}");
        let _ = value;
    }
}
