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
//! 13. [`cluster`]: many mirror ports: the pipeline cut at its seam between
//!     the shards and the merge; sensors (`vmsentry sense`: capture, decode,
//!     shards) publish each window's partial to NATS JetStream, a controller
//!     (`vmsentry control`) is the merge and everything after it, one acting
//!     at a time under a lease.
//! 14. [`report`]: the events afterwards, as an HTML page of SVG charts.
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

pub mod cluster;

pub mod report;

#[cfg(test)]
mod layering {
    //! The modules above, in the order they are declared, are the data flow:
    //! each may import only modules declared before it, so no import runs
    //! upstream and there is no cycle. Read from the sources (parsed with
    //! `syn`, following the `mod` declarations from this file), so a new
    //! upward import fails here: every `use` tree and every path, with
    //! `super::` and `self::` resolved against the file's module. Unit tests
    //! (items under `#[cfg(test)]`, such as `mod tests`) may use anything:
    //! they build fixtures with `config` and `synth`.
    use std::collections::BTreeSet;
    use std::path::Path;
    use syn::visit::Visit;

    /// Whether an item is compiled only for tests (`#[cfg(test)]`).
    fn test_only(attrs: &[syn::Attribute]) -> bool {
        attrs.iter().any(|a| a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
    }

    /// The top-level modules of lib.rs (any visibility, not test-only), in order.
    fn order(lib: &syn::File) -> Vec<String> {
        lib.items
            .iter()
            .filter_map(|i| match i {
                syn::Item::Mod(m) if !test_only(&m.attrs) => Some(m.ident.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Walks one file: the top-level modules its paths reach, resolved from
    /// `module` (the file's module path, empty for lib.rs), and the
    /// `mod x;` it declares (as module paths), both outside test-only items.
    struct Reader {
        module: Vec<String>,
        reached: BTreeSet<String>,
        children: Vec<Vec<String>>,
    }

    impl Reader {
        /// The top-level module an absolute or relative path names, if it
        /// names one of this crate (`crate::`, `super::`, `self::`; a bare
        /// first segment is an extern crate or an item in scope).
        fn reach(&mut self, segments: &[String]) {
            let mut at = self.module.clone();
            let mut rest = segments;
            match rest.first().map(String::as_str) {
                Some("crate") => {
                    at.clear();
                    rest = &rest[1..];
                }
                Some("self") => rest = &rest[1..],
                Some("super") => {
                    while rest.first().is_some_and(|s| s == "super") {
                        at.pop();
                        rest = &rest[1..];
                    }
                }
                // An extern crate, or an item in scope.
                _ => return,
            }
            let top = at.first().or(rest.first()).cloned();
            if let Some(top) = top {
                self.reached.insert(top);
            }
        }

        fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
            match tree {
                syn::UseTree::Path(p) => {
                    prefix.push(p.ident.to_string());
                    self.use_tree(prefix, &p.tree);
                    prefix.pop();
                }
                syn::UseTree::Name(n) => {
                    prefix.push(n.ident.to_string());
                    self.reach(prefix);
                    prefix.pop();
                }
                syn::UseTree::Rename(r) => {
                    prefix.push(r.ident.to_string());
                    self.reach(prefix);
                    prefix.pop();
                }
                // `use super::*` from a top-level module globs the crate root.
                syn::UseTree::Glob(_) => {
                    prefix.push("*".into());
                    self.reach(prefix);
                    prefix.pop();
                }
                syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(prefix, t)),
            }
        }
    }

    impl<'a> Visit<'a> for Reader {
        fn visit_item(&mut self, i: &'a syn::Item) {
            let attrs = match i {
                syn::Item::Const(x) => &x.attrs,
                syn::Item::Enum(x) => &x.attrs,
                syn::Item::Fn(x) => &x.attrs,
                syn::Item::Impl(x) => &x.attrs,
                syn::Item::Macro(x) => &x.attrs,
                syn::Item::Mod(x) => &x.attrs,
                syn::Item::Static(x) => &x.attrs,
                syn::Item::Struct(x) => &x.attrs,
                syn::Item::Trait(x) => &x.attrs,
                syn::Item::Type(x) => &x.attrs,
                syn::Item::Union(x) => &x.attrs,
                syn::Item::Use(x) => &x.attrs,
                _ => return syn::visit::visit_item(self, i),
            };
            if !test_only(attrs) {
                syn::visit::visit_item(self, i);
            }
        }

        fn visit_impl_item(&mut self, i: &'a syn::ImplItem) {
            let test = match i {
                syn::ImplItem::Fn(f) => test_only(&f.attrs),
                syn::ImplItem::Const(c) => test_only(&c.attrs),
                _ => false,
            };
            if !test {
                syn::visit::visit_impl_item(self, i);
            }
        }

        fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
            self.module.push(m.ident.to_string());
            if m.content.is_none() {
                self.children.push(self.module.clone());
            }
            syn::visit::visit_item_mod(self, m);
            self.module.pop();
        }

        fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
            self.use_tree(&mut Vec::new(), &u.tree);
        }

        fn visit_path(&mut self, p: &'a syn::Path) {
            let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            if p.leading_colon.is_none() {
                self.reach(&segments);
            }
            syn::visit::visit_path(self, p);
        }
    }

    /// One file's reach: the top-level modules it names, and its `mod x;`.
    fn read(src: &str, module: &[&str]) -> (BTreeSet<String>, Vec<Vec<String>>) {
        let file = syn::parse_file(src).unwrap();
        let mut r = Reader {
            module: module.iter().map(|s| s.to_string()).collect(),
            reached: BTreeSet::new(),
            children: Vec::new(),
        };
        r.visit_file(&file);
        (r.reached, r.children)
    }

    /// The top-level modules a source reaches, from `module`.
    fn imports(src: &str, module: &[&str]) -> BTreeSet<String> {
        read(src, module).0
    }

    #[test]
    fn every_module_imports_only_modules_declared_before_it() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
        let order = order(&syn::parse_file(&lib).unwrap());
        assert!(order.len() > 15 && order[0] == "vocab", "{order:?}");
        let mut upward = Vec::new();
        let mut seen = 0;
        // From lib.rs down the `mod x;` declarations that are not test-only.
        let mut todo: Vec<Vec<String>> = Vec::new();
        let (_, top) = read(&lib, &[]);
        todo.extend(top);
        while let Some(module) = todo.pop() {
            let dir: std::path::PathBuf = module.iter().collect();
            let flat = root.join(&dir).with_extension("rs");
            let file = if flat.exists() { flat } else { root.join(&dir).join("mod.rs") };
            let name = file.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            let src = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("src/{name}: {e}"));
            let path: Vec<&str> = module.iter().map(String::as_str).collect();
            let (reached, children) = read(&src, &path);
            todo.extend(children);
            seen += 1;
            let at = order.iter().position(|m| *m == module[0]).unwrap();
            for m in reached {
                match order.iter().position(|o| *o == m) {
                    Some(i) if i < at || m == module[0] => {}
                    Some(_) => upward.push(format!("src/{name} ({}) imports {m}, declared after it", module[0])),
                    None => upward.push(format!("src/{name} reaches crate::{m}, not a module of lib.rs")),
                }
            }
        }
        assert!(seen > 50, "{seen} files read");
        assert!(upward.is_empty(), "imports that run upstream (or a cycle):\n{}", upward.join("\n"));
    }

    #[test]
    fn the_import_reader_sees_groups_and_paths() {
        let src = "use crate::a::X;\nuse crate::{\n    b::{Y, Z},\n    c,\n};\nfn f() { crate::d::g(); let _ = \"// crate::e\"; crate::f::h(); } // crate::g\nuse std::io;\n";
        let got: Vec<String> = imports(src, &["m"]).into_iter().collect();
        assert_eq!(got, ["a", "b", "c", "d", "f"]);
    }

    #[test]
    fn the_import_reader_resolves_super_and_self() {
        // `super` from a top-level module's mod.rs is the crate root.
        let src = "use std::fmt;\nuse super::config::Rules;\n";
        assert_eq!(imports(src, &["detect"]).into_iter().collect::<Vec<_>>(), ["config"]);
        // Twice up from detect::level.
        let src = "use super::super::config::Rules;\nuse super::Level;\n";
        assert_eq!(imports(src, &["detect", "level"]).into_iter().collect::<Vec<_>>(), ["config", "detect"]);
        // In an expression, and `self` within the module.
        let src = "fn f() { let _ = super::pipeline::run(); self::g(); }\n";
        assert_eq!(imports(src, &["policy"]).into_iter().collect::<Vec<_>>(), ["pipeline", "policy"]);
        let src = "use super::*;\n";
        assert_eq!(imports(src, &["policy"]).into_iter().collect::<Vec<_>>(), ["*"]);
    }

    #[test]
    fn the_import_reader_reads_past_the_unit_tests() {
        let src = "use crate::vocab::Mac;\n#[cfg(test)]\nmod tests;\nuse crate::pipeline::Options;\n\
                   #[cfg(test)]\nmod inline { use crate::config::Rules; }\n#[cfg(test)]\nuse crate::synth::X;\n\
                   mod inner { use super::super::report::Y; }\n";
        let (got, children) = read(src, &["policy"]);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["pipeline", "report", "vocab"]);
        assert_eq!(children, Vec::<Vec<String>>::new(), "mod tests; is test-only, inner is inline");
        let (_, children) = read("mod a;\n#[cfg(test)]\nmod tests;\npub(crate) mod b;\n", &["x"]);
        assert_eq!(children, [vec!["x".to_string(), "a".into()], vec!["x".into(), "b".into()]]);
    }

    #[test]
    fn every_top_level_module_is_in_the_order() {
        let lib = "pub mod vocab;\nmod quiet;\n#[cfg(any(test, feature = \"synth\"))]\npub mod synth;\npub(crate) mod c;\n#[cfg(test)]\nmod layering {}\n";
        assert_eq!(order(&syn::parse_file(lib).unwrap()), ["vocab", "quiet", "synth", "c"]);
    }
}
