//! `kubelisten-componentize`: the component tooling the C and Go guests need, as one small binary.
//!
//! ```text
//! kubelisten-componentize bindgen c  WIT_DIR WORLD OUT_DIR   # wit-bindgen's C generator
//! kubelisten-componentize bindgen go WIT_DIR WORLD OUT_DIR   # wit-bindgen's Go generator
//! kubelisten-componentize new CORE.wasm OUT.wasm [--wit WIT_DIR WORLD]
//!     # embed the world's type information (when --wit is given) and make a component,
//!     # adapting wasi_snapshot_preview1 imports with the preview1 *reactor* adapter
//! ```
//!
//! It replaces `wit-bindgen-cli` + `wasm-tools` (each a 7-9 minute `cargo install` on two cores)
//! by the library crates they are built from.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use wit_bindgen_core::{Files, WorldGenerator};
use wit_parser::{Resolve, WorldId};

fn load_world(wit: &Path, world: &str) -> Result<(Resolve, WorldId)> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_path(wit)
        .with_context(|| format!("parsing WIT at {}", wit.display()))?;
    let id = resolve.select_world(&[pkg], Some(world))?;
    Ok((resolve, id))
}

fn bindgen(lang: &str, wit: &Path, world: &str, out: &Path) -> Result<()> {
    let (mut resolve, id) = load_world(wit, world)?;
    let mut generator: Box<dyn WorldGenerator> = match lang {
        "c" => wit_bindgen_c::Opts::default().build(),
        "go" => {
            let opts = wit_bindgen_go::Opts {
                // gofmt may be missing; the Go build does not need formatted sources.
                format: wit_bindgen_go::Format::False,
                ..Default::default()
            };
            opts.build()
        }
        other => bail!("unknown language {other} (expected c or go)"),
    };
    let mut files = Files::default();
    generator.generate(&mut resolve, id, &mut files)?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn new_component(core: &Path, out: &Path, wit: Option<(PathBuf, String)>) -> Result<()> {
    let mut module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    if let Some((wit, world)) = wit {
        let (resolve, id) = load_world(&wit, &world)?;
        wit_component::embed_component_metadata(
            &mut module,
            &resolve,
            id,
            wit_component::StringEncoding::UTF8,
            false,
        )?;
    }
    let component = wit_component::ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()
        .context("encoding the component")?;
    std::fs::write(out, &component).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["bindgen", lang, wit, world, out] => bindgen(lang, Path::new(wit), world, Path::new(out)),
        ["new", core, out] => new_component(Path::new(core), Path::new(out), None),
        ["new", core, out, "--wit", wit, world] => new_component(
            Path::new(core),
            Path::new(out),
            Some((PathBuf::from(wit), world.to_string())),
        ),
        ["--version"] => {
            println!("kubelisten-componentize {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => bail!(
            "usage:\n  kubelisten-componentize bindgen c|go WIT_DIR WORLD OUT_DIR\n  \
             kubelisten-componentize new CORE.wasm OUT.wasm [--wit WIT_DIR WORLD]"
        ),
    }
}
