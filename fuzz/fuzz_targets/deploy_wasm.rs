//! The checks a deployed binary passes before it is compiled
//! (`updraft_core::wasm::check`, which the sandbox runs before Cranelift):
//! any bytes are refused or described without a panic, and the
//! description agrees with wasmparser's own reading: what is accepted is
//! Wasm, a component exactly when wasmparser says so, a core module only
//! with a `_start` export, and a refused header is refused first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use updraft_core::wasm::{self, WasmError};

fuzz_target!(|data: &[u8]| {
    let header = wasm::check_bytes(data);
    match wasm::check(data) {
        Ok(shape) => {
            assert!(header.is_ok());
            assert_eq!(shape.component, wasmparser::Parser::is_component(data));
            if !shape.component {
                assert!(!shape.p3, "a core module on the WASI 0.3 engine");
                assert!(exports_start(data), "a core module without _start passed");
            }
        }
        Err(WasmError::NotWasm) => assert!(header.is_err()),
        Err(_) => assert!(header.is_ok(), "a bad header was not refused first"),
    }
});

fn exports_start(data: &[u8]) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(data)
        .any(|payload| match payload {
            Ok(wasmparser::Payload::ExportSection(exports)) => {
                exports.into_iter().flatten().any(|e| e.name == "_start")
            }
            _ => false,
        })
}
