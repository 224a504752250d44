//! At most two emulators at once on this machine (two cores; a third only
//! queues and makes every run slower), across processes: a run holds an
//! exclusive lock on one of two slot files for its whole duration.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::time::Duration;

/// How many emulators may run at once.
pub const SLOTS: usize = 2;

/// Where the slot files live: the machine's temporary directory, so that
/// runs from different checkouts (each with its own target directory)
/// share the two slots too.
pub fn machine_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("atoll-emulator-slots")
}

/// A held slot; dropping it (closing the file) releases the lock.
pub struct Slot {
    _file: File,
    pub index: usize,
}

/// Waits until a slot under `dir` is free and takes it.
pub fn acquire(dir: &Path) -> Result<Slot> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    loop {
        for index in 0..SLOTS {
            let path = dir.join(format!("emulator-slot-{index}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => return Ok(Slot { _file: file, index }),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_third_taker_waits_until_a_slot_is_released() {
        let dir = std::env::temp_dir().join(format!("atoll-slots-{}", std::process::id()));
        let a = acquire(&dir).unwrap();
        let b = acquire(&dir).unwrap();
        assert_ne!(a.index, b.index);
        let waiter = std::thread::spawn({
            let dir = dir.clone();
            move || acquire(&dir).unwrap().index
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !waiter.is_finished(),
            "a third emulator started while two ran"
        );
        let freed = b.index;
        drop(b);
        assert_eq!(waiter.join().unwrap(), freed);
        drop(a);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
