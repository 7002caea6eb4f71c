//! Human units and wall-clock times for the report: bit/s, pps, bytes, ms, and UTC clock labels.

/// A rate or count in SI steps (1000): `32.0 Mbit/s`, `4.01 kpps`.
pub(crate) fn si(v: f64, unit: &str) -> String {
    let (s, prefix) = si_scale(v);
    format!("{} {prefix}{unit}", sig3(v / s))
}

/// Bytes in binary steps (1024): `1.10 MiB`.
pub(crate) fn bytes(v: f64) -> String {
    let mut s = 1.0;
    let mut i = 0;
    while v.abs() >= s * 1024.0 && i < 4 {
        s *= 1024.0;
        i += 1;
    }
    if i == 0 {
        return format!("{} B", trim(v));
    }
    format!("{} {}", sig3(v / s), ["", "KiB", "MiB", "GiB", "TiB"][i])
}

/// The SI step for `v`: its divisor and prefix.
pub(crate) fn si_scale(v: f64) -> (f64, &'static str) {
    let (mut s, mut prefix) = (1.0, "");
    for next in ["k", "M", "G", "T"] {
        if v.abs() < s * 1000.0 {
            break;
        }
        s *= 1000.0;
        prefix = next;
    }
    (s, prefix)
}

/// Three significant digits: `32.0`, `4.01`, `512`.
fn sig3(x: f64) -> String {
    if x.abs() >= 100.0 || x == x.round() && x.abs() >= 10.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x == 0.0 {
        "0".into()
    } else {
        format!("{x:.2}")
    }
}

/// A number without trailing zeros (an axis tick: `40`, `2.5`).
pub(crate) fn trim(x: f64) -> String {
    let s = format!("{:.3}", (x * 1000.0).round() / 1000.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Milliseconds, as measured: `110 ms`, `2.02 s` from 2020.
pub(crate) fn ms(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{} s", trim(v / 1000.0))
    } else {
        format!("{} ms", trim(v))
    }
}

/// A µs timestamp as UTC wall-clock: `22:13:29`, `22:13:29.500` or
/// `22:13:29.500123` (as precise as it is), with the date first when
/// `date` (a span that crosses midnight).
pub(crate) fn clock(us: i64, date: bool) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000) else {
        return format!("{us} µs");
    };
    let frac = us.rem_euclid(1_000_000);
    let mut s =
        if date { format!("{:04}-{:02}-{:02} ", t.year(), u8::from(t.month()), t.day()) } else { String::new() };
    s += &format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
    if frac % 1000 == 0 && frac != 0 {
        s += &format!(".{:03}", frac / 1000);
    } else if frac != 0 {
        s += &format!(".{frac:06}");
    }
    s
}

/// The day of a µs timestamp (for "does the span cross midnight").
pub(crate) fn day(us: i64) -> i64 {
    us.div_euclid(86_400_000_000)
}

/// Ticks for a time axis of `span_s` seconds from `t0_us`, at round
/// wall-clock times (multiples of 1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15,
/// 30 min, 1, 2, 3, 6, 12 h, days): their positions in seconds since `t0_us`
/// and the step.
pub(crate) fn time_ticks(t0_us: i64, span_s: f64) -> (Vec<f64>, f64) {
    const STEPS: [f64; 24] = [
        0.1,
        0.2,
        0.5,
        1.0,
        2.0,
        5.0,
        10.0,
        15.0,
        30.0,
        60.0,
        120.0,
        300.0,
        600.0,
        900.0,
        1800.0,
        3600.0,
        7200.0,
        10800.0,
        21600.0,
        43200.0,
        86400.0,
        172_800.0,
        604_800.0,
        2_592_000.0,
    ];
    let span = span_s.max(0.001);
    let step = STEPS.iter().copied().find(|s| span / s <= 8.0).unwrap_or(2_592_000.0);
    let step_us = (step * 1e6).round() as i64;
    let first = (t0_us.div_euclid(step_us) + i64::from(t0_us.rem_euclid(step_us) != 0)) * step_us;
    let mut ticks = Vec::new();
    let mut t = first;
    while (t - t0_us) as f64 / 1e6 <= span + 1e-9 && ticks.len() < 64 {
        ticks.push((t - t0_us) as f64 / 1e6);
        t += step_us;
    }
    (ticks, step)
}

/// The label of a tick at `x` seconds since `t0_us`, for ticks `step` apart.
pub(crate) fn tick_label(t0_us: i64, x: f64, step: f64) -> String {
    let us = t0_us + (x * 1e6).round() as i64;
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000) else {
        return String::new();
    };
    if step >= 86_400.0 {
        format!("{:02}-{:02}", u8::from(t.month()), t.day())
    } else if step >= 60.0 {
        format!("{:02}:{:02}", t.hour(), t.minute())
    } else if step >= 1.0 {
        format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
    } else {
        format!("{:02}:{:02}:{:02}.{}", t.hour(), t.minute(), t.second(), us.rem_euclid(1_000_000) / 100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_bytes_read_as_people_write_them() {
        assert_eq!(si(32_007_840.0, "bit/s"), "32.0 Mbit/s");
        assert_eq!(si(4010.0, "pps"), "4.01 kpps");
        assert_eq!(si(512.0, "bit/s"), "512 bit/s");
        assert_eq!(si(0.0, "pps"), "0 pps");
        assert_eq!(si(1.5e9, "bit/s"), "1.50 Gbit/s");
        assert_eq!(si(250_000.0, "pps"), "250 kpps");
        assert_eq!(bytes(1_153_536.0), "1.10 MiB");
        assert_eq!(bytes(29_378.0), "28.7 KiB");
        assert_eq!(bytes(100.0), "100 B");
        assert_eq!(ms(110.0), "110 ms");
        assert_eq!(ms(2.5), "2.5 ms");
        assert_eq!(ms(20_200.0), "20.2 s");
        assert_eq!(ms(29_990.0), "29.99 s");
        assert_eq!(trim(40.0), "40");
        assert_eq!(trim(2.5), "2.5");
    }

    #[test]
    fn clock_is_utc_and_as_precise_as_the_event() {
        let t = 1_700_086_409_000_000; // 2023-11-15T22:13:29Z
        assert_eq!(clock(t, false), "22:13:29");
        assert_eq!(clock(t + 500_000, false), "22:13:29.500");
        assert_eq!(clock(t + 123, false), "22:13:29.000123");
        assert_eq!(clock(t, true), "2023-11-15 22:13:29");
    }

    #[test]
    fn time_ticks_land_on_round_wall_clock_times() {
        let t0 = 1_700_086_400_300_000; // 22:13:20.3
        let (ticks, step) = time_ticks(t0, 30.0);
        assert_eq!(step, 5.0);
        assert_eq!(tick_label(t0, ticks[0], step), "22:13:25");
        assert!((ticks[0] - 4.7).abs() < 1e-9);
        assert_eq!(ticks.len(), 6);
        let (ticks, step) = time_ticks(t0, 3.0 * 3600.0);
        assert_eq!(step, 1800.0);
        assert_eq!(tick_label(t0, ticks[0], step), "22:30");
    }
}
