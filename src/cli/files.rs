//! The commands that work on files, not processes: build, build-id, info, sdk, and the
//! man page and completions generated from the command line's definitions.

use super::args::{BuildArgs, BuildIdArgs, Cli, CompletionsArgs, InfoArgs, SdkArgs};
use super::out;
use crate::err;
use crate::error::Result;
use crate::ops::report::InfoView;
use clap::CommandFactory;

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
    let p = crate::patch::Patch::load(&a.patch)?;
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

/// `rlivepatch manpage`: the man page (roff).
pub fn manpage() -> Result<u8> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .map_err(|e| err!(Failed, "writing the man page: {e}"))?;
    out::bytes(&buf);
    Ok(0)
}

/// `rlivepatch completions SHELL`.
pub fn completions(a: CompletionsArgs) -> Result<u8> {
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "rlivepatch", &mut buf);
    out::bytes(&buf);
    Ok(0)
}
