//! Decode microbenchmark: one frame of each common shape through `decode`, and the reader's shard hash.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::net::Ipv4Addr;
use vmsentry::decode::{decode, flow_hash, linktype, Tunnels};
use vmsentry::synth::{frames, mac};
use vmsentry::vocab::PacketTime;

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let (a, b) = (mac("02:00:00:00:00:01"), mac("02:00:00:00:00:02"));
    let (x, y) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    vec![
        ("tcp", frames::tcp4(a, b, x, y, 40000, 443, 1, Some(2), false, 1200)),
        ("udp", frames::udp4(a, b, x, y, 40000, 53, 100)),
        ("udp_qinq", frames::udp4_qinq(a, b, 10, 20, x, y, 40000, 53, 100)),
        ("arp", frames::arp(a, b, false, 1, a, x, b, y)),
        ("malformed_ipv4", frames::malformed(a, b, x, y).swap_remove(1).0),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for (name, f) in cases() {
        let n = f.len() as u32;
        g.bench_with_input(BenchmarkId::from_parameter(name), &f, |bench, f| {
            bench.iter(|| decode(&Tunnels::default(), linktype::ETHERNET, PacketTime::ZERO, n, n, black_box(f)))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("flow_hash");
    g.throughput(Throughput::Elements(1));
    for (name, f) in cases() {
        g.bench_with_input(BenchmarkId::from_parameter(name), &f, |bench, f| {
            bench.iter(|| flow_hash(&Tunnels::default(), linktype::ETHERNET, black_box(f)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
