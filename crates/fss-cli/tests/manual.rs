//! Man pages and completions: the committed pages under `docs/man/` are what the command line
//! generates now (stale pages fail here), `man -l` renders them without warnings, and bash
//! completes `fss` subcommands from `fss completions bash`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{require_tool, FSS};
use std::path::PathBuf;
use std::process::Command;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/man")
}

#[test]
fn committed_man_pages_are_current() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(FSS)
        .arg("man")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    for page in ["fss.8", "fssconfig.8"] {
        let fresh = std::fs::read_to_string(tmp.path().join(page)).unwrap();
        let old = std::fs::read_to_string(committed().join(page)).unwrap_or_default();
        assert!(
            fresh == old,
            "docs/man/{page} is stale: run `cargo run -p fss-cli --bin fss -- man docs/man` \
             and commit the result"
        );
    }
}

#[test]
fn man_renders_the_pages_without_warnings() {
    require_tool("man", "man-db");
    for (page, expect) in [
        (
            "fss.8",
            &[
                "NAME",
                "SYNOPSIS",
                "COMMANDS",
                "fss snapshot create",
                "--metrics-listen",
            ][..],
        ),
        (
            "fssconfig.8",
            &["DESCRIPTION", "EXAMPLES", "fssconfig -lv", "SEE ALSO"][..],
        ),
    ] {
        let o = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(committed().join(page))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let warnings = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "man -l {page}: {warnings}");
        assert!(
            warnings.trim().is_empty(),
            "man warns on {page}: {warnings}"
        );
        for e in expect {
            assert!(text.contains(e), "{page} lacks '{e}':\n{text}");
        }
    }
}

/// What bash completes for the words `line` (the last one being completed).
fn bash_completes(line: &str) -> Vec<String> {
    let script = format!(
        "source <('{FSS}' completions bash) && complete -p fss >&2 && \
         COMP_WORDS=({line}) && COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)) && \
         COMP_LINE='{line}' && COMP_POINT=${{#COMP_LINE}} && \
         _fss fss \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\" && \
         printf '%s\\n' \"${{COMPREPLY[@]}}\""
    );
    let o = Command::new("bash").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bash: {err}");
    assert!(err.contains("-F _fss fss"), "complete -p fss: {err}");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn bash_completes_subcommands_and_options() {
    require_tool("bash", "bash");
    assert_eq!(bash_completes("fss snap"), ["snapshot"]);
    let sub = bash_completes("fss snapshot ''");
    for s in ["create", "delete", "list", "info", "set", "verify"] {
        assert!(sub.iter().any(|c| c == s), "{s} in {sub:?}");
    }
    assert!(bash_completes("fss serve --metr").contains(&"--metrics-listen".to_string()));
}

#[test]
fn zsh_and_fish_scripts_name_the_commands() {
    for (shell, marker) in [("zsh", "#compdef fss"), ("fish", "complete -c fss")] {
        let o = Command::new(FSS)
            .args(["completions", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains(marker),
            "{shell}: {text}"
        );
        assert!(text.contains("snapshot"), "{shell}");
    }
    let o = Command::new(FSS)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}
