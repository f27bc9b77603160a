//! How the instance pool resets a slot's memory for the next instance: with the `PAGEMAP_SCAN`
//! ioctl (only the pages the last instance dirtied), or in full. The scan is used only when this
//! process cannot swap: wasmtime 48's pagemap reset skips dirty pages that are swapped out (not
//! present), so the next instance in the slot, maybe another listener's, would read them
//! (bytecodealliance/wasmtime#14357). The full reset memsets the kept-resident part (which
//! brings such a page back and zeroes it) and decommits the rest (which drops its swap entry).

use std::path::Path;

/// The slot reset chosen, and why (logged when the pool is built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotReset {
    /// Whether the pool may reset slots with `PAGEMAP_SCAN` (where the kernel has it, ≥ 6.7).
    pub(crate) pagemap_scan: bool,
    /// Why, for the log.
    pub(crate) reason: &'static str,
}

/// What the choice is made from: the contents of the files that tell whether this process can
/// swap, `None` (or nothing) where a file is missing or unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SwapFacts {
    /// `/proc/swaps`: a header line, then one line per active swap area.
    pub(crate) proc_swaps: Option<String>,
    /// `memory.swap.max` (cgroup v2) of this process's cgroup and of its ancestors; a cgroup's
    /// swap is charged to every ancestor, so a `0` anywhere forbids swapping.
    pub(crate) cgroup_swap_max: Vec<String>,
}

impl SwapFacts {
    /// Reads the facts of this process: `/proc/swaps`, and `memory.swap.max` along its
    /// cgroup v2 path under `/sys/fs/cgroup` (from `/proc/self/cgroup`; the root's own file when
    /// the path is not there, as in a container with its own cgroup namespace).
    pub(crate) fn read() -> Self {
        let read = |path: &Path| std::fs::read_to_string(path).ok();
        let root = Path::new("/sys/fs/cgroup");
        let mut cgroup_swap_max = Vec::new();
        let path = read(Path::new("/proc/self/cgroup"))
            .and_then(|text| cgroup2_path(&text).map(str::to_owned))
            .unwrap_or_default();
        let mut dir = root.join(path.trim_start_matches('/'));
        while dir.starts_with(root) {
            cgroup_swap_max.extend(read(&dir.join("memory.swap.max")));
            if !dir.pop() {
                break;
            }
        }
        Self {
            proc_swaps: read(Path::new("/proc/swaps")),
            cgroup_swap_max,
        }
    }
}

/// The cgroup v2 path of a process from its `/proc/PID/cgroup` (the `0::PATH` line).
fn cgroup2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Chooses the slot reset: the pagemap scan when the process cannot swap (no active swap area,
/// or a cgroup v2 `memory.swap.max` of 0), the full reset otherwise, and when that cannot be
/// told. (cgroup v1's `memory.memsw.limit_in_bytes` equal to `memory.limit_in_bytes` does not
/// tell: it bounds memory plus swap, and global memory pressure may still swap out a cgroup
/// below its limit.)
pub(crate) fn slot_reset(facts: &SwapFacts) -> SlotReset {
    if facts.cgroup_swap_max.iter().any(|max| max.trim() == "0") {
        return SlotReset {
            pagemap_scan: true,
            reason: "this process's cgroup may not swap (memory.swap.max is 0)",
        };
    }
    match &facts.proc_swaps {
        Some(swaps) if swaps.lines().skip(1).all(|l| l.trim().is_empty()) => SlotReset {
            pagemap_scan: true,
            reason: "no swap area is active (/proc/swaps)",
        },
        Some(_) => SlotReset {
            pagemap_scan: false,
            reason: "swap is on and this process may use it: wasmtime's pagemap scan would \
                     leave swapped-out pages of an instance to the next one in its slot",
        },
        None => SlotReset {
            pagemap_scan: false,
            reason: "/proc/swaps cannot be read, so swap may be on: wasmtime's pagemap scan \
                     would leave swapped-out pages of an instance to the next one in its slot",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
    const ONE_SWAP: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                            /swapfile                               file\t\t2097148\t\t0\t\t-2\n";

    fn facts(proc_swaps: Option<&str>, swap_max: &[&str]) -> SwapFacts {
        SwapFacts {
            proc_swaps: proc_swaps.map(str::to_owned),
            cgroup_swap_max: swap_max.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn without_an_active_swap_area_the_pagemap_scan_is_used() {
        for (swaps, swap_max) in [
            (HEADER, &[][..]),
            (HEADER, &["max\n"][..]),
            (&format!("{HEADER}\n")[..], &["max\n"][..]),
        ] {
            let reset = slot_reset(&facts(Some(swaps), swap_max));
            assert!(reset.pagemap_scan, "{swaps:?} {swap_max:?}");
            assert!(reset.reason.contains("/proc/swaps"), "{}", reset.reason);
        }
    }

    #[test]
    fn with_swap_on_the_pagemap_scan_is_used_only_when_a_cgroup_forbids_swapping() {
        // memory.swap.max of 0 in this process's cgroup, or in an ancestor's.
        for swap_max in [
            &["0\n"][..],
            &["max\n", "0\n"],
            &["max\n", "1073741824\n", "0"],
        ] {
            let reset = slot_reset(&facts(Some(ONE_SWAP), swap_max));
            assert!(reset.pagemap_scan, "{swap_max:?}");
            assert!(
                reset.reason.contains("memory.swap.max is 0"),
                "{}",
                reset.reason
            );
        }
        // No limit, a limit above 0, no cgroup v2 memory controller (cgroup v1): it may swap.
        for swap_max in [
            &["max\n"][..],
            &["1073741824\n", "max\n"],
            &[],
            &["", "00x"],
        ] {
            let reset = slot_reset(&facts(Some(ONE_SWAP), swap_max));
            assert!(!reset.pagemap_scan, "{swap_max:?}");
            assert!(reset.reason.contains("swap is on"), "{}", reset.reason);
        }
    }

    #[test]
    fn when_swap_cannot_be_told_the_full_reset_is_used() {
        for swap_max in [&[][..], &["max\n"]] {
            let reset = slot_reset(&facts(None, swap_max));
            assert!(!reset.pagemap_scan, "{swap_max:?}");
            assert!(reset.reason.contains("cannot be read"), "{}", reset.reason);
        }
        // A cgroup that may not swap decides even then.
        assert!(slot_reset(&facts(None, &["0\n"])).pagemap_scan);
    }

    #[test]
    fn the_cgroup_v2_path_is_read_from_the_0_line() {
        let v1_and_v2 = "4:memory:/process_api/x\n1:cpu:/\n0::/kubepods/pod1/c1\n";
        assert_eq!(cgroup2_path(v1_and_v2), Some("/kubepods/pod1/c1"));
        assert_eq!(cgroup2_path("0::/\n"), Some("/"));
        assert_eq!(cgroup2_path("4:memory:/a\n"), None);
    }
}
