//! List: the patches of a process, read from its record without stopping it.

use crate::elf::objects::Objects;
use crate::error::Result;
use crate::ops::report::ListView;

/// What `list` shows of process `pid`: its patches oldest first, objects that come
/// later, and what an interrupted run left behind.
pub fn list(pid: i32) -> Result<ListView> {
    let (proc, maps, rec) = crate::livepatch::store::read_record(pid)?;
    let objects = Objects::new(&proc, &maps, &[])?;
    let mut view = ListView::new(pid, &proc.status.name, &rec, &objects);
    // Children that have every patch of this list (a fleet run covered them) are not
    // worth a note.
    let names: Vec<&str> = rec.patches.iter().map(|p| p.name.as_str()).collect();
    view.children.retain(|&c| {
        names.is_empty()
            || !crate::livepatch::store::read_record(c).is_ok_and(|(_, _, r)| {
                names
                    .iter()
                    .all(|n| r.patches.iter().any(|p| p.name == *n && !p.disabled))
            })
    });
    view.add_coming(&proc, &rec);
    let left = crate::livepatch::leftovers::scan(&proc, &maps, &rec, None);
    if !left.is_empty() && view.pending.is_none() {
        view.pending = Some(format!(
            "{}; run `rlivepatch repair {pid}`",
            left.describe()
        ));
    }
    Ok(view)
}
