//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the
//! `traceparent` that carries a trace from a client through an
//! invocation, its calls to other functions, its async invocations and the
//! messages it publishes (the CloudEvents distributed-tracing extension
//! names the same attribute), so that a retry an hour later joins the
//! trace it started in.

/// Where a span is in its trace: the trace, the span, whether it is
/// sampled. What `traceparent` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The `sampled` flag: a span of an unsampled trace is not recorded.
    pub sampled: bool,
}

/// The header, and the CloudEvents extension attribute, that carry it.
pub const TRACEPARENT: &str = "traceparent";

/// A version-00 `traceparent`'s length: `00-` 32 `-` 16 `-` 2.
pub const HEADER_LEN: usize = 55;

const HEX: &[u8; 16] = b"0123456789abcdef";

impl TraceParent {
    /// Parses a `traceparent` value as the spec's processing model says: a
    /// version this code does not know is read by its first four fields
    /// when it is longer; all-zero ids, `ff` versions and upper-case hex
    /// are invalid (and the caller starts a new trace).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim_matches([' ', '\t']);
        let mut parts = value.splitn(5, '-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        if version.len() != 2 || !is_hex(version) || version == "ff" {
            return None;
        }
        // Version 00 has exactly four fields; later versions may add some.
        if version == "00" && rest.is_some() {
            return None;
        }
        if flags.len() != 2 || !is_hex(flags) {
            return None;
        }
        let trace_id: [u8; 16] = decode(trace_id)?;
        let span_id: [u8; 8] = decode(span_id)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace's root position (sampled), with random ids.
    pub fn new_root() -> TraceParent {
        TraceParent {
            trace_id: random_nonzero(),
            span_id: random_nonzero(),
            sampled: true,
        }
    }

    /// `00-<trace>-<span>-<flags>`.
    pub fn header(&self) -> String {
        let bytes = self.header_bytes();
        // Only hex digits and dashes: always UTF-8.
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// [`TraceParent::header`] on the stack: every invocation hands its
    /// guest one, so it is made without formatting.
    pub fn header_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [b'-'; HEADER_LEN];
        out[..2].copy_from_slice(b"00");
        // Lower case, as the spec requires.
        let hex = |bytes: &[u8], into: &mut [u8]| {
            for (byte, pair) in bytes.iter().zip(into.chunks_exact_mut(2)) {
                pair[0] = HEX[usize::from(byte >> 4)];
                pair[1] = HEX[usize::from(byte & 0xf)];
            }
        };
        hex(&self.trace_id, &mut out[3..35]);
        hex(&self.span_id, &mut out[36..52]);
        hex(&[u8::from(self.sampled)], &mut out[53..55]);
        out
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.header())
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !is_hex(s) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let mut bytes = [0u8; N];
        fastrand::fill(&mut bytes);
        if bytes != [0; N] {
            return bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_specs_example_round_trips() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(v).unwrap();
        assert!(parent.sampled);
        assert_eq!(parent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.header(), v);
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version is read by its first four fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(TraceParent::parse(future).is_some());
    }

    #[test]
    fn new_roots_are_sampled_and_distinct() {
        let (a, b) = (TraceParent::new_root(), TraceParent::new_root());
        assert!(a.sampled);
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(TraceParent::parse(&a.header()), Some(a));
    }
}
