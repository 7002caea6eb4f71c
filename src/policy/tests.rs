use super::*;
use crate::config::Rules;
use crate::detect::Detector;
use crate::trust::ClusterKey;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const KEY: [u8; 32] = [b'k'; 32];

/// Rules from text after a `[cluster]` named "t" with the key [`KEY`].
fn rules(body: &str) -> Rules {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("k");
    std::fs::write(&k, KEY).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!("[cluster]\nname = \"t\"\nkey_file = \"k\"\n{body}");
    Rules::from_str_in(d.path(), Path::new("t.toml"), &text).unwrap()
}

/// A `[[hypervisor]]` with MAC 52:54:00:00:00:NN; signed, or with a signature that does not verify.
fn hv(id: &str, nn: u8, ram_mb: Option<u64>, signed: bool) -> String {
    let mac: Mac = format!("52:54:00:00:00:{nn:02x}").parse().unwrap();
    let sig = if signed { ClusterKey::from_bytes(&KEY).unwrap().sign("t", id, mac) } else { "0".repeat(64) };
    let ram = ram_mb.map_or(String::new(), |r| format!("ram_mb = {r}\n"));
    format!("[[hypervisor]]\nid = \"{id}\"\nmacs = [\"{mac}\"]\nsignature = \"{sig}\"\n{ram}")
}

/// A `[[vm]]` with MAC fa:16:3e:00:00:NN.
fn vm(name: &str, nn: u8, ram_mb: u64, on: &str) -> String {
    format!("[[vm]]\nname = \"{name}\"\nmac = \"fa:16:3e:00:00:{nn:02x}\"\nram_mb = {ram_mb}\nhypervisor = \"{on}\"\n")
}

struct World {
    rules: Rules,
    policy: Policy,
    vms: Vec<VmState>,
}

fn world(body: &str) -> World {
    let rules = rules(body);
    let registry = Registry::build(&rules.key, &rules.cluster, &rules.hypervisors);
    let vms = Detector::new(&rules, registry.clone()).vms().to_vec();
    World { policy: Policy::new(&rules, registry), rules, vms }
}

fn change(vm: usize, from: Level, to: Level, at_s: i64) -> Change {
    let t = PacketTime::from_micros(at_s * 1_000_000);
    Change {
        vm,
        from,
        to,
        reason: Reason::Rate,
        direction: None,
        bps: 0,
        pps: 0,
        horizon_bytes: None,
        limit_bytes: None,
        window_start: t,
        window_end: t,
    }
}

impl World {
    fn hv_index(&self, id: &str) -> usize {
        self.rules.hypervisors.iter().position(|h| h.id == id).unwrap()
    }

    /// The decision for VM `i` rising LOW to `to` at `at_s`, on the hypervisor the rules place it on.
    fn rise(&mut self, i: usize, to: Level, at_s: i64) -> Option<Decision> {
        let on = self.rules.vms[i].hypervisor;
        self.rise_on(i, to, at_s, on, true)
    }

    fn rise_on(&mut self, i: usize, to: Level, at_s: i64, on: Option<usize>, signed: bool) -> Option<Decision> {
        let name = on.map(|h| self.rules.hypervisors[h].id.clone());
        let ram = self.rules.vms[i].ram_mb.unwrap_or(0);
        self.policy.decide(&change(i, Level::Low, to, at_s), &self.vms[i], signed, on, name, ram)
    }
}

fn act(d: Option<Decision>) -> Action {
    match d {
        Some(Decision::Act(a)) => a,
        other => panic!("expected an action, got {other:?}"),
    }
}

fn held(d: Option<Decision>) -> &'static str {
    match d {
        Some(Decision::Held(h)) => h.because,
        other => panic!("expected a hold, got {other:?}"),
    }
}

/// (kind, destination, note) of an action.
fn what(a: &Action) -> (ActionKind, Option<&str>, Option<&str>) {
    (a.kind, a.destination.as_deref(), a.note.as_deref())
}

const MIGRATE_EVERYTHING: &str =
    "[policy]\nMEDIUM = { signed = \"alert\", unsigned = \"quarantine\" }\nHIGH = { signed = \"migrate\", unsigned = \"quarantine\" }\n";

#[test]
fn a_rise_acts_by_level_and_signature_and_a_fall_or_a_stay_does_not() {
    let mut w = world(&format!("{}{}", hv("h1", 1, None, true), vm("a", 1, 1, "h1")));
    let a = act(w.rise_on(0, Level::Medium, 10, Some(0), true));
    assert_eq!((a.kind, a.id.as_str(), a.level, a.signed), (ActionKind::Alert, "10000000-1", Level::Medium, true));
    assert_eq!(a.hypervisor.as_deref(), Some("h1"));
    let a = act(w.rise_on(0, Level::Medium, 11, Some(0), false));
    assert_eq!((a.kind, a.id.as_str()), (ActionKind::Quarantine, "11000000-2"));
    let a = act(w.rise_on(0, Level::High, 12, Some(0), false));
    assert_eq!(a.kind, ActionKind::Quarantine);
    let fall = change(0, Level::High, Level::Medium, 13);
    assert_eq!(w.policy.decide(&fall, &w.vms[0], true, Some(0), None, 1), None);
    let stay = change(0, Level::Medium, Level::Medium, 14);
    assert_eq!(w.policy.decide(&stay, &w.vms[0], true, Some(0), None, 1), None);
}

#[test]
fn migrate_goes_to_the_signed_hypervisor_with_fewest_vms_ties_by_id() {
    let body = format!(
        "{MIGRATE_EVERYTHING}{}{}{}{}{}{}{}",
        hv("h1", 1, None, true),
        hv("h3", 3, None, true),
        hv("h2", 2, None, true),
        hv("bad", 4, None, false),
        vm("a", 1, 1, "h1"),
        vm("b", 2, 1, "h1"),
        vm("c", 3, 1, "h3"),
    );
    let mut w = world(&body);
    // h2 and bad have none, but bad is unsigned.
    assert_eq!(what(&act(w.rise(0, Level::High, 1))), (ActionKind::Migrate, Some("h2"), None));
    // Now h2 and h3 have one each (a counts at h2 while in flight): h2 by id.
    assert_eq!(what(&act(w.rise(1, Level::High, 2))), (ActionKind::Migrate, Some("h2"), None));
    // c is on h3; h1 has none left, h2 two.
    assert_eq!(what(&act(w.rise(2, Level::High, 3))), (ActionKind::Migrate, Some("h1"), None));
}

#[test]
fn migrate_without_a_signed_destination_with_room_becomes_an_alert_saying_why() {
    let body =
        format!("{MIGRATE_EVERYTHING}{}{}{}", hv("h1", 1, None, true), hv("bad", 2, None, false), vm("a", 1, 1, "h1"));
    let mut w = world(&body);
    let why = "migrate wanted, but no signed hypervisor other than the VM's own is registered";
    assert_eq!(what(&act(w.rise(0, Level::High, 1))), (ActionKind::Alert, None, Some(why)));
    let body = format!(
        "{MIGRATE_EVERYTHING}{}{}{}",
        hv("h1", 1, None, true),
        hv("h2", 2, Some(512), true),
        vm("a", 1, 1024, "h1")
    );
    let mut w = world(&body);
    let why = "migrate wanted, but no other signed hypervisor has room for its RAM";
    assert_eq!(what(&act(w.rise(0, Level::High, 1))), (ActionKind::Alert, None, Some(why)));
}

#[test]
fn storm_limits_hold_actions_back_and_let_them_go_in_packet_time() {
    let storm = "[storm]\nvm_cooldown_s = 10\nmax_actions_per_minute = 2\n";
    let body = format!(
        "{storm}{}{}{}{}",
        hv("h1", 1, None, true),
        vm("a", 1, 1, "h1"),
        vm("b", 2, 1, "h1"),
        vm("c", 3, 1, "h1")
    );
    let mut w = world(&body);
    act(w.rise(0, Level::Medium, 0));
    assert_eq!(held(w.rise(0, Level::Medium, 9)), "vm_cooldown");
    act(w.rise(0, Level::Medium, 10));
    // Two actions in the minute [0, 60): c waits for the first to leave it.
    assert_eq!(held(w.rise(2, Level::Medium, 59)), "rate_limit");
    act(w.rise(2, Level::Medium, 60));
    assert_eq!(held(w.rise(1, Level::Medium, 61)), "rate_limit");
    act(w.rise(1, Level::Medium, 70));
}

#[test]
fn migrations_in_flight_are_limited_per_hypervisor_and_cluster_wide_until_seen_or_timed_out() {
    let storm = "[storm]\nmax_migrations_per_hypervisor = 1\nmax_migrations = 2\nmigration_timeout_s = 100\n";
    let body = format!(
        "{MIGRATE_EVERYTHING}{storm}{}{}{}{}{}{}{}",
        hv("h1", 1, None, true),
        hv("h2", 2, None, true),
        hv("h3", 3, None, true),
        vm("a", 1, 1, "h1"),
        vm("b", 2, 1, "h1"),
        vm("c", 3, 1, "h2"),
        vm("d", 4, 1, "h3"),
    );
    let mut w = world(&body);
    assert_eq!(what(&act(w.rise(0, Level::High, 0))), (ActionKind::Migrate, Some("h2"), None));
    assert_eq!(held(w.rise(1, Level::High, 1)), "hypervisor_migrations");
    act(w.rise(2, Level::High, 2));
    assert_eq!(held(w.rise(3, Level::High, 3)), "cluster_migrations");
    // The wire shows a arrive at h2: one fewer in flight, and none leaving h1.
    let (h1, h2) = (w.hv_index("h1"), w.hv_index("h2"));
    w.policy.moved(w.vms[0].mac, Some(h1), Some(h2), 1);
    act(w.rise(1, Level::High, 4));
    // c's migration (decided at 2 s) times out at 102 s.
    assert_eq!(held(w.rise(3, Level::High, 101)), "cluster_migrations");
    act(w.rise(3, Level::High, 102));
}

#[test]
fn a_migration_seen_on_the_wire_is_counted_once_where_it_went() {
    let body = format!(
        "{MIGRATE_EVERYTHING}{}{}{}{}{}{}",
        hv("h1", 1, None, true),
        hv("h2", 2, None, true),
        hv("h3", 3, None, true),
        vm("a", 1, 1, "h1"),
        vm("b", 2, 1, "h1"),
        vm("c", 3, 1, "h3"),
    );
    let mut w = world(&body);
    assert_eq!(act(w.rise(0, Level::High, 0)).destination.as_deref(), Some("h2"));
    let (h1, h2) = (w.hv_index("h1"), w.hv_index("h2"));
    w.policy.moved(w.vms[0].mac, Some(h1), Some(h2), 1);
    // h1: b; h2: a; h3: c. One each: h2 by id (counted twice, a would make h2 hold two and send b to h3).
    assert_eq!(act(w.rise(1, Level::High, 1)).destination.as_deref(), Some("h2"));
}

#[test]
fn a_migration_that_never_happened_frees_its_room_when_it_times_out() {
    let storm = "[storm]\nmigration_timeout_s = 60\n";
    let body = format!(
        "{MIGRATE_EVERYTHING}{storm}{}{}{}{}",
        hv("h1", 1, None, true),
        hv("h2", 2, Some(1024), true),
        vm("a", 1, 1024, "h1"),
        vm("b", 2, 1024, "h1"),
    );
    let mut w = world(&body);
    assert_eq!(act(w.rise(0, Level::High, 0)).destination.as_deref(), Some("h2"));
    // a's migration is in flight: h2 is full.
    assert_eq!(act(w.rise(1, Level::High, 59)).kind, ActionKind::Alert);
    // It never showed on the wire; after 60 s h2 has room again.
    assert_eq!(what(&act(w.rise(1, Level::High, 60))), (ActionKind::Migrate, Some("h2"), None));
}

/// Reloads `w` with `body`, the VMs placed where the new rules put them.
fn reload(w: &mut World, body: &str) {
    let rules = rules(body);
    let registry = Registry::build(&rules.key, &rules.cluster, &rules.hypervisors);
    let placed: Vec<(Option<usize>, u64)> = rules.vms.iter().map(|v| (v.hypervisor, v.ram_mb.unwrap_or(0))).collect();
    w.policy.reload(&rules, registry, placed.into_iter());
    w.rules = rules;
}

#[test]
fn a_reload_keeps_cooldowns_the_minute_window_migrations_in_flight_and_the_id_sequence() {
    let storm = "[storm]\nvm_cooldown_s = 100\nmax_actions_per_minute = 3\nmax_migrations_per_hypervisor = 1\n";
    let vms = format!("{}{}{}{}", vm("a", 1, 1, "h1"), vm("b", 2, 1, "h1"), vm("c", 3, 1, "h2"), vm("d", 4, 1, "h2"));
    let (h1, h2, h3) = (hv("h1", 1, None, true), hv("h2", 2, None, true), hv("h3", 3, None, true));
    let mut w = world(&format!("{MIGRATE_EVERYTHING}{storm}{h1}{h2}{h3}{vms}"));
    assert_eq!(act(w.rise(0, Level::High, 0)).destination.as_deref(), Some("h3"));
    assert_eq!(act(w.rise(2, Level::Medium, 1)).id, "1000000-2");
    // The same rules with the hypervisors listed the other way round.
    reload(&mut w, &format!("{MIGRATE_EVERYTHING}{storm}{h3}{h2}{h1}{vms}"));
    // a's cooldown holds.
    assert_eq!(held(w.rise(0, Level::High, 2)), "vm_cooldown");
    // a's migration is still in flight leaving h1 (now the third entry).
    assert_eq!(held(w.rise(1, Level::High, 3)), "hypervisor_migrations");
    // Two actions (and two holds) in this minute: one more is allowed, with the next id.
    let a = act(w.rise(3, Level::High, 4));
    assert_eq!((a.id.as_str(), a.destination.as_deref()), ("4000000-3", Some("h1")));
    assert_eq!(held(w.rise(1, Level::Medium, 5)), "rate_limit");
}

#[test]
fn a_reload_keeps_a_migration_in_flight_counted_at_its_destination() {
    let vms = format!("{}{}", vm("a", 1, 1024, "h1"), vm("b", 2, 1024, "h1"));
    let body = format!("{MIGRATE_EVERYTHING}{}{}{vms}", hv("h1", 1, None, true), hv("h2", 2, Some(1024), true));
    let mut w = world(&body);
    assert_eq!(act(w.rise(0, Level::High, 0)).destination.as_deref(), Some("h2"));
    reload(&mut w, &body);
    assert_eq!(act(w.rise(1, Level::High, 1)).kind, ActionKind::Alert, "h2's room is taken by a, in flight");
}
