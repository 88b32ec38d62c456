//! `extract-wit`: recovers the WIT a component (or a core module with
//! bindings metadata) was built against, with the
//! wit-component decoder and printer (what `wasm-tools component wit
//! --out-dir` does), so example WIT can be taken from the tool that consumes
//! it — e.g. componentize-js's StarlingMonkey engine exports
//! `wasi:http/incoming-handler@0.2.10`, and a JS guest's world must match.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use wit_component::{DecodedWasm, WitPrinter};

/// Writes every package the component's world uses, except the world's own
/// package, to `out_dir/deps/<name>.wit`, and prints the world's own package
/// on stdout.
pub fn extract(component: &Path, out_dir: &Path) -> Result<()> {
    let bytes =
        fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    // A component carries its WIT in its types; a core module built by a
    // bindings generator (like the StarlingMonkey engine) in its
    // `component-type*` custom sections.
    let is_core_module = bytes.get(4..8) == Some(&[1, 0, 0, 0][..]);
    let (resolve, world) = if is_core_module {
        let (_, bindgen) = wit_component::metadata::decode(&bytes)
            .with_context(|| format!("cannot read the WIT metadata of {}", component.display()))?;
        (bindgen.resolve, bindgen.world)
    } else {
        match wit_component::decode(&bytes)
            .with_context(|| format!("{} is not a component", component.display()))?
        {
            DecodedWasm::Component(resolve, world) => (resolve, world),
            DecodedWasm::WitPackage(..) => {
                bail!("{} is a WIT package, not a component", component.display())
            }
        }
    };
    let root = resolve.worlds[world]
        .package
        .context("the component's world has no package")?;

    // File names: the package name (`http.wit`), or namespace and version
    // when two packages would share it.
    let mut name_counts: HashMap<&str, usize> = HashMap::new();
    for (id, package) in resolve.packages.iter() {
        if id != root {
            *name_counts.entry(package.name.name.as_str()).or_default() += 1;
        }
    }

    let deps = out_dir.join("deps");
    fs::create_dir_all(&deps).with_context(|| format!("cannot create {}", deps.display()))?;
    for (id, package) in resolve.packages.iter() {
        if id == root {
            continue;
        }
        let file_name = if name_counts.get(package.name.name.as_str()) == Some(&1) {
            format!("{}.wit", package.name.name)
        } else {
            let version = package
                .name
                .version
                .as_ref()
                .map(|v| format!("-{v}"))
                .unwrap_or_default();
            format!(
                "{}-{}{version}.wit",
                package.name.namespace, package.name.name
            )
        };
        let mut printer = WitPrinter::default();
        printer.print(&resolve, id, &[])?;
        let path = deps.join(&file_name);
        fs::write(&path, printer.output.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {} ({})", path.display(), package.name);
    }

    let mut printer = WitPrinter::default();
    printer.print(&resolve, root, &[])?;
    println!("\n// the component's own world:\n{}", printer.output);
    Ok(())
}
