//! How a message and an outcome are laid out in `queues.redb`.

use super::*;

/// The longest last error stored with a message: a longer one is cut.
pub(super) const ERROR_BYTES_MAX: usize = u16::MAX as usize;

/// A message's header as stored: attempts, enqueued ms, visible ms, last
/// error (`u32` length + bytes), then the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) attempts: u32,
    pub(super) enqueued_ms: u64,
    pub(super) visible_ms: u64,
    pub(super) last_error: Option<String>,
}

impl Stored {
    pub(super) fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(24 + payload.len());
        self.encode_into(&mut buf, payload);
        buf
    }

    pub(super) fn encode_into(&self, buf: &mut Vec<u8>, payload: &[u8]) {
        let error = self.last_error.as_deref().unwrap_or("");
        buf.extend_from_slice(&self.attempts.to_le_bytes());
        buf.extend_from_slice(&self.enqueued_ms.to_le_bytes());
        buf.extend_from_slice(&self.visible_ms.to_le_bytes());
        // Errors are short texts; a longer one is cut, not refused, and
        // between characters, so it reads back as it was written.
        let error = &error.as_bytes()[..error.floor_char_boundary(ERROR_BYTES_MAX)];
        buf.extend_from_slice(&(error.len() as u32).to_le_bytes());
        buf.extend_from_slice(error);
        buf.extend_from_slice(payload);
    }

    /// The header and the payload.
    pub(super) fn decode(bytes: &[u8]) -> Option<(Stored, &[u8])> {
        let (attempts, rest) = bytes.split_first_chunk::<4>()?;
        let (enqueued, rest) = rest.split_first_chunk::<8>()?;
        let (visible, rest) = rest.split_first_chunk::<8>()?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        let (error, payload) = rest.split_at(len);
        let error = String::from_utf8_lossy(error).into_owned();
        Some((
            Stored {
                attempts: u32::from_le_bytes(*attempts),
                enqueued_ms: u64::from_le_bytes(*enqueued),
                visible_ms: u64::from_le_bytes(*visible),
                last_error: (!error.is_empty()).then_some(error),
            },
            payload,
        ))
    }
}

/// An outcome as stored: `owner` (`u16` length + bytes), then the outcome.
/// Owners are tenant names, far shorter than `u16::MAX`.
pub(super) fn encode_outcome(owner: &str, outcome: &[u8]) -> Vec<u8> {
    let owner = owner.as_bytes();
    let mut value = Vec::with_capacity(2 + owner.len() + outcome.len());
    value.extend_from_slice(&(owner.len() as u16).to_le_bytes());
    value.extend_from_slice(owner);
    value.extend_from_slice(outcome);
    value
}

/// A stored outcome (see [`encode_outcome`]) as `owner` may see it.
pub(super) fn owned_outcome(value: &[u8], owner: &str) -> Option<MessageState> {
    let (len, rest) = value.split_first_chunk::<2>()?;
    let len = u16::from_le_bytes(*len) as usize;
    if rest.len() < len || &rest[..len] != owner.as_bytes() {
        return None;
    }
    Some(MessageState::Done {
        outcome: rest[len..].to_vec(),
    })
}

/// The bytes one outcome takes, as counted against [`OUTCOME_BYTES_MAX`].
pub(super) fn outcome_size(value: &[u8]) -> u64 {
    16 + value.len() as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn headers_round_trip_and_a_long_error_is_cut_between_characters() {
        let stored = Stored {
            attempts: 3,
            enqueued_ms: 1,
            visible_ms: u64::MAX,
            last_error: Some("boom".into()),
        };
        let bytes = stored.encode(b"payload");
        assert_eq!(
            Stored::decode(&bytes),
            Some((stored.clone(), &b"payload"[..]))
        );
        assert_eq!(Stored::decode(&bytes[..10]), None);

        // 'é' is two bytes: the limit falls inside the last one.
        let long = "é".repeat(ERROR_BYTES_MAX / 2 + 1);
        let stored = Stored {
            last_error: Some(long.clone()),
            ..stored
        };
        let (read, payload) = Stored::decode(&stored.encode(b""))
            .map(|(s, p)| (s, p.to_vec()))
            .unwrap();
        let error = read.last_error.unwrap();
        assert!(payload.is_empty());
        assert_eq!(error.len(), ERROR_BYTES_MAX - 1);
        assert!(long.starts_with(&error), "cut inside a character");

        let value = encode_outcome("acme", b"done");
        assert_eq!(
            owned_outcome(&value, "acme"),
            Some(MessageState::Done {
                outcome: b"done".to_vec()
            })
        );
        assert_eq!(owned_outcome(&value, "acm"), None);
    }
}
