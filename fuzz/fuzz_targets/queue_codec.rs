//! The embedded queue's stored forms (`queues.redb`): a message's header
//! and payload, and an acknowledged message's outcome with its owner.
//!
//! Properties: decoding any bytes never panics, and what decodes encodes
//! back to the same bytes where the header is canonical; encode then
//! decode gives back the header (an empty error reads as none, a long one
//! is cut between characters) and the payload; an outcome is seen by its
//! owner only.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use updraft_state::queue::embedded::fuzzing::{
    ERROR_BYTES_MAX, Header, decode, encode, encode_outcome, owned_outcome,
};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    raw: &'a [u8],
    attempts: u32,
    enqueued_ms: u64,
    visible_ms: u64,
    last_error: Option<String>,
    /// Makes the error longer than the limit, to check the cut.
    repeat_error: bool,
    payload: &'a [u8],
    owner: String,
    other: String,
}

fuzz_target!(|input: Input<'_>| {
    // Bytes from the database, whatever they are.
    if let Some((header, payload)) = decode(input.raw) {
        let canonical = header
            .3
            .as_ref()
            .is_none_or(|e| !e.contains('\u{fffd}') && e.len() <= ERROR_BYTES_MAX);
        if canonical {
            assert_eq!(encode(&header, payload), input.raw);
        }
    }

    // A message written, then read.
    let mut error = input.last_error.clone();
    if input.repeat_error {
        error = error.map(|e| e.repeat(ERROR_BYTES_MAX / e.len().max(1) + 1));
    }
    let header: Header = (
        input.attempts,
        input.enqueued_ms,
        input.visible_ms,
        error.clone(),
    );
    let bytes = encode(&header, input.payload);
    let (read, payload) = decode(&bytes).expect("an encoded message decodes");
    assert_eq!(payload, input.payload);
    assert_eq!((read.0, read.1, read.2), (header.0, header.1, header.2));
    match (error.as_deref(), read.3.as_deref()) {
        (None | Some(""), None) => {}
        (Some(written), Some(read)) => {
            assert!(
                written.starts_with(read),
                "the error changed: {written:?} -> {read:?}"
            );
            assert!(read.len() == written.len() || written.len() > ERROR_BYTES_MAX);
            assert!(
                read.len() <= ERROR_BYTES_MAX
                    && read.len() + 4 > ERROR_BYTES_MAX.min(written.len())
            );
        }
        (written, read) => panic!("error {written:?} read back as {read:?}"),
    }

    // An outcome, seen by its owner only.
    if input.owner.len() <= usize::from(u16::MAX) {
        let value = encode_outcome(&input.owner, input.payload);
        assert_eq!(
            owned_outcome(&value, &input.owner).as_deref(),
            Some(input.payload)
        );
        if input.other != input.owner {
            assert_eq!(owned_outcome(&value, &input.other), None);
        }
    }
    let _ = owned_outcome(input.raw, &input.owner);
});
