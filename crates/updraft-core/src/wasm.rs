//! The checks a deployed Wasm binary passes before it is compiled: that it
//! is Wasm at all, and what its interface says (read with wasmparser,
//! milliseconds, where compiling a big component takes seconds), so a wrong
//! upload is refused first. The sandbox runs [`check`] before it hands the
//! bytes to Cranelift; the fuzz target `deploy_wasm` runs it on anything.

/// Updraft's own handler export (`updraft:platform/handler`), whose type
/// the sandbox checks once the component is compiled.
pub const HANDLER_EXPORT: &str = "updraft:platform/handler@0.1";

/// The exports that make a component runnable: a world Updraft runs
/// (`wasi:http` or `wasi:cli/run`), or its handler.
const RUNNABLE_EXPORTS: [&str; 5] = [
    "wasi:http/incoming-handler@0.2",
    "wasi:http/handler@0.3",
    "wasi:cli/run@0.2",
    "wasi:cli/run@0.3",
    HANDLER_EXPORT,
];

/// Why a binary is refused before compiling; the sandbox words each one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WasmError {
    /// It does not start with a Wasm module's or component's header.
    #[error("not a WebAssembly binary")]
    NotWasm,
    /// wasmparser could not read it: the reason.
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// A component that exports no world Updraft runs.
    #[error("no runnable export")]
    UnknownWorld,
    /// A core module without `_start`.
    #[error("no _start export")]
    NoStart,
}

/// What a binary is, read without compiling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// A component (`false`: a core module, a WASI command).
    pub component: bool,
    /// It imports or exports a WASI 0.3 interface: it is compiled by, and
    /// run on, the WASI 0.3 engine. Always `false` for a core module.
    pub p3: bool,
}

/// Only checks that the bytes are Wasm of a shape Updraft runs; cheap.
pub fn check_bytes(wasm: &[u8]) -> Result<(), WasmError> {
    if wasmparser::Parser::is_component(wasm) || wasmparser::Parser::is_core_wasm(wasm) {
        Ok(())
    } else {
        Err(WasmError::NotWasm)
    }
}

/// Everything checked before compiling: Wasm at all, a component that
/// exports a runnable world (its own exports, not those of the components
/// nested in it), or a core module that exports `_start`.
pub fn check(wasm: &[u8]) -> Result<Shape, WasmError> {
    check_bytes(wasm)?;
    if wasmparser::Parser::is_component(wasm) {
        let (p3, runnable) = component_shape(wasm)?;
        if !runnable {
            return Err(WasmError::UnknownWorld);
        }
        Ok(Shape {
            component: true,
            p3,
        })
    } else {
        check_start(wasm)?;
        Ok(Shape {
            component: false,
            p3: false,
        })
    }
}

/// A component's (WASI 0.3, runnable), from its imports and exports.
fn component_shape(wasm: &[u8]) -> Result<(bool, bool), WasmError> {
    let (mut p3, mut runnable) = (false, false);
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| WasmError::Invalid(e.to_string()))?;
        let names: Vec<&str> = match payload {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => {
                depth += 1;
                continue;
            }
            wasmparser::Payload::End(_) => {
                depth = depth.saturating_sub(1);
                continue;
            }
            wasmparser::Payload::ComponentImportSection(imports) => {
                imports.into_iter().flatten().map(|i| i.name.name).collect()
            }
            wasmparser::Payload::ComponentExportSection(exports) => {
                let names: Vec<&str> = exports.into_iter().flatten().map(|e| e.name.name).collect();
                if depth == 0 {
                    runnable |= names
                        .iter()
                        .any(|name| RUNNABLE_EXPORTS.iter().any(|world| name.starts_with(world)));
                }
                names
            }
            _ => continue,
        };
        p3 |= names
            .iter()
            .any(|name| name.starts_with("wasi:") && name.contains("@0.3"));
    }
    Ok((p3, runnable))
}

/// Checks that a core module is a command: it exports `_start`.
fn check_start(wasm: &[u8]) -> Result<(), WasmError> {
    let mut has_start = false;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(wasmparser::Payload::ExportSection(exports)) => {
                for export in exports.into_iter().flatten() {
                    has_start |= export.name == "_start";
                }
            }
            Ok(_) => {}
            Err(e) => return Err(WasmError::Invalid(e.to_string())),
        }
    }
    match has_start {
        true => Ok(()),
        false => Err(WasmError::NoStart),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest command: a core module whose only export is `_start`.
    const COMMAND: &[u8] = &[
        0, b'a', b's', b'm', 1, 0, 0, 0, // header
        1, 4, 1, 0x60, 0, 0, // type section: () -> ()
        3, 2, 1, 0, // function section: one function of type 0
        7, 10, 1, 6, b'_', b's', b't', b'a', b'r', b't', 0, 0, // export "_start"
        10, 4, 1, 2, 0, 0x0b, // code: an empty body
    ];

    #[test]
    fn a_command_passes_and_other_bytes_are_named() {
        assert_eq!(
            check(COMMAND),
            Ok(Shape {
                component: false,
                p3: false
            })
        );
        assert_eq!(check(b"hello"), Err(WasmError::NotWasm));
        assert_eq!(check(&COMMAND[..8]), Err(WasmError::NoStart));
        assert!(matches!(
            check(&COMMAND[..COMMAND.len() - 1]),
            Err(WasmError::Invalid(_))
        ));
        // A component with no exports at all runs nothing.
        assert_eq!(
            check(&[0, b'a', b's', b'm', 0x0d, 0, 1, 0]),
            Err(WasmError::UnknownWorld)
        );
    }
}
