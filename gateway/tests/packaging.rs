//! The deployment files, checked without running them: containers cannot run on the CI machines,
//! so the Dockerfile is read statically; the systemd unit goes through `systemd-analyze verify`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Dockerfile instructions with continuation lines joined and comments dropped: (KEYWORD, args).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body.trim_end());
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (kw, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((kw.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_copies_only_what_exists() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let ins = instructions(&text);

    // Stages: a build stage and a slim runtime stage after it.
    let stages: Vec<(usize, String, String)> = ins
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, (_, a))| {
            let parts: Vec<&str> = a.split_whitespace().collect();
            let name = match parts.as_slice() {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            (i, parts[0].to_string(), name)
        })
        .collect();
    assert!(stages.len() >= 2, "not multi-stage: {stages:?}");
    let (last_from, runtime_image, _) = stages.last().expect("a stage");
    assert!(
        runtime_image.contains("slim") || runtime_image.contains("distroless"),
        "runtime base is not slim: {runtime_image}"
    );
    let names: BTreeSet<&str> = stages.iter().map(|(_, _, n)| n.as_str()).collect();
    let build_runs: Vec<&String> = ins[..*last_from]
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, a)| a)
        .collect();
    assert!(
        build_runs.iter().any(|r| r.contains("cargo build")
            && r.contains("--release")
            && r.contains("--locked")),
        "no release build in the build stage: {build_runs:?}"
    );

    // The runtime stage runs as a named, non-root user.
    let runtime = &ins[*last_from..];
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.clone())
        .expect("USER in the runtime stage");
    let user_name = user.split(':').next().unwrap_or_default();
    assert!(
        !user_name.is_empty() && user_name != "root" && user_name != "0",
        "runs as {user}"
    );

    // Ports: the default listener, TLS and admin.
    let exposed: BTreeSet<String> = runtime
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    for port in ["9080", "9443", "9090"] {
        assert!(exposed.contains(port), "EXPOSE lacks {port}: {exposed:?}");
    }

    // Every COPY source exists in the repository (or names an earlier stage), and is not excluded
    // by .dockerignore.
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap_or_default();
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut copies = 0;
    for (k, a) in &ins {
        if k != "COPY" && k != "ADD" {
            continue;
        }
        let mut parts: Vec<&str> = a.split_whitespace().collect();
        let from = parts
            .iter()
            .position(|p| p.starts_with("--from="))
            .map(|i| parts.remove(i).trim_start_matches("--from=").to_string());
        parts.retain(|p| !p.starts_with("--"));
        assert!(parts.len() >= 2, "COPY without a destination: {a}");
        let srcs = &parts[..parts.len() - 1];
        match from {
            Some(stage) => assert!(
                names.contains(stage.as_str()),
                "COPY --from={stage}: no such stage"
            ),
            None => {
                for src in srcs {
                    assert!(
                        root.join(src).exists(),
                        "COPY source `{src}` does not exist"
                    );
                    assert!(
                        !ignored.iter().any(|i| i.trim_end_matches('/') == *src),
                        "COPY source `{src}` is excluded by .dockerignore"
                    );
                    copies += 1;
                }
            }
        }
    }
    assert!(copies >= 4, "too few COPY instructions checked");
    assert!(
        ignored.contains(&"target"),
        ".dockerignore must exclude target/"
    );

    // The config path users mount, and the command that reads it.
    assert!(
        runtime
            .iter()
            .any(|(k, a)| k == "COPY" && a.ends_with("/etc/shardgate/config.yaml")),
        "no default config at /etc/shardgate/config.yaml"
    );
    let cmd = runtime
        .iter()
        .filter(|(k, _)| k == "CMD" || k == "ENTRYPOINT")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(cmd.contains("\"/etc/shardgate/config.yaml\""), "{cmd}");
    assert!(cmd.contains("\"run\""), "{cmd}");
}

#[test]
fn dockerfile_parser_joins_continuations() {
    let ins = instructions("# c\nFROM a AS b\nRUN x \\\n    && y\n\nUSER u\n");
    assert_eq!(
        ins,
        [
            ("FROM".to_string(), "a AS b".to_string()),
            ("RUN".to_string(), "x && y".to_string()),
            ("USER".to_string(), "u".to_string()),
        ]
    );
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let root = repo_root();
    let unit = std::fs::read_to_string(root.join("packaging/shardgate.service")).expect("unit");
    for line in [
        "LimitMEMLOCK=8M",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
        "ExecStart=/usr/local/bin/shardgate run -c /etc/shardgate/config.yaml",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "unit lacks `{line}`"
        );
    }
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect(
            "systemd-analyze missing: run scripts/install.sh --test (Debian package `systemd`)",
        );
    // verify checks that the binaries exist: point the unit at the one cargo built.
    let dir = std::env::temp_dir().join(format!("shardgate-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("shardgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/shardgate", env!("CARGO_BIN_EXE_shardgate")),
    )
    .expect("write unit");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    // verify exits 0 on unknown keys and bad values too; it reports them on stderr.
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}
