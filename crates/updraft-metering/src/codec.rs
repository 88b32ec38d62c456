//! The usage log's record format: a length-prefixed frame of varints and
//! short strings, about 80 bytes a record where JSON took 430. A saturated
//! server writes megabytes of usage a second, and the kernel's writeback of
//! them competes with requests for the same cores.
//!
//! Frame: `u32 LE length`, then the payload: a format byte (2), tenant,
//! function, invocation id and error as `u16 LE length + UTF-8` (error
//! `0xFFFF` when none), the trigger byte, then 18 LEB128 integers. Format 1
//! (before storage samples) had 13, format 2 (before outgoing HTTP) 16;
//! both are still read.

use std::sync::Arc;

use updraft_core::{Trigger, UsageRecord};

const FORMAT: u8 = 3;
/// Integers of formats 1, 2 and 3.
const INTS_V1: usize = 13;
const INTS_V2: usize = 16;
const INTS: usize = 18;
const NO_ERROR: u16 = u16::MAX;

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names are ≤ 63 bytes, ids 36, error codes short: never near u16.
    let len = s.len().min(usize::from(NO_ERROR - 1));
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

fn put_uint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends one framed record to `out`.
pub fn encode(r: &UsageRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(FORMAT);
    put_str(out, &r.tenant);
    put_str(out, &r.function);
    put_str(out, &r.invocation_id);
    match &r.error {
        Some(e) => put_str(out, e),
        None => out.extend_from_slice(&NO_ERROR.to_le_bytes()),
    }
    out.push(match r.trigger {
        Trigger::Http => 0,
        Trigger::Api => 1,
        Trigger::Async => 2,
        Trigger::Call => 3,
        Trigger::Storage => 4,
    });
    for v in [
        r.version,
        r.start_ms,
        r.wall_us,
        r.billed_ms,
        u64::from(r.memory_mb),
        r.memory_peak_bytes,
        r.cpu_us,
        r.bytes_in,
        r.bytes_out,
        r.kv_ops,
        r.kv_bytes,
        r.blob_ops,
        r.blob_bytes,
        r.kv_stored_bytes,
        r.blob_stored_bytes,
        r.stored_secs,
        r.outbound_requests,
        r.outbound_bytes,
    ] {
        put_uint(out, v);
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn str_of(&mut self, len: u16) -> Option<String> {
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }

    fn string(&mut self) -> Option<String> {
        let len = self.u16()?;
        self.str_of(len)
    }

    fn uint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.take(1)?.first()?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

/// The first frame of `bytes`: the record (`None` if its payload does not
/// decode) and the frame's length; `None` when the frame is incomplete.
pub fn decode(bytes: &[u8]) -> Option<(Option<UsageRecord>, usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let payload = bytes.get(4..4 + len)?;
    Some((decode_payload(payload), 4 + len))
}

fn decode_payload(payload: &[u8]) -> Option<UsageRecord> {
    let mut r = Reader { bytes: payload };
    let ints = match *r.take(1)?.first()? {
        1 => INTS_V1,
        2 => INTS_V2,
        FORMAT => INTS,
        _ => return None,
    };
    let tenant: Arc<str> = Arc::from(r.string()?);
    let function: Arc<str> = Arc::from(r.string()?);
    let invocation_id = r.string()?;
    let error = match r.u16()? {
        NO_ERROR => None,
        len => Some(r.str_of(len)?),
    };
    let trigger = match *r.take(1)?.first()? {
        0 => Trigger::Http,
        1 => Trigger::Api,
        2 => Trigger::Async,
        3 => Trigger::Call,
        4 => Trigger::Storage,
        _ => return None,
    };
    let mut n = [0u64; INTS];
    for v in &mut n[..ints] {
        *v = r.uint()?;
    }
    Some(UsageRecord {
        tenant,
        function,
        version: n[0],
        invocation_id,
        trigger,
        start_ms: n[1],
        wall_us: n[2],
        billed_ms: n[3],
        memory_mb: u32::try_from(n[4]).ok()?,
        memory_peak_bytes: n[5],
        cpu_us: n[6],
        bytes_in: n[7],
        bytes_out: n[8],
        kv_ops: n[9],
        kv_bytes: n[10],
        blob_ops: n[11],
        blob_bytes: n[12],
        outbound_requests: n[16],
        outbound_bytes: n[17],
        error,
        kv_stored_bytes: n[13],
        blob_stored_bytes: n[14],
        stored_secs: n[15],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn records_round_trip_and_torn_frames_are_incomplete() {
        let mut r = UsageRecord {
            tenant: "acme".into(),
            function: "hello".into(),
            version: 3,
            invocation_id: "0195a7e2-0000-7000-8000-000000000000".into(),
            trigger: Trigger::Api,
            start_ms: 1_764_220_000_123,
            wall_us: 1234,
            billed_ms: 2,
            memory_mb: 128,
            memory_peak_bytes: 1 << 20,
            cpu_us: 999,
            bytes_in: 0,
            bytes_out: u64::MAX,
            kv_ops: 7,
            kv_bytes: 300,
            blob_ops: 1,
            blob_bytes: 5 << 30,
            outbound_requests: 2,
            outbound_bytes: 300,
            error: None,
            kv_stored_bytes: 0,
            blob_stored_bytes: 0,
            stored_secs: 0,
        };
        let mut out = Vec::new();
        encode(&r, &mut out);
        r.error = Some("timeout".into());
        encode(&r, &mut out);
        let (first, n) = decode(&out).unwrap();
        // A heavy record (gigabytes of blobs, outbound bytes): still small.
        assert!(n < 110, "{n} bytes");
        assert_eq!(first.unwrap().error, None);
        let (second, m) = decode(&out[n..]).unwrap();
        assert_eq!(second.unwrap(), r);
        assert_eq!(n + m, out.len());
        for cut in 0..m {
            assert!(decode(&out[n..n + cut]).is_none(), "cut at {cut}");
        }
        let sample = UsageRecord::storage("acme".into(), 1_764_223_200_000, 3600, 12_345, 7 << 40);
        out.clear();
        encode(&sample, &mut out);
        assert_eq!(decode(&out).unwrap().0.unwrap(), sample);
    }

    #[test]
    fn older_formats_still_decode() {
        // Records as formats 1 (13 integers, no storage) and 2 (16, no
        // outbound HTTP) wrote them.
        for (format, ints) in [(1u8, 13u8), (2, 16)] {
            let mut payload = vec![format];
            for s in ["acme", "hello", "id-1"] {
                payload.extend_from_slice(&(s.len() as u16).to_le_bytes());
                payload.extend_from_slice(s.as_bytes());
            }
            payload.extend_from_slice(&NO_ERROR.to_le_bytes());
            payload.push(0);
            payload.extend((1..=ints).map(|v| v * 2));
            let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&payload);
            let r = decode(&frame).unwrap().0.unwrap();
            assert_eq!(
                (&*r.tenant, r.trigger, r.version, r.blob_bytes),
                ("acme", Trigger::Http, 2, 26)
            );
            let stored = if format == 1 { (0, 0) } else { (28, 32) };
            assert_eq!((r.kv_stored_bytes, r.stored_secs), stored);
            assert_eq!((r.outbound_requests, r.outbound_bytes), (0, 0));
        }
    }
}
