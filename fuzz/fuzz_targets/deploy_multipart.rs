//! The deploy path of `PUT /v1/functions/{name}` up to the compile: the
//! multipart body read as the gateway reads it (axum's `Multipart` is
//! multer; `manifest`, `wasm` and `files` parts, anything else refused),
//! the manifest parsed and validated, the files bundle (a tar archive)
//! checked, the Wasm checked as the sandbox does before compiling. The
//! input is the body; the boundary is `updraft`.
//!
//! Properties: no panic on any body; a bundle that passes has only
//! relative paths without dot segments, and its entries read back; a
//! deploy that passes every check has a valid name and Wasm.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use updraft_core::files::{check_bundle, check_entry_path};
use updraft_core::{Manifest, wasm};

/// Bounded like the gateway's body (`DEPLOY_BYTES_MAX`), at fuzzing scale.
const FIELD_BYTES_MAX: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let Some(parts) = futures::executor::block_on(read_multipart(body)) else {
        return;
    };
    let (manifest, wasm_bytes, files) = parts;
    if let Some(files) = &files {
        check_files(files);
    }
    let mut manifest = manifest.unwrap_or_default();
    if manifest.name.is_empty() {
        manifest.name = "fuzzed".into();
    }
    let Ok(_limits) = manifest.validate() else {
        return;
    };
    let wasm_bytes = wasm_bytes.unwrap_or_default();
    if let Ok(shape) = wasm::check(&wasm_bytes) {
        assert!(updraft_core::manifest::validate_name(&manifest.name).is_ok());
        assert_eq!(
            shape.component,
            wasmparser::Parser::is_component(&wasm_bytes)
        );
    }
});

/// The gateway's `read_multipart`, on a body in memory: `None` where it
/// answers 400.
async fn read_multipart(body: Bytes) -> Option<(Option<Manifest>, Option<Bytes>, Option<Bytes>)> {
    let boundary = multer::parse_boundary("multipart/form-data; boundary=updraft").ok()?;
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().per_field(FIELD_BYTES_MAX));
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let (mut manifest, mut wasm, mut files) = (None, None, None);
    while let Some(field) = multipart.next_field().await.ok()? {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.ok()?;
        match name.as_str() {
            "manifest" => {
                let text = std::str::from_utf8(&bytes).ok()?;
                manifest = Some(Manifest::from_toml(text).ok()?);
            }
            "wasm" => wasm = Some(bytes),
            "files" => files = Some(bytes),
            _ => return None,
        }
    }
    Some((manifest, wasm, files))
}

fn check_files(bundle: &[u8]) {
    let Ok(info) = check_bundle(bundle) else {
        return;
    };
    let mut archive = tar::Archive::new(bundle);
    let mut files = 0;
    for entry in archive
        .entries()
        .expect("a checked bundle is a tar archive")
    {
        let entry = entry.expect("a checked bundle's entries read");
        let path = entry
            .path()
            .expect("and have paths")
            .to_string_lossy()
            .into_owned();
        assert!(check_entry_path(&path).is_ok(), "{path:?}");
        assert!(
            !path.starts_with('/') && !path.split('/').any(|s| s == ".."),
            "{path:?}"
        );
        if entry.header().entry_type() == tar::EntryType::Regular {
            files += 1;
            assert!(
                updraft_core::files::read_entry(bundle, &path).is_some(),
                "{path:?} does not read back"
            );
        }
    }
    assert_eq!(files, info.files);
}
