//! Loading and unloading rlivepatch's runtime in the process of a session, and talking
//! to it (see [`crate::remote::runtime`]).

use super::Session;
use crate::err;
use crate::error::Result;
use crate::livepatch::record::RuntimeRecord;
use std::borrow::Cow;

/// The runtime's image as loaded into one process.
pub struct RuntimeImage {
    /// Its bytes.
    pub bytes: Cow<'static, [u8]>,
    /// Does its constructor start the keeper?
    pub keeper: bool,
}

impl RuntimeImage {
    /// What [`Session::load_all`] loads it as.
    pub fn to_load(&self) -> super::ToLoad<'_> {
        (
            super::RUNTIME_MEMFD,
            &self.bytes,
            libc::RTLD_NOW | libc::RTLD_GLOBAL,
        )
    }
}

impl Session<'_> {
    /// Load the runtime if it is not loaded yet.
    pub fn ensure_runtime(&mut self) -> Result<RuntimeRecord> {
        if let Some(r) = &self.record.runtime {
            return Ok(r.clone());
        }
        let image = self.runtime_image()?;
        let clones = self.tr.clones.len();
        let super::Loaded { loaded, refused } = self.load_all(&[image.to_load()])?;
        match loaded.first() {
            Some(&(handle, fd)) => self.runtime_loaded(handle, fd, clones, &image),
            None => Err(self.runtime_refused(refused)),
        }
    }

    /// The runtime's image for this process. Its constructor starts the keeper as it
    /// loads (see `keeper`), unless the process has one already, or for the tests that
    /// show what the keeper prevents.
    pub fn runtime_image(&self) -> Result<RuntimeImage> {
        crate::remote::runtime::layout()?;
        let keeper = !crate::os::fault::switched_on("no-keeper") && self.record.keeper.is_none();
        Ok(RuntimeImage {
            bytes: if keeper {
                Cow::Borrowed(crate::remote::runtime::IMAGE)
            } else {
                Cow::Owned(crate::remote::runtime::image_without_keeper()?)
            },
            keeper,
        })
    }

    /// Record the runtime `image` loaded as `handle` from the target's `fd`, and the
    /// keeper it started (`clones`: how many threads the tracer had seen created before
    /// the load).
    pub fn runtime_loaded(
        &mut self,
        handle: u64,
        fd: i32,
        clones: usize,
        image: &RuntimeImage,
    ) -> Result<RuntimeRecord> {
        // Loaded, its keeper started, neither recorded yet.
        crate::os::fault::point("runtime:loaded");
        let base = self.proc.read_u64(handle)?;
        let r = RuntimeRecord { handle, base, fd };
        self.record.runtime = Some(r.clone());
        // A new copy (perhaps where an unloaded one was): its lists are empty.
        self.states_written = None;
        if image.keeper {
            self.keeper_started(base, clones)?;
        }
        Ok(r)
    }

    /// The error of a runtime the loader refused, with its text.
    pub fn runtime_refused(&self, text: Option<String>) -> crate::error::Error {
        err!(
            Failed,
            "process {} could not load the rlivepatch runtime: {}",
            self.proc.pid,
            text.unwrap_or_default()
        )
    }

    /// Tell the runtime which states belong to the patch whose callbacks run next
    /// (`current`) and to the patches installed before it (`prev`, oldest first).
    pub fn set_states(&mut self, current: &[u64], prev: &[u64]) -> Result<()> {
        let Some(rt) = &self.record.runtime else {
            return Ok(());
        };
        // The same as last written by this run (the callbacks of one operation mostly
        // see the same lists): nothing to write.
        let key = (rt.base, current.to_vec(), prev.to_vec());
        if self.states_written.as_ref() == Some(&key) {
            return Ok(());
        }
        let at = rt.base + crate::remote::runtime::layout()?.registry;
        let mut b = Vec::with_capacity(8 + 8 * (2 + 2 * crate::remote::runtime::MAX_STATES));
        let mut half = |list: &[u64]| {
            let list = &list[..list.len().min(crate::remote::runtime::MAX_STATES)];
            b.extend((list.len() as u64).to_le_bytes());
            for i in 0..crate::remote::runtime::MAX_STATES {
                b.extend(list.get(i).copied().unwrap_or(0).to_le_bytes());
            }
        };
        half(current);
        half(prev);
        self.proc.write(at + 8, &b)?;
        self.states_written = Some(key);
        Ok(())
    }

    /// Live shadow variables in the process.
    pub fn shadow_count(&self) -> Result<u64> {
        match &self.record.runtime {
            Some(rt) => self
                .proc
                .read_u64(rt.base + crate::remote::runtime::layout()?.count),
            None => Ok(0),
        }
    }

    /// Unload the runtime when no patch is left and no shadow variable lives, then end
    /// the keeper (the last dlclose may need it). Either failing leaves it recorded.
    pub fn unload_runtime_if_idle(&mut self) -> Result<()> {
        let idle = self.record.patches.is_empty()
            && self.record.hook.is_none()
            && self.shadow_count()? == 0;
        if !idle {
            return Ok(());
        }
        if let Some(rt) = self.record.runtime.take()
            && let Err(e) = self.unload(rt.handle, rt.fd)
        {
            self.record.runtime = Some(rt);
            return Err(e);
        }
        crate::os::fault::point("runtime:unloaded");
        self.stop_keeper()
    }
}
