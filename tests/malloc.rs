//! `interp_kit::base::malloc::tune` puts glibc's settings in force: a 16 MiB buffer (over glibc's
//! default 128 KiB mmap threshold) comes from the heap and stays there when freed, and a 40 MiB
//! one (over the fixed 32 MiB threshold) is still mmapped. Its own test binary: one process, no
//! other test allocating in between.
#![cfg(all(target_os = "linux", target_env = "gnu"))]
use interp_kit::base::malloc::{tune, Malloc, GLIBC_ENV};

fn mmapped_chunks() -> usize {
    unsafe { libc::mallinfo2() }.hblks
}

#[test]
fn tune_fixes_the_mmap_threshold_and_keeps_freed_heap() {
    let user_set = GLIBC_ENV.iter().any(|k| std::env::var_os(k).is_some())
        || std::env::var("INTERP_KIT_MALLOC").is_ok_and(|v| v == "default");
    let outcome = tune();
    assert_eq!(tune(), outcome, "a second call reports the first one's outcome");
    if user_set {
        assert_eq!(outcome, Malloc::LeftAlone);
        return;
    }
    assert_eq!(outcome, Malloc::Tuned);

    let before = mmapped_chunks();
    let small = std::hint::black_box(vec![1u8; 16 << 20]);
    assert_eq!(mmapped_chunks(), before, "16 MiB should come from the heap after tune()");
    drop(small);
    let kept = unsafe { libc::mallinfo2() }.fordblks;
    assert!(kept >= 16 << 20, "the freed 16 MiB should stay in the heap (free bytes {kept})");

    let large = std::hint::black_box(vec![1u8; 40 << 20]);
    assert_eq!(mmapped_chunks(), before + 1, "40 MiB is over the 32 MiB threshold: mmapped");
    drop(large);
    assert_eq!(mmapped_chunks(), before);
}
