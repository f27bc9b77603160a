//! `kubelisten new`: scaffolds a buildable listener folder in Rust, Python, JavaScript, C or Go.
//!
//! `<dir>/<NAME>/` gets the WIT world (a copy of the repository's `wit/listener.wit`, so the
//! folder is self-contained), a sample handler (log every event; on create/update record the
//! language in `status.handledBy` through `cluster.patch-status`), `build.sh` (builds
//! `<NAME>.wasm` in the folder, based on the build of `guests/<lang>-listener`), sample watch
//! events (`events.jsonl`) and what deploying needs (`crd.yaml`, `widget.yaml`,
//! `listeners.yaml`, `rbac.yaml`). The guides are `docs/guides/<lang>.md`.
//!
//! The templates are the files under `host/src/scaffold/`, with `{{key}}` placeholders.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

/// The language of a new listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust: cargo, wit-bindgen 0.63, target wasm32-wasip2.
    Rust,
    /// Python: componentize-py (PyPI).
    Python,
    /// JavaScript: ComponentizeJS (npm).
    Js,
    /// C: wit-bindgen's C generator, clang/wasi-libc, the preview1 adapter.
    C,
    /// Go: the Go toolchain (wasip1), wit-bindgen's Go generator, the preview1 adapter.
    Go,
}

impl Lang {
    /// Every language, in guide order.
    pub const ALL: [Lang; 5] = [Lang::Rust, Lang::Python, Lang::Js, Lang::C, Lang::Go];

    /// The `--lang` value (`rust`, `python`, `js`, `c`, `go`).
    pub fn id(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
            Lang::Go => "go",
        }
    }

    fn language(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
            Lang::Go => "Go",
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// Arguments of `kubelisten new`.
#[derive(Debug, Clone, clap::Args)]
pub struct NewArgs {
    /// The listener's language.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// The listener's name: the folder `<dir>/<NAME>` and the component `<NAME>.wasm`
    /// (lowercase letters, digits, `-` and `_`, starting with a letter).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The directory in which to create the folder.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

/// `kubelisten new`: scaffolds the folder and prints what to do next.
///
/// # Errors
/// See [`new_listener`].
pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    let folder = new_listener(args.lang, &args.name, &args.dir)?;
    let shown = args.dir.join(&args.name);
    let shown = shown
        .strip_prefix(".")
        .unwrap_or(&shown)
        .display()
        .to_string();
    println!(
        "created {} ({} listener {}); next:",
        folder.display(),
        args.lang.language(),
        args.name
    );
    println!("  {shown}/build.sh");
    println!("  kubelisten check {shown}/{}.wasm", args.name);
    println!(
        "  kubelisten replay --listener {shown}/{}.wasm {shown}/events.jsonl",
        args.name
    );
    println!("guide: docs/guides/{}.md", args.lang.id());
    Ok(ExitCode::SUCCESS)
}

/// The WIT world every listener implements (copied into each new folder).
const WIT: &str = include_str!("../../wit/listener.wit");

const EVENTS: &str = include_str!("scaffold/common/events.jsonl.tmpl");
const CRD: &str = include_str!("scaffold/common/crd.yaml.tmpl");
const WIDGET: &str = include_str!("scaffold/common/widget.yaml.tmpl");
const LISTENERS: &str = include_str!("scaffold/common/listeners.yaml.tmpl");
const RBAC: &str = include_str!("scaffold/common/rbac.yaml.tmpl");
const README: &str = include_str!("scaffold/common/README.md.tmpl");

/// (path in the folder, template, executable) of a language's own files.
fn lang_files(lang: Lang) -> &'static [(&'static str, &'static str, bool)] {
    match lang {
        Lang::Rust => &[
            (
                "Cargo.toml",
                include_str!("scaffold/rust/Cargo.toml.tmpl"),
                false,
            ),
            (
                "src/lib.rs",
                include_str!("scaffold/rust/lib.rs.tmpl"),
                false,
            ),
            (
                "build.sh",
                include_str!("scaffold/rust/build.sh.tmpl"),
                true,
            ),
        ],
        Lang::Python => &[
            ("app.py", include_str!("scaffold/python/app.py.tmpl"), false),
            (
                "build.sh",
                include_str!("scaffold/python/build.sh.tmpl"),
                true,
            ),
        ],
        Lang::Js => &[
            (
                "listener.js",
                include_str!("scaffold/js/listener.js.tmpl"),
                false,
            ),
            ("build.sh", include_str!("scaffold/js/build.sh.tmpl"), true),
        ],
        Lang::C => &[
            (
                "listener.c",
                include_str!("scaffold/c/listener.c.tmpl"),
                false,
            ),
            ("build.sh", include_str!("scaffold/c/build.sh.tmpl"), true),
        ],
        Lang::Go => &[
            ("go.mod", include_str!("scaffold/go/go.mod.tmpl"), false),
            (
                "export_wit_world/listener.go",
                include_str!("scaffold/go/listener.go.tmpl"),
                false,
            ),
            ("build.sh", include_str!("scaffold/go/build.sh.tmpl"), true),
        ],
    }
}

/// The README's table rows for the language's own source files.
fn source_rows(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "| `Cargo.toml`, `src/lib.rs` | the listener (a cargo project of its own) |\n",
        Lang::Python => "| `app.py` | the listener |\n",
        Lang::Js => "| `listener.js` | the listener |\n",
        Lang::C => "| `listener.c` | the listener (bindings are generated into `build/bindings/`) |\n",
        Lang::Go => {
            "| `go.mod`, `export_wit_world/listener.go` | the listener (bindings are generated into `build/src/`) |\n"
        }
    }
}

/// The `module:` of `listeners.yaml` and the comment explaining it.
fn module_ref(lang: Lang, name: &str) -> (String, &'static str) {
    match lang {
        // Small components: binaryData keys of the ConfigMap.
        Lang::Rust | Lang::C => (
            format!("{name}.wasm"),
            "The module is the ConfigMap's binaryData key.",
        ),
        Lang::Go => (
            format!("{name}.wasm.gz"),
            "The module is the ConfigMap's binaryData key, gzip-compressed\n# (a ConfigMap holds at most 1 MiB).",
        ),
        // 12-20 MB: far over the 1 MiB a ConfigMap can hold, even compressed.
        Lang::Python | Lang::Js => (
            format!("/modules/{name}.wasm"),
            "The module is too large for a ConfigMap (at most 1 MiB),\n# so it is a file in the kubelisten image (an absolute path; see the guide).",
        ),
    }
}

/// Checks a listener name: lowercase letters, digits, `-` and `_`, starting with a letter and
/// ending with a letter or digit, at most 63 characters (it names a folder, a cargo package, a
/// listener and RBAC objects, so it must also pass [`crate::runtime::check_listener_name`]).
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_rest =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let ok_last = name
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    anyhow::ensure!(
        ok_first && ok_rest && ok_last && name.len() <= 63,
        "invalid listener name {name:?}: use lowercase letters, digits, '-' and '_', starting with a letter and ending with a letter or digit (at most 63 characters)"
    );
    crate::runtime::check_listener_name(name).map_err(anyhow::Error::msg)
}

/// The absolute path of the kubelisten repository this binary was built from.
fn repo_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `text` escaped for the inside of a double-quoted bash string.
fn bash_double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut text = template.to_string();
    for (key, value) in vars {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    debug_assert_eq!(
        placeholder(&text),
        None,
        "unfilled placeholder in a template"
    );
    text
}

/// The first `{{key}}` placeholder (lowercase letters and `_`) left in `text`.
fn placeholder(text: &str) -> Option<&str> {
    text.match_indices("{{").find_map(|(at, _)| {
        let rest = &text[at + 2..];
        let end = rest.find("}}")?;
        let key = &rest[..end];
        (!key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .then(|| &text[at..at + end + 4])
    })
}

/// Creates the listener folder `<dir>/<name>/` for `lang`; returns its path.
///
/// # Errors
/// An invalid name, an existing `<dir>/<name>`, or a write failure.
pub fn new_listener(lang: Lang, name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let folder = dir.join(name);
    anyhow::ensure!(
        !folder.exists(),
        "{} already exists: choose another name or --dir",
        folder.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Fails if someone else created it meanwhile: never write into an existing folder.
    std::fs::create_dir(&folder).with_context(|| format!("creating {}", folder.display()))?;

    let crate_name = name.replace('-', "_");
    let repo = bash_double_quoted(&repo_dir().to_string_lossy());
    let (module, module_note) = module_ref(lang, name);
    let vars: [(&str, &str); 9] = [
        ("name", name),
        ("crate", &crate_name),
        ("repo", &repo),
        ("lang", lang.id()),
        ("language", lang.language()),
        ("module", &module),
        ("module_note", module_note),
        ("files", source_rows(lang)),
        ("guide", lang.id()),
    ];

    let common: [(&str, &str, bool); 7] = [
        ("wit/listener.wit", WIT, false),
        ("events.jsonl", EVENTS, false),
        ("crd.yaml", CRD, false),
        ("widget.yaml", WIDGET, false),
        ("listeners.yaml", LISTENERS, false),
        ("rbac.yaml", RBAC, false),
        ("README.md", README, false),
    ];
    for (path, template, executable) in common.iter().chain(lang_files(lang)) {
        let target = folder.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // The WIT file is copied verbatim (it has no placeholders, but stays byte-identical).
        let text = if *path == "wit/listener.wit" {
            template.to_string()
        } else {
            render(template, &vars)
        };
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
        if *executable {
            set_executable(&target)?;
        }
    }
    Ok(folder)
}

#[cfg(unix)]
fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["my-listener", "a", "x_1-y"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "My",
            "1abc",
            "-a",
            "a-",
            "a_",
            "a b",
            "a/b",
            "..",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_language_renders_all_placeholders() {
        let tmp = std::env::temp_dir().join(format!("kubelisten-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        for lang in Lang::ALL {
            let folder = new_listener(lang, &format!("t-{lang}"), &tmp).unwrap();
            assert_eq!(
                std::fs::read_to_string(folder.join("wit/listener.wit")).unwrap(),
                WIT
            );
            for entry in walk(&folder) {
                let text = std::fs::read_to_string(&entry).unwrap();
                assert_eq!(placeholder(&text), None, "in {}", entry.display());
            }
            let build = std::fs::read_to_string(folder.join("build.sh")).unwrap();
            if matches!(lang, Lang::C | Lang::Go) {
                assert!(build.contains(&*repo_dir().to_string_lossy()), "{build}");
            }
            crate::hotswap::source::parse(
                &std::fs::read_to_string(folder.join("listeners.yaml")).unwrap(),
            )
            .unwrap();
            // A second scaffold into the same folder is refused.
            assert!(new_listener(lang, &format!("t-{lang}"), &tmp).is_err());
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
