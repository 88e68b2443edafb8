//! The commands that work on files, not processes: build, build-id, info, sdk, and the
//! man page and completions generated from the command line's definitions.

use super::args::{
    BuildArgs, BuildIdArgs, Cli, CompletionsArgs, InfoArgs, KeygenArgs, SdkArgs, SignArgs,
};
use super::out;
use crate::err;
use crate::error::Result;
use crate::ops::report::InfoView;
use clap::CommandFactory;
use std::path::PathBuf;

/// `rlivepatch build`: the report goes to stderr as text (the patch is the output), or
/// to stdout as JSON.
pub fn build(a: BuildArgs) -> Result<u8> {
    let opts = crate::generate::BuildOptions {
        source: a.source,
        diffs: a.diffs,
        binaries: a.binaries,
        build: a.build,
        compile_commands: a.compile_commands,
        debug_dirs: a.debug_dir,
        name: a.name,
        replace: a.replace,
        out: a.output,
        dry_run: a.dry_run,
    };
    let r = crate::generate::build(&opts, &mut out::progress)?;
    if let (Some(key), Some(written)) = (&a.sign_key, &r.output) {
        crate::patch::sign::sign(key, std::path::Path::new(written))?;
        out::progress(&format!("signed {written} with {}", key.display()));
    }
    if a.json {
        out::json(&r);
    } else {
        eprint!("{}", r.text());
    }
    Ok(0)
}

/// `rlivepatch build-id`.
pub fn build_id(a: BuildIdArgs) -> Result<u8> {
    let line = crate::elf::buildid::line(&a.file, a.object.as_deref())?;
    out::text(&format!("{line}\n"));
    Ok(0)
}

/// `rlivepatch info`.
pub fn info(a: InfoArgs) -> Result<u8> {
    // Only read: a file anyone may change can be looked at.
    let p = crate::patch::Patch::load_with(
        &a.patch,
        &crate::patch::Acceptance {
            any_file: true,
            keyring: a.keyring.clone(),
            ..Default::default()
        },
        &mut |_| {},
    )?;
    let view = InfoView::new(&p);
    if a.json {
        out::json(&view);
    } else {
        out::text(&view.text());
    }
    Ok(0)
}

/// `rlivepatch sdk`.
pub fn sdk(a: SdkArgs) -> Result<u8> {
    use crate::patch::sdk;
    if a.header {
        out::text(sdk::HEADER);
    } else if a.cflags {
        out::text(&format!("{}\n", sdk::cflags()?));
    } else {
        out::text(&format!(
            "header: {}/rlivepatch.h\nbuild a patch: cc $(rlivepatch sdk --cflags) -o fix.so fix.c\n",
            sdk::include_dir()?.display()
        ));
    }
    Ok(0)
}

/// `rlivepatch manpage`: the man page (roff) on stdout; with `--dir DIR`, it and a page
/// per command (`rlivepatch-apply.1`...) written in DIR, as `rlivepatch(1)` refers to them.
pub fn manpage(dir: Option<PathBuf>) -> Result<u8> {
    let failed = |e: std::io::Error| err!(Failed, "writing the man pages: {e}");
    let main = main_page().map_err(failed)?;
    let Some(dir) = dir else {
        out::bytes(&main);
        return Ok(0);
    };
    std::fs::create_dir_all(&dir).map_err(failed)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        clap_mangen::Man::new(sub.clone())
            .generate_to(&dir)
            .map_err(failed)?;
    }
    std::fs::write(dir.join("rlivepatch.1"), main).map_err(failed)?;
    Ok(0)
}

/// The main page: clap's sections, and the exit codes as a table that keeps its lines
/// (filled as a paragraph, man reflowed it across its columns).
fn main_page() -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(Cli::command().after_help("").disable_help_subcommand(true));
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    man.render_subcommands_section(&mut buf)?;
    let table = crate::cli::args::EXIT_CODES
        .lines()
        .skip(1)
        .map(|l| l.replace('\\', "\\e").replace('-', "\\-"))
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    buf.extend_from_slice(format!(".SH \"EXIT STATUS\"\n.nf\n{table}\n.fi\n").as_bytes());
    man.render_version_section(&mut buf)?;
    Ok(buf)
}

/// `rlivepatch completions SHELL`.
pub fn completions(a: CompletionsArgs) -> Result<u8> {
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "rlivepatch", &mut buf);
    out::bytes(&buf);
    Ok(0)
}

/// `rlivepatch keygen PATH`.
pub fn keygen(a: KeygenArgs) -> Result<u8> {
    let (private, public) = crate::patch::sign::keygen(&a.path)?;
    out::text(&format!(
        "private key: {} (keep it; mode 0600)\npublic key: {} (put it in a keyring directory)\n",
        private.display(),
        public.display()
    ));
    Ok(0)
}

/// `rlivepatch sign --key KEY PATCH`.
pub fn sign(a: SignArgs) -> Result<u8> {
    let key = crate::patch::sign::sign(&a.key, &a.patch)?;
    let id: String = key[..8].iter().map(|b| format!("{b:02x}")).collect();
    out::text(&format!("signed {} with key {id}\n", a.patch.display()));
    Ok(0)
}
