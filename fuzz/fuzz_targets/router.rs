//! What the `/v1` router and the function router read from a request
//! before any handler runs: the route a deploy asks for (strict for a new
//! deploy, shape-only for a stored version), which requests it serves, and
//! the tenant and function names of `/v1/functions/{name}` and `/~tenant/…`
//! paths. The input is `ROUTE\nPATH\nNAME`.
//!
//! Properties: an accepted route starts with `/`, is at most
//! `ROUTE_BYTES_MAX` bytes of RFC 3986 path characters and well-formed
//! `%XX` escapes (no control characters, spaces, escaped separators or
//! NUL), has no dot segments and no `...` but as the wildcard, is not the
//! API's, prints back to itself, and serves its own path; a path it serves
//! lies below it; valid names make function keys that split back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use updraft_core::manifest::{ROUTE_BYTES_MAX, validate_name};
use updraft_core::{Route, function_key, split_function_key, validate_tenant};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let route = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let name = lines.next().unwrap_or_default();

    let stored = Route::parse_stored(route);
    if let Ok(parsed) = Route::parse(route) {
        assert_eq!(stored.as_ref().ok(), Some(&parsed), "{route:?}");
        check_new_route(route, &parsed);
    }
    if let Ok(stored) = stored {
        let p = stored.path();
        assert!(p.starts_with('/'), "{route:?} -> {stored:?}");
        assert!(
            !p.starts_with("/v1/") && p != "/v1",
            "{route:?} takes the API's path"
        );
        assert!(!p.starts_with("/~"), "{route:?} takes a tenant's space");
        assert!(stored.matches(p), "{stored:?} does not serve its own path");
        if stored.matches(path) {
            match &stored {
                Route::Prefix(prefix) if prefix == "/" => {}
                Route::Prefix(prefix) | Route::Exact(prefix) => {
                    assert!(
                        path.starts_with(prefix.as_str()),
                        "{stored:?} serves {path:?}"
                    )
                }
            }
        }
    }

    if validate_name(name).is_ok() {
        assert!(
            name.len() <= 63 && !name.contains(['/', '.', '%', '~']),
            "{name:?}"
        );
        assert!(validate_tenant(name).is_ok());
        let key = function_key(name, name);
        assert_eq!(split_function_key(&key), (name, name));
    }
});

fn check_new_route(route: &str, parsed: &Route) {
    assert!(
        route.starts_with('/') && route.len() <= ROUTE_BYTES_MAX,
        "{route:?}"
    );
    assert!(
        !route
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\' || !b.is_ascii()),
        "{route:?} has a byte clients rewrite"
    );
    let bytes = route.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let escape = &bytes[i + 1..i + 3];
            assert!(escape.iter().all(u8::is_ascii_hexdigit), "{route:?}");
            let escape = std::str::from_utf8(escape).unwrap().to_ascii_lowercase();
            assert!(!["2f", "5c", "00"].contains(&escape.as_str()), "{route:?}");
        }
    }
    for segment in parsed.path().split('/') {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        assert!(
            decoded != "." && decoded != "..",
            "{route:?} has a dot segment"
        );
    }
    assert!(
        !parsed.path().contains("..."),
        "{route:?}: \"...\" is only allowed as the final wildcard, yet the path is {:?}",
        parsed.path()
    );
    // What `updraft info` shows is a route that deploys to the same thing.
    let shown = parsed.to_string();
    assert_eq!(
        Route::parse(&shown).as_ref().ok(),
        Some(parsed),
        "{route:?} shown as {shown:?}"
    );
}
