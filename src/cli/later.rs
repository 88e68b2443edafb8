//! The commands for processes started later: persist, unpersist, autoload,
//! autoload-apply (run inside a starting process) and watch.

use super::args::{AutoloadApplyArgs, AutoloadArgs, PersistArgs, UnpersistArgs, WatchArgs};
use super::out;
use crate::error::Result;
use crate::persist;
use std::fmt::Write as _;

/// `rlivepatch persist`, and `persist --list`.
pub fn persist(a: PersistArgs) -> Result<u8> {
    let reg = persist::registry();
    if a.list {
        let entries = persist::list(&reg)?;
        if a.json {
            out::json(&entries);
        } else if entries.is_empty() {
            out::text(&format!("no persisted patches in {}\n", reg.display()));
        } else {
            let mut t = String::new();
            for e in &entries {
                let ids: Vec<String> = e
                    .build_ids
                    .iter()
                    .map(|(o, id)| format!("{o} {id}"))
                    .collect();
                let _ = writeln!(
                    t,
                    "{} ({}): for {}",
                    e.name,
                    e.file.display(),
                    ids.join(", ")
                );
            }
            out::text(&t);
        }
    } else if let Some(patch) = a.patch {
        let e = persist::persist(&patch, a.wait, &a.trust.acceptance())?;
        if a.json {
            out::json(&e);
        } else {
            out::text(&format!(
                "persisted patch {} in {}: processes started from now on with the autoload library run it (rlivepatch autoload --unit UNIT, or --system)\n",
                e.name,
                reg.display()
            ));
        }
    }
    Ok(0)
}

/// `rlivepatch unpersist`.
pub fn unpersist(a: UnpersistArgs) -> Result<u8> {
    persist::unpersist(&a.name)?;
    out::text(&format!(
        "patch {} is no longer persisted; processes started from now on run without it\n",
        a.name
    ));
    Ok(0)
}

/// `rlivepatch autoload`.
pub fn autoload(a: AutoloadArgs) -> Result<u8> {
    let lib = persist::library_path(&persist::registry());
    if a.library {
        out::text(&format!("{}\n", lib.display()));
    } else if a.system {
        let p = persist::install_system(&a.root)?;
        out::text(&format!(
            "{} loads {} into every process started from now on\n",
            p.display(),
            lib.display()
        ));
    } else if let Some(unit) = a.unit {
        let p = persist::install_unit(&unit, &a.root)?;
        out::text(&format!(
            "wrote {}; run `systemctl daemon-reload` and restart the unit\n",
            p.display()
        ));
    }
    Ok(0)
}

/// `rlivepatch autoload-apply`, run by the autoload library inside a starting process.
pub fn autoload_apply(a: AutoloadApplyArgs) -> Result<u8> {
    // Inside a starting program, only what went wrong is worth its stderr.
    let mut say = |l: &str| {
        if !l.starts_with("note:") {
            eprintln!("rlivepatch autoload: {l}");
        }
    };
    persist::autoload_apply(a.pid, &a.registry, &mut say)?;
    Ok(0)
}

/// `rlivepatch watch`: runs until stopped.
pub fn watch(a: WatchArgs) -> Result<u8> {
    let reg = persist::registry();
    let exes = persist::watch::executables(&a.exe, &reg)?;
    persist::watch::run(&exes, &reg, &mut out::progress)?;
    Ok(0)
}
