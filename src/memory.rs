//! The process's allocator: jemalloc, set up to hand freed pages back to
//! the OS within about a second.
//!
//! Why not glibc's malloc: an idle keep-alive connection keeps a few small
//! allocations (its parked task, a 128-byte read buffer, the socket) that
//! were made among the large, short-lived ones of the request it served
//! (the serving task, I/O buffers). glibc can only return whole free pages,
//! and those small survivors pin them, even after `malloc_trim`. jemalloc
//! keeps each size class in slabs of its own, so the survivors share pages
//! and the rest is purged (docs/performance-notes.md has the figures, from
//! bench-scripts/idle-rss).

use std::ffi::{CStr, c_char};

use tikv_jemalloc_sys::mallctl;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's compile-time options (read before `main`): purge dirty pages
/// after one second instead of ten, and skip the "muzzy" (MADV_FREE) stage,
/// whose pages still count in RSS until the kernel needs them.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: ConfString = ConfString(c"dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

#[repr(transparent)]
struct ConfString(*const c_char);

// SAFETY: it points at a 'static, immutable C string.
unsafe impl Sync for ConfString {}

/// Hands the calling thread's freed pages back to the OS now, rather than
/// when decay would. For after a wave of connections went idle.
pub fn release_freed_memory() {
    let Some(arena) = thread_arena() else {
        return;
    };
    let name = format!("arena.{arena}.purge\0");
    // SAFETY: a NUL-terminated control name that takes no arguments.
    unsafe {
        mallctl(
            name.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

/// The jemalloc arena the calling thread allocates from.
fn thread_arena() -> Option<u32> {
    // SAFETY: "thread.arena" is an unsigned int.
    unsafe { read_control(c"thread.arena") }
}

/// Reads the jemalloc control value `name`, whose C type must be `T`.
unsafe fn read_control<T: Default>(name: &CStr) -> Option<T> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>();
    // SAFETY: `value` has room for `len` bytes, the size of `name`'s type.
    let rc = unsafe {
        mallctl(
            name.as_ptr(),
            (&mut value as *mut T).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0 && len == std::mem::size_of::<T>()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_is_the_allocator_and_takes_our_options() {
        // SAFETY: "opt.dirty_decay_ms" is an ssize_t.
        let decay: Option<isize> = unsafe { read_control(c"opt.dirty_decay_ms") };
        assert_eq!(decay, Some(1000));
        assert!(thread_arena().is_some());
        release_freed_memory();

        // A Rust allocation is one of jemalloc's ("arenas.lookup" fails
        // for a pointer it does not own).
        let boxed = Box::new([0u8; 100]);
        let mut pointer = boxed.as_ptr();
        let mut arena: u32 = u32::MAX;
        let mut len = std::mem::size_of::<u32>();
        let rc = unsafe {
            mallctl(
                c"arenas.lookup".as_ptr(),
                (&mut arena as *mut u32).cast(),
                &mut len,
                (&mut pointer as *mut *const u8).cast(),
                std::mem::size_of::<*const u8>(),
            )
        };
        assert_eq!(rc, 0, "a Box was not allocated by jemalloc");
        assert_ne!(arena, u32::MAX);
    }
}
