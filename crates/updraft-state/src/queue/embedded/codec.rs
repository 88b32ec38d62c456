//! How a message and an outcome are laid out in `queues.redb`.

use super::*;

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
        let error = self.last_error.as_deref().unwrap_or("").as_bytes();
        buf.extend_from_slice(&self.attempts.to_le_bytes());
        buf.extend_from_slice(&self.enqueued_ms.to_le_bytes());
        buf.extend_from_slice(&self.visible_ms.to_le_bytes());
        // Errors are short texts; a longer one is cut, not refused.
        let error = &error[..error.len().min(u16::MAX as usize)];
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

/// A stored outcome (owner `u16` length + bytes, then the outcome) as
/// `owner` may see it.
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
