//! The manifest parser (`updraft.toml`, and the `manifest` part of a
//! deploy): any text parses or is refused without a panic, and a manifest
//! that validates still does, with the same limits, after a trip through
//! TOML (what the registry stores is what was checked).
#![no_main]

use libfuzzer_sys::fuzz_target;
use updraft_core::Manifest;
use updraft_core::manifest::{MEMORY_MB_MAX, TIMEOUT_MS_MAX};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::from_toml(text) else {
        return;
    };
    let Ok(limits) = manifest.validate() else {
        return;
    };
    assert!(
        (1..=MEMORY_MB_MAX).contains(&limits.memory_mb),
        "{limits:?}"
    );
    assert!(limits.timeout_ms <= TIMEOUT_MS_MAX, "{limits:?}");
    // A valid manifest's route is one the router takes, new or stored.
    let route = manifest.parsed_route().expect("a validated route parses");
    assert_eq!(route, manifest.stored_route().expect("and as stored"));
    manifest
        .parsed_triggers()
        .expect("validated triggers parse");

    let again = toml::to_string(&manifest).expect("a manifest serializes");
    let reparsed = Manifest::from_toml(&again)
        .unwrap_or_else(|e| panic!("{again:?} does not parse again: {e}"));
    assert_eq!(reparsed, manifest, "{again}");
    assert_eq!(reparsed.validate().ok(), Some(limits));
});
