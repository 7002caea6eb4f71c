//! vmsentry: a packet-level traffic anomaly monitor for virtualized clouds.
//!
//! It watches a switch mirror port or replays pcap files, measures each VM's
//! traffic to and from its virtual switch, grades every VM LOW / MEDIUM /
//! HIGH, checks that the hypervisor a VM sits behind carries a valid
//! signature of the cluster, and hands quarantine or migrate actions to a
//! backend. The data flows through these stages, one module each:
//!
//! 1. [`capture`]: frames from pcap/pcapng files (a native reader: plain,
//!    gzip'd or standard input) or a live interface (libpcap), behind one
//!    [`capture::PacketSource`] trait.
//! 2. [`decode`]: each frame into a small `Copy` [`decode::Observation`]
//!    (etherparse, lax: damage is counted by kind, never a panic).
//! 3. [`pipeline`]: the reader batches observations to shard workers by a
//!    direction-independent flow hash; packet-time watermarks close windows
//!    so results do not depend on the thread count.
//! 4. [`measure`]: per-MAC bytes and packets each way, RTT samples from
//!    per-shard flow state, and placement evidence (where VMs send from,
//!    announces, migration streams); all partial per shard, merged per window.
//! 5. [`detect`]: levels per VM (rate, volume, RTT peaks, migration,
//!    signature, clone) with hysteresis, and where each VM lives and moves.
//! 6. [`trust`]: the cluster key, HMAC hypervisor signatures, move tokens.
//! 7. [`policy`]: level × signature → alert, quarantine or migrate, once per
//!    rise, within the storm limits; and evacuation plans (every VM off a
//!    hypervisor, spread over signed ones by free RAM).
//! 8. [`action`]: the [`action::ActionSink`] contract, the backends (log,
//!    exec, webhook, Alertmanager, libvirt, OpenStack), the journal and the
//!    dispatcher.
//!
//! Moving-target defense joins at the merge: [`ids`] follows Suricata and
//! Snort alert files (inotify, rotation, a checkpoint) and hands alerts to
//! the merge thread, which maps the victim address to a hypervisor or VM
//! ([`detect::Victim`]) and evacuates its host through [`policy`] and
//! [`action`]; a hypervisor with `mtd.host_high_vms` HIGH VMs is evacuated
//! the same way. Afterwards, [`report`] turns the events into an HTML page
//! of SVG charts.
//!
//! On the hypervisors, [`gate`] is libvirt's `qemu` hook: it refuses a live
//! migration to a host that is not a signed hypervisor, or without a valid
//! single-use token in the domain XML, before any page moves, and records
//! each decision in a file the sensor follows: a move the wire shows without
//! an approval is `ungated` ([`detect`]).
//!
//! Many mirror ports: [`cluster`] cuts the same pipeline at its seam
//! between the shards and the merge: sensors (`vmsentry sense`) run capture,
//! decode and the shards and publish each window's partial to NATS JetStream;
//! a controller (`vmsentry control`) is the merge and everything after it,
//! one acting at a time under a lease.
//!
//! Alongside: [`serve`] (Prometheus metrics and the JSON API over HTTP),
//! [`config`] (the rules file), [`event`] (JSON-lines events), [`time`]
//! (packet time, the only clock results depend on), [`small_file`] (how
//! every rules, key and secret file is read: regular, size-capped, never
//! blocking), and [`synth`] (scenario captures with known ground truth, for
//! tests and benchmarks).

#![forbid(unsafe_code)]

pub mod action;
pub mod capture;
pub mod cluster;
pub mod config;
pub mod decode;
pub mod detect;
pub mod event;
pub mod gate;
pub mod ids;
pub mod measure;
pub mod pipeline;
pub mod policy;
pub mod report;
pub mod serve;
pub mod small_file;
pub mod synth;
pub mod time;
pub mod trust;
