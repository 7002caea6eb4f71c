//! vmsentry: a packet-level traffic anomaly monitor for virtualized clouds.
//!
//! It watches a switch mirror port or replays pcap files, measures each VM's
//! traffic to and from its virtual switch, grades every VM LOW / MEDIUM /
//! HIGH, checks that the hypervisor a VM sits behind carries a valid
//! signature of the cluster, and hands quarantine or migrate actions to a
//! backend.
//!
//! The modules are declared below in the order the data flows, and each
//! imports only modules declared before it (the `layering` test at the end
//! of this file reads every source and fails on an import that runs
//! upstream, so there is no cycle):
//!
//! 0. [`vocab`]: the words every stage shares, at the bottom: [`vocab::Mac`],
//!    [`vocab::PacketTime`] (packet time, the only clock results depend
//!    on), link types, [`vocab::Level`], [`vocab::Reason`],
//!    [`vocab::Action`] and its kind, the inventory entries. [`small_file`]:
//!    how every rules, key and secret file is read (regular, size-capped,
//!    never blocking).
//! 1. [`capture`]: frames from pcap/pcapng files (a native reader: plain,
//!    gzip'd or standard input) or a live interface (libpcap), behind one
//!    [`capture::PacketSource`] trait.
//! 2. [`decode`]: each frame into a small `Copy` [`decode::Observation`]
//!    (etherparse, lax: damage is counted by kind, never a panic).
//! 3. [`measure`]: per-MAC bytes and packets each way, RTT samples from
//!    per-shard flow state, and placement evidence (where VMs send from,
//!    announces, migration streams); all partial per shard, merged per window.
//! 4. [`trust`]: the cluster key, HMAC hypervisor signatures, move tokens;
//!    and [`gate`], libvirt's `qemu` hook on the hypervisors: it refuses a
//!    live migration to a host that is not a signed hypervisor, or without a
//!    valid single-use token in the domain XML, before any page moves, and
//!    records each decision in a file the sensor follows.
//! 5. [`detect`]: levels per VM (rate, volume, RTT peaks, migration,
//!    signature, clone, `ungated`: a move without the gate's approval) with
//!    hysteresis, and where each VM lives and moves.
//! 6. [`policy`]: level × signature → alert, quarantine or migrate, once per
//!    rise, within the storm limits; and evacuation plans (every VM off a
//!    hypervisor, spread over signed ones by free RAM).
//! 7. [`action`]: the [`action::ActionSink`] contract, the backends (log,
//!    exec, webhook, Alertmanager, libvirt, OpenStack), the journal and the
//!    dispatcher.
//! 8. [`ids`]: moving-target defense's input: Suricata and Snort alert files
//!    followed (inotify, rotation, a checkpoint).
//! 9. [`serve`]: Prometheus metrics and the JSON API over HTTP; the live
//!    capture and the dispatcher report to it through their own `Observer`
//!    traits, so they know no metric.
//! 10. [`config`]: the rules file, parsed, its files read, validated, and
//!     built into each stage's own config type (a stage never sees the rules
//!     file: `detect::Config`, `policy::Config`, `action::Backend`, ...).
//! 11. [`event`]: the JSON-lines events' schema.
//! 12. [`pipeline`]: runs the stages: the reader batches observations to
//!     shard workers by a direction-independent flow hash (measure);
//!     packet-time watermarks close windows at the merge thread, so results
//!     do not depend on the thread count. The merge's jobs are parts in
//!     files of their own: the window close (detect, then policy and
//!     dispatch), moving-target defense (an IDS alert's victim, or a
//!     hypervisor with `mtd.host_high_vms` HIGH VMs, evacuated through
//!     policy and action), reload, and publishing (events, metrics, the
//!     API's views).
//! 13. [`report`]: the events afterwards, as an HTML page of SVG charts.
//!
//! Not shipped: `synth` (scenario captures with known ground truth),
//! compiled only for tests, benchmarks and the dev-only `vmsentry-synth`
//! tool (the `synth` feature).

#![forbid(unsafe_code)]

// In data-flow order: each module imports only modules declared before it
// (the `layering` test below reads the sources and holds every file to it).
// One module per group, so that rustfmt keeps the order.
pub mod vocab;

pub mod small_file;

pub mod capture;

pub mod decode;

/// Dev-only (the `synth` feature: this crate's tests and benchmarks, and the
/// `vmsentry-synth` tool in `crates/vmsentry-synth`); not in the shipped library.
#[cfg(any(test, feature = "synth"))]
pub mod synth;

pub mod measure;

pub mod trust;

pub mod gate;

pub mod detect;

pub mod policy;

pub mod action;

pub mod ids;

pub mod serve;

pub mod config;

pub mod event;

pub mod pipeline;

pub mod report;

#[cfg(test)]
mod layering {
    //! The modules above, in the order they are declared, are the data flow:
    //! each may import (`crate::x`) only modules declared before it, so no
    //! import runs upstream and there is no cycle. Read from the sources, so
    //! a new upward import fails here. Unit tests (`tests.rs`, `mod tests`)
    //! may use anything: they build fixtures with `config` and `synth`.
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    /// `pub mod x;` of lib.rs, in order.
    fn order(lib: &str) -> Vec<String> {
        lib.lines()
            .filter_map(|l| l.trim().strip_prefix("pub mod ").and_then(|r| r.strip_suffix(';')))
            .map(str::to_string)
            .collect()
    }

    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// The source without comments and without its unit tests.
    fn code(src: &str) -> String {
        let src = src.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        src.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
    }

    /// The top-level modules a source names as `crate::x`, also inside
    /// `use crate::{a::b, c}` groups that span lines.
    fn imports(code: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // The group's top-level items, to its matching brace.
                let (mut depth, mut item_start) = (0usize, true);
                for (k, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if item_start && !c.is_whitespace() => {
                            item_start = false;
                            out.insert(ident(&group[k..]));
                        }
                        _ => {}
                    }
                }
            } else {
                out.insert(ident(rest));
            }
        }
        out.remove("");
        out
    }

    #[test]
    fn every_module_imports_only_modules_declared_before_it() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let order = order(&std::fs::read_to_string(root.join("lib.rs")).unwrap());
        assert!(order.len() > 15 && order[0] == "vocab", "{order:?}");
        let mut all = Vec::new();
        files(&root, &mut all);
        let mut upward = Vec::new();
        let mut seen = 0;
        for f in &all {
            let rel = f.strip_prefix(&root).unwrap();
            let first = rel.iter().next().unwrap().to_string_lossy();
            let module = first.trim_end_matches(".rs");
            // The binary and its command line sit above everything.
            let Some(at) = order.iter().position(|m| m == module) else { continue };
            let name = rel.to_string_lossy();
            if name.ends_with("tests.rs") || name.contains("/tests/") {
                continue;
            }
            seen += 1;
            for m in imports(&code(&std::fs::read_to_string(f).unwrap())) {
                match order.iter().position(|o| *o == m) {
                    Some(i) if i < at || m == module => {}
                    Some(_) => upward.push(format!("src/{name} ({module}) imports {m}, declared after it")),
                    None => upward.push(format!("src/{name} imports crate::{m}, not a module of lib.rs")),
                }
            }
        }
        assert!(seen > 50, "{seen} files read");
        assert!(upward.is_empty(), "imports that run upstream (or a cycle):\n{}", upward.join("\n"));
    }

    #[test]
    fn the_import_reader_sees_groups_and_paths() {
        let src = "use crate::a::X;\nuse crate::{\n    b::{Y, Z},\n    c,\n};\nfn f() { crate::d::g(); } // crate::e\n";
        let got: Vec<String> = imports(&code(src)).into_iter().collect();
        assert_eq!(got, ["a", "b", "c", "d"]);
    }
}
