//! The user-facing reference cannot drift from the code: every key a config struct accepts is a row
//! of docs/configuration.md, and every file in examples/ passes `shardgate validate`.
//!
//! The keys are read from the source: each `#[serde(deny_unknown_fields)]` struct under
//! gateway/src and oidc/src, its field names (or their `rename`). Those structs are exactly the
//! config shapes, because only they reject unknown keys; a new struct or field is picked up without
//! touching this test.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// (struct name, key) for every field of every `deny_unknown_fields` struct in `src`.
fn config_keys(src: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = src.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].contains("deny_unknown_fields") {
            i += 1;
            continue;
        }
        // The struct line follows the attributes.
        let mut j = i + 1;
        while j < lines.len() && !lines[j].contains("struct ") {
            j += 1;
        }
        let Some(decl) = lines.get(j) else { break };
        let name = decl
            .split("struct ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_alphanumeric() && c != '_').next())
            .unwrap_or_default()
            .to_string();
        let indent = decl.len() - decl.trim_start().len();
        let mut rename: Option<String> = None;
        let mut skip = false;
        let mut k = j + 1;
        while k < lines.len() {
            let line = lines[k];
            let trimmed = line.trim();
            if trimmed == "}" && line.len() - line.trim_start().len() == indent {
                break;
            }
            k += 1;
            if trimmed.starts_with("//") || trimmed.is_empty() {
                continue;
            }
            if trimmed.starts_with("#[") {
                if trimmed.contains("serde(") {
                    if let Some(r) = trimmed.split("rename = \"").nth(1) {
                        rename = r.split('"').next().map(str::to_string);
                    }
                    if trimmed.contains("skip") || trimmed.contains("flatten") {
                        skip = true;
                    }
                }
                continue;
            }
            let field = trimmed
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ")
                .trim_start_matches("pub ");
            if let Some((ident, _ty)) = field.split_once(':') {
                let ident = ident.trim();
                if !skip
                    && !ident.is_empty()
                    && ident.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    out.push((
                        name.clone(),
                        rename.take().unwrap_or_else(|| ident.to_string()),
                    ));
                }
            }
            rename = None;
            skip = false;
        }
        i = k;
    }
    out
}

#[test]
fn every_config_key_is_documented() {
    let root = repo_root();
    let doc_path = root.join("docs/configuration.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("{}: {e}", doc_path.display()));
    let mut files = Vec::new();
    rust_files(&root.join("gateway/src"), &mut files);
    rust_files(&root.join("oidc/src"), &mut files);
    // Plugins that exist only in test and bench builds (they exercise the pipeline) are no user's
    // config.
    files.retain(|f| !f.ends_with("gateway/src/pipeline/testing.rs"));
    let mut keys = Vec::new();
    for f in &files {
        let src = std::fs::read_to_string(f).expect("read source");
        for (st, key) in config_keys(&src) {
            keys.push((
                f.strip_prefix(&root).unwrap_or(f).display().to_string(),
                st,
                key,
            ));
        }
    }
    // The parser must really see the config shapes, or this test would pass on nothing.
    for (st, key) in [
        ("GatewayFile", "listen"),
        ("LimitsFile", "max_body_buffer"),
        ("UpstreamFile", "type"),
        ("RouteFile", "enable_websocket"),
        ("OidcConf", "client_id"),
        ("OidcConf", "_meta"),
        ("SessionFile", "secret_fallbacks"),
        ("AudienceValidator", "match_with_client_id"),
    ] {
        assert!(
            keys.iter().any(|(_, s, k)| s == st && k == key),
            "the source scan did not find {st}.{key}; found {} keys",
            keys.len()
        );
    }
    assert!(keys.len() > 150, "only {} keys found", keys.len());
    let missing: Vec<String> = keys
        .iter()
        .filter(|(_, _, key)| !doc.contains(&format!("| `{key}` |")))
        .map(|(file, st, key)| format!("{key} ({st} in {file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "config keys with no row `| `key` |` in docs/configuration.md:\n  {}",
        missing.join("\n  ")
    );
    assert!(doc.contains("## `routes[].plugins.openid-connect`"));
}

/// The scanner itself, on a struct shaped like the real ones.
#[test]
fn key_scanner_reads_renames_and_skips_attributes() {
    let src = r#"
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Example {
    /// A comment that mentions: a colon.
    #[serde(default = "listen")]
    pub listen: Vec<String>,
    #[serde(rename = "type", default)]
    pub kind: Kind,
    #[serde(default, rename = "desc")]
    _desc: Option<String>,
    plain: u32,
}

#[derive(Deserialize)]
struct Other {
    not_a_config_key: u32,
}
"#;
    let keys: Vec<String> = config_keys(src).into_iter().map(|(_, k)| k).collect();
    assert_eq!(keys, ["listen", "type", "desc", "plain"]);
}

#[test]
fn every_example_passes_validate() {
    let root = repo_root();
    let examples = root.join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    for want in ["plain-proxy", "bearer-api", "browser-login", "tls"] {
        assert!(
            names.iter().any(|n| n == want),
            "examples/{want}.yaml missing"
        );
    }
    // Each example is validated from a directory of its own, as deployed next to its cert.pem and
    // key.pem (the test certificate stands in for yours).
    let work = std::env::temp_dir().join(format!("shardgate-examples-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("temp dir");
    let testdata = root.join("gateway/tests/testdata");
    std::fs::copy(testdata.join("tls-cert.pem"), work.join("cert.pem")).expect("copy cert");
    std::fs::copy(testdata.join("tls-key.pem"), work.join("key.pem")).expect("copy key");
    for f in &files {
        let target = work.join(f.file_name().expect("file name"));
        std::fs::copy(f, &target).expect("copy example");
        let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["validate", "-c"])
            .arg(&target)
            .env("OIDC_CLIENT_SECRET", "example-client-secret")
            .env("SESSION_SECRET", "example-session-secret-0123456789")
            .output()
            .expect("run shardgate validate");
        assert!(
            out.status.success(),
            "{} fails validate:\n{}{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("dir entry").path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if p.is_dir() {
            if !["target", "node_modules", ".git", "results"].contains(&name.as_str()) {
                markdown_files(&p, out);
            }
        } else if name.ends_with(".md") {
            out.push(p);
        }
    }
}

/// The repository cites no document it does not contain: every relative Markdown link resolves,
/// and no text refers to the design notes that live outside the repository.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = repo_root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.len() >= 8, "{files:?}");
    let mut broken = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read markdown");
        if text.contains("design.md") {
            broken.push(format!(
                "{}: cites design.md, which is not in the repository",
                f.display()
            ));
        }
        for part in text.split("](").skip(1) {
            let Some(target) = part.split(')').next() else {
                continue;
            };
            let target = target.split('#').next().unwrap_or_default().trim();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let base = f.parent().expect("parent");
            if !base.join(target).exists() {
                broken.push(format!("{}: ({target})", f.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
