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
