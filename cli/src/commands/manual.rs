//! `waxseal completions SHELL` and `waxseal man --out DIR`: the shell completions and
//! manual pages, generated from the same clap definitions that parse the command line,
//! so they cannot drift from it. `scripts/install` runs both (README → Install).

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::Cli;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: &str) -> Result<()> {
    let shell = match shell {
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        other => bail!("no completions for shell `{other}` (bash, zsh or fish)"),
    };
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "waxseal", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
    Ok(())
}

/// Writes `waxseal.1` and one page per subcommand (`waxseal-keys-list.1`, …) into `dir`,
/// and prints the files written.
pub fn man(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
    let mut pages: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    for p in pages {
        outln!("{}", p.display());
    }
    Ok(())
}
