//! The checks of the target process itself, before anything else: alive, not stopped,
//! x86_64, dynamically linked, not traced by another tool; and the build-ids a patch is
//! for.

use crate::elf::objects::Objects;
use crate::error::Result;
use crate::os::process::Process;
use crate::patch::Patch;
use crate::{bail, err};

/// Check the target before touching it.
pub fn preflight(proc: &Process) -> Result<()> {
    let st = &proc.status;
    match st.state {
        'Z' | 'X' => bail!(
            Target,
            "process {} ({}) is a zombie: it has exited and waits for its parent to reap it",
            proc.pid,
            st.name
        ),
        'T' => bail!(
            Target,
            "process {} ({}) is stopped (job control, e.g. SIGSTOP or Ctrl-Z); continue it with `kill -CONT {}` and retry",
            proc.pid,
            st.name,
            proc.pid
        ),
        't' if st.tracer != 0 => {}
        _ => {}
    }
    if st.tracer != 0 && st.tracer != std::process::id() as i32 {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", st.tracer)).unwrap_or_default();
        if comm.trim() != "rlivepatch" {
            bail!(
                Target,
                "process {} is already traced by {} (pid {}); detach it (quit the debugger or tracer) and retry",
                proc.pid,
                comm.trim(),
                st.tracer
            );
        }
    }
    let (exe, _, _) = proc.exe().map_err(|e| {
        if std::fs::read_to_string(format!("/proc/{}/cmdline", proc.pid))
            .is_ok_and(|c| c.is_empty())
        {
            err!(
                Target,
                "process {} ({}) is a kernel thread; rlivepatch patches user processes",
                proc.pid,
                st.name
            )
        } else {
            e
        }
    })?;
    // The headers say all this; the symbols are parsed later only if the patch needs them.
    let exe_file = crate::elf::objects::exe_identity_of(proc).ok_or_else(|| {
        err!(
            Target,
            "cannot read the executable of process {} ({}) as an ELF file",
            proc.pid,
            exe.display()
        )
    })?;
    if !exe_file.is_64 {
        bail!(
            Target,
            "process {} ({}) is a 32-bit program; rlivepatch patches x86_64 processes",
            proc.pid,
            exe.display()
        );
    }
    if !exe_file.is_x86_64 {
        bail!(
            Target,
            "process {} ({}) is not an x86_64 program",
            proc.pid,
            exe.display()
        );
    }
    if !exe_file.has_interp {
        bail!(
            Target,
            "process {} ({}) is statically linked: it has no dynamic loader, so no dlopen to load a patch",
            proc.pid,
            exe.display()
        );
    }
    Ok(())
}

/// Refuse a process whose objects do not have the build-ids the patch names.
pub fn check_build_ids(patch: &Patch, objects: &Objects) -> Result<()> {
    for (object, want) in &patch.build_ids {
        let obj = match objects.by_name(object.as_deref()) {
            Ok(o) => o,
            // Not loaded yet: checked against the file it would load (`coming`).
            Err(_) if object.as_deref().is_some_and(|o| o != "main") => continue,
            Err(e) => return Err(e),
        };
        let have = obj.file()?.build_id_hex();
        match have {
            Some(h) if &h == want => {}
            Some(h) => bail!(
                Mismatch,
                "patch {} was built for a {} with build-id {want}, but {} in this process has build-id {h}: another build; rebuild the patch for this binary",
                patch.name,
                match object.as_deref() {
                    None | Some("main") => "main executable",
                    Some(o) => o,
                },
                obj.display_name()
            ),
            None => bail!(
                Mismatch,
                "patch {} was built for {} with build-id {want}, but the process's file has no build-id",
                patch.name,
                obj.display_name()
            ),
        }
    }
    Ok(())
}
