#![no_main]
// Decode and the shard hash must never panic or read past the frame, for any bytes and link type.
use vmsentry::decode::Tunnels;
use vmsentry::vocab::PacketTime;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&lt, frame)) = data.split_first() else { return };
    let lt = [0, 1, 101, 108, 113, 228, 229, 276][usize::from(lt) % 8];
    let n = frame.len() as u32;
    let tun = Tunnels::new(&[4789, 8472], 6081).unwrap_or_default();
    let _ = vmsentry::decode::decode(&tun, lt, PacketTime::ZERO, n.saturating_add(u32::from(data[0])), n, frame);
    let _ = vmsentry::decode::flow_hash(&tun, lt, frame);
});
