//! The modules ConfigMap: `listeners.yaml` (the listener set) plus the modules as `binaryData`
//! (`NAME.wasm`, `NAME.wasm.gz`, `NAME.wasm.zst`) or file paths (modules shipped in a volume).
//!
//! `listeners.yaml` is either the `kubelisten run --config` format (watches with their
//! listeners; module paths are binaryData keys) — then the ConfigMap alone configures kubelisten —
//! or just the listener set, for watches given by `--config`/`--crd`:
//!
//! ```yaml
//! listeners:
//!   - name: superpod          # unique
//!     watch: superpods        # the watch it belongs to (optional when there is one watch)
//!     module: superpod.wasm   # a binaryData key of the ConfigMap, or an absolute file path
//!     mode: classname         # or reference
//!     limits: {call-timeout: 500}
//!     capabilities: {grants: [...], rateLimit: {qps: 10, burst: 20}}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::capabilities::policy::Capabilities;
use crate::runtime::{Limits, Mode};

/// Largest module a compressed entry may expand to (a decompression bomb is rejected).
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// Why (part of) an update was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The ConfigMap has no `listeners.yaml` key.
    #[error("the ConfigMap has no listeners.yaml data key")]
    MissingListeners,
    /// `listeners.yaml` is not valid.
    #[error("listeners.yaml: {0}")]
    BadListeners(String),
    /// A `listeners.yaml` in the `--config` format changes the watches kubelisten started from.
    #[error(
        "listeners.yaml changes the watches ({0}), which kubelisten reads only at start: restart \
         it to apply them. Nothing of this update was applied"
    )]
    WatchesChanged(String),
    /// The listener set leaves these watches with no listener.
    #[error(
        "listeners.yaml gives {} no listener: every watch needs at least one, as in a --config \
         file (to stop watching, remove the watch from --config and restart). Nothing of this \
         update was applied",
        describe_watches(.0)
    )]
    WatchesWithoutListeners(Vec<String>),
    /// A module could not be found or decoded.
    #[error("listener {listener}: module {module}: {problem}")]
    BadModule {
        /// The listener.
        listener: String,
        /// The module reference.
        module: String,
        /// What is wrong.
        problem: String,
    },
}

/// `watch "a"` or `watches "a", "b"`.
fn describe_watches(watches: &[String]) -> String {
    let quoted: Vec<String> = watches.iter().map(|w| format!("{w:?}")).collect();
    match quoted.as_slice() {
        [one] => format!("watch {one}"),
        _ => format!("watches {}", quoted.join(", ")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listeners: Vec<Entry>,
}

/// One listener of the set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Unique name.
    pub name: String,
    /// The watch it belongs to.
    #[serde(default)]
    pub watch: Option<String>,
    /// A `binaryData` key or an absolute file path.
    pub module: String,
    /// Instance lifetime.
    #[serde(default)]
    pub mode: Mode,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Kubernetes API access.
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// Whether `text` is in the `--config` format: a top-level `watches` key, in any YAML style
/// (block, flow, JSON, quoted key, after a byte-order mark). Text that is not YAML is looked at
/// line by line (a `watches:` line), so that its errors come from the format it was meant in.
pub fn is_config_format(text: &str) -> bool {
    #[derive(Deserialize)]
    struct TopLevel {
        #[serde(default)]
        watches: Option<serde::de::IgnoredAny>,
    }
    match serde_saphyr::from_str::<Option<TopLevel>>(text) {
        Ok(top) => top.is_some_and(|top| top.watches.is_some()),
        Err(_) => text
            .lines()
            .any(|l| l.trim_start_matches('\u{feff}').starts_with("watches:")),
    }
}

/// Parses a `listeners.yaml` in the `--config` format: the watches (targets) and listeners.
///
/// # Errors
/// [`Error::BadListeners`] with the position and problem, or naming both entries of a listener
/// name used twice (names are unique across all watches).
pub fn parse_config(text: &str) -> Result<crate::config::Config, Error> {
    let config = crate::config::parse(text, Path::new("listeners.yaml"))
        .map_err(|e| Error::BadListeners(e.to_string()))?;
    unique_names(&entries_of(&config), |_, e| {
        format!(
            "the one in watch {:?} (module {})",
            e.watch.as_deref().unwrap_or_default(),
            e.module
        )
    })?;
    Ok(config)
}

/// The listeners of every watch of `config`, in order.
pub fn entries_of(config: &crate::config::Config) -> Vec<Entry> {
    config
        .watches
        .iter()
        .flat_map(|w| {
            w.listeners.iter().map(|l| Entry {
                name: l.name.clone(),
                watch: Some(w.name.clone()),
                module: l.path.to_string_lossy().into_owned(),
                mode: l.mode,
                limits: l.limits.clone(),
                capabilities: l.capabilities.clone(),
            })
        })
        .collect()
}

/// How the watches `listed` in a `listeners.yaml` differ from the `running` ones (names added,
/// removed, and changed in target, set of namespaces or selectors; listeners are not
/// compared), or `None` when they are the same.
pub fn watch_changes<'a>(
    running: &'a [crate::config::WatchConfig],
    listed: &'a [crate::config::WatchConfig],
) -> Option<String> {
    use crate::config::WatchConfig;
    let find = |watches: &'a [WatchConfig], name: &str| watches.iter().find(|w| w.name == name);
    // What a watch watches: namespaces are a set.
    let shape = |w: &'a WatchConfig| {
        let namespaces: BTreeSet<&String> = w.namespaces.iter().collect();
        (&w.target, namespaces, &w.label_selector, &w.field_selector)
    };
    let names = |of: &'a [WatchConfig], keep: &dyn Fn(&'a WatchConfig) -> bool| {
        of.iter()
            .filter(|w| keep(w))
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>()
    };
    let added = names(listed, &|w| find(running, &w.name).is_none());
    let removed = names(running, &|w| find(listed, &w.name).is_none());
    let changed = names(listed, &|w| {
        find(running, &w.name).is_some_and(|r| shape(r) != shape(w))
    });
    let parts: Vec<String> = [("added", added), ("removed", removed), ("changed", changed)]
        .into_iter()
        .filter(|(_, ws)| !ws.is_empty())
        .map(|(what, ws)| format!("{what}: {}", ws.join(", ")))
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Parses `listeners.yaml` (either format) into the listener set.
///
/// # Errors
/// [`Error::BadListeners`] with the position and problem, or naming both entries of a listener
/// name used twice.
pub fn parse(text: &str) -> Result<Vec<Entry>, Error> {
    if is_config_format(text) {
        return Ok(entries_of(&parse_config(text)?));
    }
    // Read like the config file: errors name the line, column and key path.
    let origin = Path::new("listeners.yaml");
    let doc = crate::config::yaml::Document::new(text, origin, 0);
    let file: File = doc
        .deserialize()
        .map_err(|problem| Error::BadListeners(problem.to_string()))?;
    let bad = |i: usize, keys: &[&str], message: String| {
        let at = keys.iter().fold(
            crate::config::yaml::KeyPath::root()
                .key("listeners")
                .index(i),
            |at, key| at.key(key),
        );
        Error::BadListeners(doc.problem(&at, message).to_string())
    };
    for (i, entry) in file.listeners.iter().enumerate() {
        if entry.name.trim().is_empty() {
            return Err(bad(i, &["name"], "must not be empty".into()));
        }
        crate::runtime::check_listener_name(&entry.name).map_err(|m| bad(i, &[], m))?;
        if let Some((key, problem)) = entry.limits.problem() {
            return Err(bad(i, &["limits", key], problem));
        }
        if let Some((key, problem)) = entry.capabilities.problem() {
            let at = crate::config::yaml::KeyPath::root()
                .key("listeners")
                .index(i)
                .key("capabilities")
                .join(&key);
            return Err(Error::BadListeners(doc.problem(&at, problem).to_string()));
        }
    }
    unique_names(&file.listeners, |i, e| match &e.watch {
        Some(watch) => format!("listeners[{i}] (watch {watch:?}, module {})", e.module),
        None => format!("listeners[{i}] (module {})", e.module),
    })?;
    Ok(file.listeners)
}

/// Refuses two entries of one name, naming both (`describe` says where an entry is): listener
/// names are unique across all watches, since capabilities, hot swap and metrics go by name.
fn unique_names(
    entries: &[Entry],
    describe: impl Fn(usize, &Entry) -> String,
) -> Result<(), Error> {
    let mut seen = std::collections::HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        if let Some(first) = seen.insert(entry.name.as_str(), i) {
            return Err(Error::BadListeners(format!(
                "listener name {:?} appears twice: {} and {}; listener names must be unique \
                 across all watches",
                entry.name,
                describe(first, &entries[first]),
                describe(i, entry)
            )));
        }
    }
    Ok(())
}

/// The module bytes of `entry`: from `binary` (the ConfigMap's binaryData) by key, decompressed
/// by suffix (`.gz`, `.zst`), or read from an absolute path.
///
/// # Errors
/// [`Error::BadModule`] naming the listener, the module and the problem.
pub fn module_bytes(entry: &Entry, binary: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, Error> {
    let fail = |problem: String| Error::BadModule {
        listener: entry.name.clone(),
        module: entry.module.clone(),
        problem,
    };
    let raw = if let Some(bytes) = binary.get(&entry.module) {
        bytes.clone()
    } else if Path::new(&entry.module).is_absolute() {
        read_module_file(Path::new(&entry.module)).map_err(fail)?
    } else {
        return Err(fail(
            "no such binaryData key (and not an absolute file path)".into(),
        ));
    };
    let bounded = |reader: &mut dyn Read, what: &str| -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        reader
            .take(MAX_MODULE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| fail(format!("{what}: {e}")))?;
        if out.len() as u64 > MAX_MODULE_BYTES {
            return Err(fail(format!(
                "{what}: decompresses to more than {} MiB",
                MAX_MODULE_BYTES >> 20
            )));
        }
        Ok(out)
    };
    // Every member / frame: concatenated ones (`gzip -c a >> f`, `cat a.zst b.zst`) are one valid
    // file of both formats, and the first alone would be a silently truncated module.
    if entry.module.ends_with(".gz") {
        bounded(&mut flate2::read::MultiGzDecoder::new(&raw[..]), "gzip")
    } else if entry.module.ends_with(".zst") {
        bounded(&mut ZstdFrames::new(&raw), "zstd")
    } else {
        Ok(raw)
    }
}

/// Reads every frame of a zstd stream in sequence, skipping skippable frames (ruzstd's
/// `StreamingDecoder` reads the first frame only). Decodes a block at a time, so a bounded read
/// holds no more than the bound plus one block and the frame's window.
struct ZstdFrames<'a> {
    /// The input not consumed yet.
    rest: &'a [u8],
    /// Decodes the current frame; reused for the next one.
    decoder: ruzstd::decoding::FrameDecoder,
    /// A frame is being decoded (its header was read).
    in_frame: bool,
    /// A frame header was read: an input without any frame is an error, not an empty module.
    any_frame: bool,
}

impl<'a> ZstdFrames<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self {
            rest: input,
            decoder: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
            any_frame: false,
        }
    }
}

impl Read for ZstdFrames<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                let decoder = &mut self.decoder;
                while decoder.can_collect() == 0 && !decoder.is_finished() {
                    decoder
                        .decode_blocks(
                            &mut self.rest,
                            ruzstd::decoding::BlockDecodingStrategy::UptoBlocks(1),
                        )
                        .map_err(std::io::Error::other)?;
                }
                let read = decoder.read(buf)?;
                if read > 0 {
                    return Ok(read);
                }
                // Finished and drained: on to the next frame.
                self.in_frame = false;
            }
            if self.rest.is_empty() {
                if !self.any_frame {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "no zstd frame",
                    ));
                }
                return Ok(0);
            }
            match self.decoder.init(&mut self.rest) {
                Ok(()) => {
                    self.in_frame = true;
                    self.any_frame = true;
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    self.rest = usize::try_from(length)
                        .ok()
                        .and_then(|length| self.rest.get(length..))
                        .ok_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "truncated skippable frame",
                            )
                        })?;
                }
                Err(err) => return Err(std::io::Error::other(err)),
            }
        }
    }
}

/// The content of the module file at `path`: a regular file of at most [`MAX_MODULE_BYTES`]
/// (not `/dev/zero`, a FIFO or a directory).
fn read_module_file(path: &Path) -> Result<Vec<u8>, String> {
    let cannot = |e: std::io::Error| format!("cannot read the file: {e}");
    let regular = |meta: &std::fs::Metadata| -> Result<(), String> {
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        if meta.len() > MAX_MODULE_BYTES {
            return Err(format!(
                "the file is larger than {} MiB",
                MAX_MODULE_BYTES >> 20
            ));
        }
        Ok(())
    };
    // Checked before opening (opening a FIFO would wait for a writer)...
    regular(&std::fs::metadata(path).map_err(cannot)?)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // ...and after: a FIFO put there in between does not block the open either.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(cannot)?;
    regular(&file.metadata().map_err(cannot)?)?;
    let mut out = Vec::new();
    file.take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(cannot)?;
    if out.len() as u64 > MAX_MODULE_BYTES {
        return Err(format!(
            "the file is larger than {} MiB",
            MAX_MODULE_BYTES >> 20
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn watch_changes_name_the_added_removed_and_changed_watches() {
        let config = |text: &str| parse_config(text).unwrap().watches;
        let running = config("watches:\n  - name: a\n    apiVersion: v1\n    kind: ConfigMap\n    listeners: [{name: x, module: x.wasm}]\n  - name: b\n    apiVersion: v1\n    kind: Secret\n    namespaces: [n]\n    listeners: [{name: y, module: y.wasm}]\n");
        // Other listeners, same watches: no change.
        let same = config("watches:\n  - name: b\n    apiVersion: v1\n    kind: Secret\n    namespaces: [n]\n    listeners: [{name: z, module: z.wasm}]\n  - name: a\n    apiVersion: v1\n    kind: ConfigMap\n    listeners: [{name: x, module: x2.wasm}]\n");
        assert_eq!(watch_changes(&running, &same), None);
        // The namespaces are a set: another order is no change.
        let mut reordered = running.clone();
        reordered[1].namespaces = vec!["n".into(), "m".into()];
        let mut running_two = running.clone();
        running_two[1].namespaces = vec!["m".into(), "n".into()];
        assert_eq!(watch_changes(&running_two, &reordered), None);
        let other = config("watches:\n  - name: b\n    apiVersion: v1\n    kind: Secret\n    namespaces: [n, m]\n    listeners: [{name: y, module: y.wasm}]\n  - name: c\n    apiVersion: v1\n    kind: Pod\n    listeners: [{name: x, module: x.wasm}]\n");
        assert_eq!(
            watch_changes(&running, &other).as_deref(),
            Some("added: c; removed: a; changed: b")
        );
        let selector = config("watches:\n  - name: a\n    apiVersion: v1\n    kind: ConfigMap\n    labelSelector: app=web\n    listeners: [{name: x, module: x.wasm}]\n  - name: b\n    apiVersion: v1\n    kind: Secret\n    namespaces: [n]\n    listeners: [{name: y, module: y.wasm}]\n");
        assert_eq!(
            watch_changes(&running, &selector).as_deref(),
            Some("changed: a")
        );
        assert!(Error::WatchesChanged("changed: a".into())
            .to_string()
            .contains("restart it to apply them"));
    }

    #[test]
    fn parses_and_rejects() {
        let entries = parse("listeners:\n  - name: a\n    module: a.wasm\n    mode: reference\n  - {name: b, watch: w, module: /x/b.wasm}\n").unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries[0].mode, entries[1].watch.as_deref()),
            (Mode::Reference, Some("w"))
        );
        assert!(
            matches!(parse("listeners:\n  - name: a\n    modul: a.wasm\n"), Err(Error::BadListeners(m)) if m.contains("modul"))
        );
        assert!(
            matches!(parse("listeners: [{name: a, module: x}, {name: a, module: y}]"), Err(Error::BadListeners(m)) if m.contains("twice"))
        );
        assert!(parse("listeners: {").is_err());
        let entries = parse("watches:\n  - name: w\n    apiVersion: v1\n    kind: ConfigMap\n    listeners:\n      - {name: a, module: a.wasm, mode: reference}\n").unwrap();
        assert_eq!(
            (
                entries[0].name.as_str(),
                entries[0].watch.as_deref(),
                entries[0].module.as_str()
            ),
            ("a", Some("w"), "a.wasm")
        );
        assert!(matches!(
            parse("watches:\n  - name: w\n    kind: X\n"),
            Err(Error::BadListeners(_))
        ));
    }

    #[test]
    fn the_config_format_is_told_by_its_watches_key_in_any_yaml_style() {
        for text in [
            // JSON (helm's toJson, jsonnet, cue), flow style, a quoted key, a byte-order mark.
            r#"{"watches":[{"name":"w","apiVersion":"v1","kind":"ConfigMap","listeners":[{"name":"a","module":"a.wasm"}]}]}"#,
            "{watches: [{name: w, apiVersion: v1, kind: ConfigMap, listeners: [{name: a, module: a.wasm}]}]}",
            "\"watches\":\n  - {name: w, apiVersion: v1, kind: ConfigMap, listeners: [{name: a, module: a.wasm}]}\n",
            "\u{feff}watches:\n  - {name: w, apiVersion: v1, kind: ConfigMap, listeners: [{name: a, module: a.wasm}]}\n",
        ] {
            assert!(is_config_format(text), "{text}");
            let entries = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (entries.len(), entries[0].watch.as_deref()),
                (1, Some("w")),
                "{text}"
            );
        }
        for text in [
            "listeners: [{name: a, module: a.wasm}]",
            r#"{"listeners":[{"name":"a","module":"a.wasm"}]}"#,
            "# watches: not a key\nlisteners: []\n",
        ] {
            assert!(!is_config_format(text), "{text}");
        }
        // Not YAML: told by a `watches:` line, so the config parser reports the error.
        assert!(is_config_format("watches:\n  - name: [\n"));
    }

    #[test]
    fn listener_names_must_be_qualified_names() {
        assert!(matches!(
            parse("listeners:\n  - {name: ok, module: a.wasm}\n  - {name: not ok, module: b.wasm}\n"),
            Err(Error::BadListeners(m)) if m.starts_with("listeners.yaml:3:5: listeners[1]: listener name \"not ok\"")
        ));
    }

    #[test]
    fn errors_in_the_short_format_name_the_line_and_key() {
        let err = |text: &str| match parse(text) {
            Err(Error::BadListeners(m)) => m,
            other => panic!("{other:?}"),
        };
        let m = err("listeners:\n  - name: a\n    module: a.wasm\n    mode: sometimes\n");
        assert!(m.starts_with("listeners.yaml:4:"), "{m}");
        assert!(m.contains("listeners[0].mode"), "{m}");
        let m = err("listeners:\n  - name: a\n    module: a.wasm\n    limits: {memory-bytes: 0}\n");
        assert!(
            m.starts_with("listeners.yaml:4:")
                && m.contains("listeners[0].limits.memory-bytes: must be at least 65536"),
            "{m}"
        );
        let m = err("listeners:\n  - name: a\n    module: a.wasm\n    capabilities:\n      grants: [{apiGroups: [''], resources: [pods], verbs: [get], namespaces: ['*']}]\n");
        assert!(
            m.starts_with("listeners.yaml:5:")
                && m.contains("listeners[0].capabilities.grants[0].namespaces[0]: \"*\" in a list"),
            "{m}"
        );
        let m = err("listeners:\n  - name: a\n    module: a.wasm\n    capabilities: {rateLimit: {qps: 1, burst: 0}}\n");
        assert!(
            m.contains("listeners[0].capabilities.rateLimit.burst: must be at least 1"),
            "{m}"
        );
    }

    #[test]
    fn a_name_used_in_two_watches_rejects_the_whole_set_naming_both() {
        let two_watches = "watches:\n  - name: first\n    apiVersion: v1\n    kind: ConfigMap\n    listeners:\n      - {name: echo, module: a.wasm}\n  - name: second\n    apiVersion: v1\n    kind: Secret\n    listeners:\n      - {name: echo, module: b.wasm}\n";
        // Also at startup, when the ConfigMap alone configures kubelisten.
        assert!(parse_config(two_watches).is_err());
        let err = parse(two_watches).unwrap_err();
        let Error::BadListeners(message) = &err else {
            panic!("{err}")
        };
        // The watches format is checked by the config parser, which names both places.
        assert!(
            message.contains("watches[1].listeners[0]")
                && message.contains("listener name \"echo\" is also used in watch \"first\""),
            "{message}"
        );
        let err = parse(
            "listeners:\n  - {name: echo, watch: first, module: a.wasm}\n  - {name: other, module: c.wasm}\n  - {name: echo, watch: second, module: b.wasm}\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "listeners.yaml: listener name \"echo\" appears twice: listeners[0] (watch \"first\", \
             module a.wasm) and listeners[2] (watch \"second\", module b.wasm); listener names \
             must be unique across all watches"
        );
    }

    #[test]
    fn module_files_are_regular_files_of_at_most_256_mib() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |path: &Path| Entry {
            name: "l".into(),
            watch: None,
            module: path.to_string_lossy().into_owned(),
            mode: Mode::Classname,
            limits: Limits::default(),
            capabilities: Capabilities::default(),
        };
        let problem = |path: &Path| match module_bytes(&entry(path), &BTreeMap::new()) {
            Err(Error::BadModule { problem, .. }) => problem,
            other => panic!("{}: {:?}", path.display(), other.map(|b| b.len())),
        };
        let small = dir.path().join("small.wasm");
        std::fs::write(&small, b"\0asm").unwrap();
        assert_eq!(
            module_bytes(&entry(&small), &BTreeMap::new()).unwrap(),
            b"\0asm"
        );
        // Sparse: no disk space taken.
        let big = dir.path().join("big.wasm");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_MODULE_BYTES + 1)
            .unwrap();
        assert_eq!(problem(&big), "the file is larger than 256 MiB");
        assert_eq!(problem(dir.path()), "not a regular file");
        assert_eq!(problem(Path::new("/dev/zero")), "not a regular file");
        let fifo = dir.path().join("fifo.wasm");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            assert_eq!(problem(&fifo), "not a regular file");
        }
        assert!(problem(&dir.path().join("missing.wasm")).starts_with("cannot read the file"));
    }

    #[test]
    fn decompression_is_bounded() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=(MAX_MODULE_BYTES >> 20) {
            gz.write_all(&zeros).unwrap();
        }
        let binary = BTreeMap::from([("bomb.wasm.gz".to_string(), gz.finish().unwrap())]);
        let entry = Entry {
            name: "l".into(),
            watch: None,
            module: "bomb.wasm.gz".into(),
            mode: Mode::Classname,
            limits: Limits::default(),
            capabilities: Capabilities::default(),
        };
        let err = module_bytes(&entry, &binary).unwrap_err();
        assert!(
            matches!(&err, Error::BadModule { problem, .. } if problem.contains("more than 256 MiB")),
            "{err}"
        );
    }

    /// An entry for `module` (a `binaryData` key or a path).
    fn compressed_entry(module: &str) -> Entry {
        Entry {
            name: "l".into(),
            watch: None,
            module: module.into(),
            mode: Mode::Classname,
            limits: Limits::default(),
            capabilities: Capabilities::default(),
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    /// A module with distinct halves, so a decoder that stops after the first member or frame
    /// is seen to.
    fn two_halves() -> (Vec<u8>, Vec<u8>) {
        let first = b"\0asm\x0d\0\x01\0".repeat(1000);
        let second: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        (first, second)
    }

    #[test]
    fn every_gzip_member_is_decoded() {
        let (first, second) = two_halves();
        // What `gzip -c first > m.wasm.gz; gzip -c second >> m.wasm.gz` writes.
        let mut gz = gzip(&first);
        gz.extend(gzip(&second));
        let binary = BTreeMap::from([("m.wasm.gz".to_string(), gz)]);
        let module = module_bytes(&compressed_entry("m.wasm.gz"), &binary).unwrap();
        assert_eq!(module, [first, second].concat());
    }

    #[test]
    fn every_zstd_frame_is_decoded_and_skippable_frames_are_skipped() {
        let (first, second) = two_halves();
        // Two frames (what `cat a.zst b.zst` gives), with a skippable frame between them
        // (magic 0x184D2A50, 4-byte length, payload) and an uncompressed frame at the end.
        let mut zst = zstd(&first);
        zst.extend(0x184D_2A50u32.to_le_bytes());
        zst.extend(3u32.to_le_bytes());
        zst.extend(b"xyz");
        zst.extend(zstd(&second));
        zst.extend(ruzstd::encoding::compress_to_vec(
            &b"end"[..],
            ruzstd::encoding::CompressionLevel::Uncompressed,
        ));
        let binary = BTreeMap::from([
            ("m.wasm.zst".to_string(), zst.clone()),
            (
                "trailing.wasm.zst".to_string(),
                [&zst[..], b"garbage"].concat(),
            ),
            ("empty.wasm.zst".to_string(), Vec::new()),
        ]);
        let module = module_bytes(&compressed_entry("m.wasm.zst"), &binary).unwrap();
        assert_eq!(module, [&first[..], &second[..], b"end"].concat());
        // Bytes after the last frame that are no frame are bad data, not ignored.
        for module in ["trailing.wasm.zst", "empty.wasm.zst"] {
            let err = module_bytes(&compressed_entry(module), &binary).unwrap_err();
            assert!(
                matches!(&err, Error::BadModule { problem, .. } if problem.starts_with("zstd: ")),
                "{module}: {err}"
            );
        }
    }

    #[test]
    fn the_bound_covers_all_members_and_frames_together() {
        // 257 members / frames of 1 MiB each: each is small, together they exceed the bound.
        let zeros = vec![0u8; 1 << 20];
        let count = (MAX_MODULE_BYTES >> 20) as usize + 1;
        let binary = BTreeMap::from([
            ("bomb.wasm.gz".to_string(), gzip(&zeros).repeat(count)),
            ("bomb.wasm.zst".to_string(), zstd(&zeros).repeat(count)),
        ]);
        for (module, format) in [("bomb.wasm.gz", "gzip"), ("bomb.wasm.zst", "zstd")] {
            let err = module_bytes(&compressed_entry(module), &binary).unwrap_err();
            assert!(
                matches!(&err, Error::BadModule { problem, .. }
                    if *problem == format!("{format}: decompresses to more than 256 MiB")),
                "{err}"
            );
        }
    }

    #[test]
    fn decodes_plain_gzip_and_reports_bad_data() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"\0asm-bytes").unwrap();
        let binary = BTreeMap::from([
            ("a.wasm".to_string(), b"\0asm".to_vec()),
            ("b.wasm.gz".to_string(), gz.finish().unwrap()),
            ("c.wasm.gz".to_string(), b"not gzip".to_vec()),
            ("d.wasm.zst".to_string(), b"not zstd".to_vec()),
        ]);
        let entry = compressed_entry;
        assert_eq!(module_bytes(&entry("a.wasm"), &binary).unwrap(), b"\0asm");
        assert_eq!(
            module_bytes(&entry("b.wasm.gz"), &binary).unwrap(),
            b"\0asm-bytes"
        );
        assert!(
            matches!(module_bytes(&entry("c.wasm.gz"), &binary), Err(Error::BadModule { problem, .. }) if problem.starts_with("gzip"))
        );
        assert!(
            matches!(module_bytes(&entry("d.wasm.zst"), &binary), Err(Error::BadModule { problem, .. }) if problem.starts_with("zstd"))
        );
        assert!(
            matches!(module_bytes(&entry("missing.wasm"), &binary), Err(Error::BadModule { problem, .. }) if problem.contains("no such"))
        );
    }
}
