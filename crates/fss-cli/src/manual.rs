//! Man pages and shell completions: `fss completions bash|zsh|fish`, and the hidden
//! `fss man DIR`, which writes `fss.8` and `fssconfig.8` (committed under `docs/man/`; a test
//! fails when they are stale). `fss.8` is generated from the command line's own help, every
//! subcommand included; `fssconfig.8` has a hand-written description and examples in NetBSD's
//! style around its generated synopsis and options.

use clap::{Arg, ArgAction, Command};
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;
use std::io::Write;
use std::path::Path;

/// The shells `fss completions` knows.
pub const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];

/// Print the completion script for `shell` (one of [`SHELLS`]).
///
/// # Errors
/// An unknown shell.
pub fn completions(shell: &str, cmd: &mut Command) -> anyhow::Result<()> {
    let shell = match shell {
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        "fish" => clap_complete::Shell::Fish,
        other => anyhow::bail!("no completions for the shell '{other}': use bash, zsh or fish"),
    };
    clap_complete::generate(shell, cmd, "fss", &mut std::io::stdout());
    Ok(())
}

/// Write `fss.8` (from `fss`, the `fss` command line) and `fssconfig.8` into `dir`.
///
/// # Errors
/// The directory cannot be written.
pub fn write_pages(dir: &Path, fss: Command) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, page) in [
        ("fss.8", fss_page(fss)?),
        ("fssconfig.8", fssconfig_page()?),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, page)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn man(cmd: Command) -> Man {
    Man::new(cmd).section("8").manual("System Manager's Manual")
}

/// `fss.8`: the generated page, then one subsection per subcommand with its options.
///
/// # Errors
/// Rendering failed (not expected: it writes to memory).
pub fn fss_page(mut fss: Command) -> std::io::Result<Vec<u8>> {
    fss.build();
    let page = man(fss.clone());
    let mut out = Vec::new();
    // Not `render`: its list of subcommands points at pages (fss-serve(8)...) that do not
    // exist; the COMMANDS section below describes each one here instead.
    page.render_title(&mut out)?;
    page.render_name_section(&mut out)?;
    page.render_synopsis_section(&mut out)?;
    page.render_description_section(&mut out)?;
    page.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in visible(&fss) {
        command_section(&mut roff, sub);
    }
    see_also(
        &mut roff,
        &[("fssconfig", "8"), ("losetup", "8"), ("nbdinfo", "1")],
    );
    roff.to_writer(&mut out)?;
    Ok(out)
}

/// The subcommands a page describes: not hidden, not clap's `help`.
fn visible(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// A subcommand's usage, description and options; its own subcommands after it.
fn command_section(roff: &mut Roff, cmd: &Command) {
    if cmd.has_subcommands() {
        for sub in visible(cmd) {
            command_section(roff, sub);
        }
        return;
    }
    let name = cmd.get_bin_name().unwrap_or_else(|| cmd.get_name());
    roff.control("SS", [name]);
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ");
    roff.text([bold(usage)]);
    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        for para in about.to_string().split("\n\n") {
            roff.control("PP", []);
            roff.text([roman(para.replace('\n', " "))]);
        }
    }
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if arg.get_id() == "help" || arg.get_id() == "version" || arg.is_global_set() {
            continue;
        }
        roff.control("TP", []);
        roff.text(arg_label(arg));
        if let Some(help) = arg.get_long_help().or_else(|| arg.get_help()) {
            roff.text([roman(help.to_string().replace('\n', " "))]);
        }
    }
}

fn arg_label(arg: &Arg) -> Vec<Inline> {
    let value = arg.get_value_names().and_then(|v| v.first()).map_or_else(
        || arg.get_id().to_string().to_uppercase(),
        ToString::to_string,
    );
    match arg.get_long() {
        Some(long) if matches!(arg.get_action(), ArgAction::SetTrue) => {
            vec![bold(format!("--{long}"))]
        }
        Some(long) => vec![bold(format!("--{long}")), roman(" "), italic(value)],
        None => vec![italic(value)],
    }
}

fn see_also(roff: &mut Roff, pages: &[(&str, &str)]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut inlines = Vec::new();
    for (i, (name, section)) in pages.iter().enumerate() {
        if i > 0 {
            inlines.push(roman(", "));
        }
        inlines.push(bold(*name));
        inlines.push(roman(format!("({section})")));
    }
    roff.text(inlines);
}

/// fssconfig's command line as clap sees it (the binary parses it itself, as NetBSD's does):
/// only for the page's synopsis and options.
fn fssconfig_command() -> Command {
    // One-letter flags, as getopt has them; the letter is the flag's id.
    let flag = |id: &'static str, help: &'static str| {
        Arg::new(id)
            .short(id.chars().next().unwrap_or('?'))
            .help(help)
            .action(ArgAction::SetTrue)
    };
    Command::new("fssconfig")
        .about("configure file system snapshot devices")
        .override_usage(
            "fssconfig [-cxv] device path backup [cluster [size]]\n\
             fssconfig -u [-v] device\n\
             fssconfig -l [-v] [device]",
        )
        .disable_help_flag(true)
        .arg(flag("c", "Configure the snapshot device (the default)."))
        .arg(flag("l", "List the snapshot devices and their state."))
        .arg(flag("u", "Unconfigure (delete) the snapshot device."))
        .arg(flag("v", "Be verbose."))
        .arg(flag(
            "x",
            "Unlink the backing store file after the device is configured: the snapshot is then \
             transient and gone when fss serve stops.",
        ))
}

const FSSCONFIG_DESCRIPTION: &[&str] = &[
    "The fssconfig command configures fss snapshot devices, with the syntax and output of \
     NetBSD's fssconfig(8). Each device is a snapshot named fssN taken by the fss daemon \
     (fss serve), which must be running; the snapshot is then served as the read-only file \
     fssN in the daemon's FUSE directory and as the NBD export fssN.",
    "path is the mount point of a file system on an fss volume (it is frozen for an instant, \
     so that the snapshot is consistent), or the name of an fss volume. backup is the backing \
     store: a file, a directory (a fresh file is made inside it) or a raw device, which \
     holds the blocks of the volume that are overwritten after the snapshot was taken.",
    "cluster is the size of the store's allocation unit, which only the first snapshot of a \
     volume may choose (default 64K); size is the store's maximum size. When the store \
     cannot take a block, the snapshot becomes invalid and the volume goes on working. Sizes \
     take the suffixes k, m, g and t (powers of 1024); 0 means the default.",
    "With -l, the devices fss0 to fss3 are listed, \"not in use\" when free, and every other \
     snapshot after them. With -lv each line reads: fssN: mount point or volume, taken date, \
     the volume's size in clusters, the cluster size, and the bytes the store uses.",
];

const FSSCONFIG_EXAMPLES: &[(&str, &str)] = &[
    (
        "fssconfig fss0 /home /var/tmp/home.fss",
        "Take a snapshot of the file system mounted on /home, with its store in \
         /var/tmp/home.fss; then attach it with losetup -r and mount it read-only.",
    ),
    (
        "fssconfig -x fss1 /home /var/tmp 64k 1g",
        "Take a transient snapshot of /home with its store in a fresh file in /var/tmp, 64 KiB \
         clusters and at most 1 GiB of store, the file unlinked at once.",
    ),
    (
        "fssconfig -lv",
        "Show every snapshot device with its details.",
    ),
    (
        "fssconfig -u fss0",
        "Delete the snapshot fss0 and its store.",
    ),
];

/// `fssconfig.8`: generated synopsis and options, hand-written description and examples.
///
/// # Errors
/// Rendering failed (not expected: it writes to memory).
pub fn fssconfig_page() -> std::io::Result<Vec<u8>> {
    let page = man(fssconfig_command());
    let mut out = Vec::new();
    page.render_title(&mut out)?;
    page.render_name_section(&mut out)?;
    page.render_synopsis_section(&mut out)?;
    let mut roff = Roff::new();
    roff.control("SH", ["DESCRIPTION"]);
    for para in FSSCONFIG_DESCRIPTION {
        roff.control("PP", []);
        roff.text([roman(*para)]);
    }
    roff.to_writer(&mut out)?;
    page.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(
        "The fssconfig utility exits 0 on success, and 1 if an error occurs.",
    )]);
    roff.control("SH", ["EXAMPLES"]);
    for (command, what) in FSSCONFIG_EXAMPLES {
        roff.control("PP", []);
        roff.text([roman(*what)]);
        roff.control("RS", ["4"]);
        roff.text([bold(*command)]);
        roff.control("RE", []);
    }
    see_also(&mut roff, &[("fss", "8"), ("losetup", "8"), ("mount", "8")]);
    roff.control("SH", ["HISTORY"]);
    roff.text([roman(
        "The fssconfig command appeared in NetBSD 2.0. This one drives fss, a userspace \
         realisation of fss(4) for Linux.",
    )]);
    roff.to_writer(&mut out)?;
    out.flush()?;
    Ok(out)
}
