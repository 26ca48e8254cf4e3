//! The collector's own figures from `tests/vm/bench/collector.sh`: start-up time,
//! latency from a call's return to its line (at idle and under a flood), RSS idle
//! and after a flood, real loads under four flooders, and the drain rate of
//! failing calls reported in full.
//! `mtcall stamp` reads the clocks as each line of modtrace's stdout arrives on
//! a pipe: start-up runs from its spawn of `modtrace watch` to the start record
//! (CLOCK_BOOTTIME), latency from the call's return as the record gives it
//! (`ts` plus `duration_ns`, wall clock from the kernel's) to its line
//! (CLOCK_REALTIME).
use std::{collections::HashSet, fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

pub(crate) struct Collector {
    strategy: String,
    startup_ms: Vec<f64>,
    latency_idle: Latency,
    latency_flooded: Latency,
    rss: Vec<(&'static str, Vec<(String, u64)>)>,
    loads: Loads,
    flood_calls: Option<u64>,
    stop: Option<Value>,
    drain: Drain,
}

/// Latencies of one series of probe calls, sorted, and how many calls it made.
struct Latency {
    us: Vec<f64>,
    calls: usize,
}

/// Real modprobe/rmmod cycles while four uid-1000 processes flooded.
enum Loads {
    Unavailable(String),
    Measured(LoadCycles),
}

struct LoadCycles {
    /// Successful init/finit_module and delete_module records of modprobe
    /// and rmmod.
    records: usize,
    /// modprobe/rmmod cycles run: twice as many records are expected.
    cycles: Option<u64>,
    failed_cycles: usize,
    flood_calls: Option<u64>,
    flood_elapsed_ns: Option<u64>,
}

impl LoadCycles {
    fn expected(&self) -> Option<u64> {
        self.cycles.map(|c| 2 * c)
    }

    fn flood_per_s(&self) -> Option<f64> {
        rate(self.flood_calls, self.flood_elapsed_ns)
    }
}

/// Failing calls queued while the collector was stopped, then drained with
/// `--aggregate off`.
struct Drain {
    records: Option<u64>,
    /// The collector's CPU time (all threads) spent draining them.
    cpu_ns: Option<u64>,
    stop: Option<Value>,
}

impl Collector {
    /// None when the bench did not run (no `bench/collector/` in the results).
    pub(crate) fn load(results: &Path) -> Result<Option<Collector>> {
        let dir = results.join("bench/collector");
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut startup_ms = Vec::new();
        let mut strategy = String::from("?");
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let is_start = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("start-"));
            if !is_start {
                continue;
            }
            let stamped = read_lines(&path.join("stamped.ndjson"))?;
            let spawn = stamped.iter().find(|l| l["op"] == "stamp-spawn");
            let start = stamped.iter().find_map(|l| {
                let record: Value = serde_json::from_str(l["line"].as_str()?).ok()?;
                (record["kind"] == "start").then(|| (l["ns"].as_u64(), record))
            });
            if let (Some(spawn), Some((Some(ns), record))) = (spawn, start) {
                let spawn_ns = spawn["spawn_ns"].as_u64().unwrap_or(ns);
                startup_ms.push((ns - spawn_ns) as f64 / 1e6);
                strategy = strategies(&record);
            }
        }
        startup_ms.sort_by(f64::total_cmp);

        let run = dir.join("run");
        let rss = [
            ("idle", "rss_idle"),
            ("after the flood", "rss_flooded"),
            ("drained", "rss_drained"),
        ]
        .into_iter()
        .map(|(label, file)| Ok((label, read_rss(&run, file)?)))
        .collect::<Result<Vec<_>>>()?;
        let flood_calls = read_lines(&run.join("flood.json"))?
            .first()
            .and_then(|f| f["total_calls"].as_u64());
        Ok(Some(Collector {
            strategy,
            startup_ms,
            latency_idle: Latency::load(&run, "calls.ndjson", "idle.ndjson")?,
            latency_flooded: Latency::load(&run, "calls_flooded.ndjson", "flooded.ndjson")?,
            rss,
            loads: Loads::load(&run)?,
            flood_calls,
            stop: stop_record(&run)?,
            drain: Drain::load(&dir.join("drain"))?,
        }))
    }

    pub(crate) fn render(&self) -> String {
        let mut text = format!("  collector, default strategy ({}):\n", self.strategy);
        let _ = writeln!(
            text,
            "    start-up, exec to start record: median {} ms, {} over {} starts",
            fmt(quantile(&self.startup_ms, 0.5), 1),
            spread(&self.startup_ms, 1),
            self.startup_ms.len()
        );
        for (label, latency) in [
            ("at idle", &self.latency_idle),
            (
                "under a flood of 2 uid-1000 processes",
                &self.latency_flooded,
            ),
        ] {
            let _ = writeln!(
                text,
                "    latency, call's return to its line, {label}: {}",
                latency.render()
            );
        }
        for (label, status) in &self.rss {
            let mut fields: Vec<String> = status
                .iter()
                .map(|(k, kb)| format!("{k} {:.1} MiB", *kb as f64 / 1024.0))
                .collect();
            if let Some(kb) = without_rings_kib(status) {
                fields.push(format!(
                    "without the rings (SmapsRss - BpfMapRss) {:.1} MiB",
                    kb as f64 / 1024.0
                ));
            }
            let _ = writeln!(text, "    RSS {label}: {}", fields.join(", "));
        }
        if let (Some(calls), Some(stop)) = (self.flood_calls, &self.stop) {
            let _ = writeln!(
                text,
                "    flood: {calls} failing delete_module calls; stop counted {} records, {} lost",
                stop["events"]["total"], stop["lost"]["total"]
            );
        }
        let _ = writeln!(text, "    {}", self.loads.render());
        let _ = writeln!(text, "    {}", self.drain.render());
        text
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "strategy": self.strategy,
            "startup_ms": self.startup_ms,
            "latency_idle_us": self.latency_idle.to_json(),
            "latency_flooded_us": self.latency_flooded.to_json(),
            "rss_kib": self.rss.iter().map(|(label, status)| {
                let mut fields: serde_json::Map<String, Value> =
                    status.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                fields.insert("WithoutRings".into(), json!(without_rings_kib(status)));
                (label.to_string(), Value::Object(fields))
            }).collect::<serde_json::Map<_, _>>(),
            "flood_calls": self.flood_calls,
            "stop": self.stop,
            "loads_under_flood": self.loads.to_json(),
            "drain": self.drain.to_json(),
        })
    }
}

impl Latency {
    /// The probe calls whose exits are in `calls` (mtcall's lines), matched by
    /// thread to their records among the stamped lines in `stamped`.
    fn load(run: &Path, calls: &str, stamped: &str) -> Result<Latency> {
        let calls = read_lines(&run.join(calls))?;
        let ours: HashSet<u64> = calls.iter().filter_map(|c| c["tid"].as_u64()).collect();
        // The call's return as the kernel saw it (the record's entry time plus
        // its duration), not mtcall's own clock read after it: on a busy host
        // mtcall can be descheduled between the two, after modtrace wrote the line.
        let mut us: Vec<f64> = read_lines(&run.join(stamped))?
            .iter()
            .filter_map(|l| {
                let record: Value = serde_json::from_str(l["line"].as_str()?).ok()?;
                if record["kind"] != "delete_module"
                    || !ours.contains(&record["process"]["tid"].as_u64()?)
                {
                    return None;
                }
                let exit = rfc3339_ns(record["ts"].as_str()?)? + record["duration_ns"].as_u64()?;
                Some(l["realtime_ns"].as_u64()?.checked_sub(exit)? as f64 / 1e3)
            })
            .collect();
        us.sort_by(f64::total_cmp);
        Ok(Latency {
            us,
            calls: calls.len(),
        })
    }

    fn render(&self) -> String {
        format!(
            "p50 {} µs, p99 {} µs, max {} µs ({} of {} calls matched)",
            fmt(quantile(&self.us, 0.5), 0),
            fmt(quantile(&self.us, 0.99), 0),
            fmt(self.us.last().copied(), 0),
            self.us.len(),
            self.calls
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "p50": quantile(&self.us, 0.5),
            "p99": quantile(&self.us, 0.99),
            "max": self.us.last(),
            "matched": self.us.len(),
            "calls": self.calls,
        })
    }
}

impl Loads {
    fn load(run: &Path) -> Result<Loads> {
        if let Ok(why) = fs::read_to_string(run.join("loads_unavailable")) {
            return Ok(Loads::Unavailable(why.trim().to_owned()));
        }
        let records = read_lines(&run.join("loads.ndjson"))?
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l["line"].as_str()?).ok())
            .filter(|r| {
                let load_or_unload = matches!(
                    r["kind"].as_str(),
                    Some("init_module" | "finit_module" | "delete_module")
                );
                load_or_unload && r["result"]["ok"] == true
            })
            .count();
        let failed_cycles =
            fs::read_to_string(run.join("cycles_failed")).map_or(0, |text| text.lines().count());
        let flood = read_lines(&run.join("loads_flood.json"))?;
        let flood = flood.first();
        let cycles = fs::read_to_string(run.join("load_cycles"))
            .ok()
            .and_then(|text| text.trim().parse().ok());
        Ok(Loads::Measured(LoadCycles {
            records,
            cycles,
            failed_cycles,
            flood_calls: flood.and_then(|f| f["total_calls"].as_u64()),
            flood_elapsed_ns: flood.and_then(|f| f["elapsed_ns"].as_u64()),
        }))
    }

    fn render(&self) -> String {
        match self {
            Loads::Unavailable(why) => format!("loads under flood: not measured ({why})"),
            Loads::Measured(m) => format!(
                "loads under flood: {} of {} load and unload records, {} cycles failed, \
                 while 4 flooders made {} calls ({} calls/s)",
                m.records,
                m.expected().map_or("?".into(), |e| e.to_string()),
                m.failed_cycles,
                m.flood_calls.map_or("?".into(), |c| c.to_string()),
                fmt(m.flood_per_s(), 0)
            ),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Loads::Unavailable(why) => json!({ "unavailable": why }),
            Loads::Measured(m) => json!({
                "records": m.records,
                "expected": m.expected(),
                "failed_cycles": m.failed_cycles,
                "flood_calls": m.flood_calls,
                "flood_calls_per_s": m.flood_per_s(),
            }),
        }
    }
}

impl Drain {
    fn load(dir: &Path) -> Result<Drain> {
        let number = |file: &str| -> Result<Option<u64>> {
            let path = dir.join(file);
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok(text.trim().parse().ok())
        };
        let cpu_ns = match (number("cpu_ns_before")?, number("cpu_ns_after")?) {
            (Some(before), Some(after)) => after.checked_sub(before),
            _ => None,
        };
        let stop = fs::read_to_string(dir.join("stop.ndjson"))
            .ok()
            .and_then(|line| serde_json::from_str(&line).ok());
        Ok(Drain {
            records: number("drain_records")?,
            cpu_ns,
            stop,
        })
    }

    /// Records per second of the collector's CPU time.
    fn per_cpu_s(&self) -> Option<f64> {
        rate(self.records, self.cpu_ns)
    }

    fn render(&self) -> String {
        format!(
            "drain, --aggregate off: {} records queued while stopped, {} records per CPU second; stop counted {} lost",
            self.records.map_or("?".into(), |r| r.to_string()),
            fmt(self.per_cpu_s(), 0),
            self.stop.as_ref().map_or(Value::Null, |s| s["lost"]["total"].clone())
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "records": self.records,
            "cpu_ns": self.cpu_ns,
            "records_per_cpu_s": self.per_cpu_s(),
            "stop": self.stop,
        })
    }
}

/// The stop record among the last lines a run kept (`end.ndjson`).
fn stop_record(dir: &Path) -> Result<Option<Value>> {
    Ok(read_lines(&dir.join("end.ndjson"))?
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l["line"].as_str()?).ok())
        .find(|r| r["kind"] == "stop"))
}

/// Events a second, from a count and the nanoseconds it took.
fn rate(count: Option<u64>, ns: Option<u64>) -> Option<f64> {
    match (count, ns) {
        (Some(count), Some(ns)) if ns > 0 => Some(count as f64 * 1e9 / ns as f64),
        _ => None,
    }
}

/// Nanoseconds since the epoch of an RFC 3339 UTC time as modtrace writes it
/// (`2026-12-01T22:22:31.355220810Z`).
fn rfc3339_ns(ts: &str) -> Option<u64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut date = date.split('-').map(str::parse::<i64>);
    let (y, m, d) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(str::parse::<i64>);
    let (h, min, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let nanos: u64 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3_600 + min * 60 + s).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

/// The strategies of a start record, one name when all syscalls share it.
fn strategies(start: &Value) -> String {
    let Some(map) = start["strategies"].as_object() else {
        return "?".into();
    };
    let mut names: Vec<&str> = map.values().filter_map(Value::as_str).collect();
    names.dedup();
    names.join("/")
}

fn read_lines(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// `VmRSS:   1234 kB` lines of /proc/PID/status, in kB.
fn read_status(path: &Path) -> Result<Vec<(String, u64)>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (key, rest) = l.split_once(':')?;
            Some((
                key.to_owned(),
                rest.split_whitespace().next()?.parse().ok()?,
            ))
        })
        .collect())
}

/// `read_status` of `run/file`, with `SmapsRss` and `BpfMapRss` added from
/// `run/file.smaps` when the run saved it.
fn read_rss(run: &Path, file: &str) -> Result<Vec<(String, u64)>> {
    let mut fields = read_status(&run.join(file))?;
    let smaps = run.join(format!("{file}.smaps"));
    if smaps.exists() {
        let text =
            fs::read_to_string(&smaps).with_context(|| format!("reading {}", smaps.display()))?;
        let rss = SmapsRss::parse(&text);
        fields.push(("SmapsRss".into(), rss.total_kib));
        fields.push(("BpfMapRss".into(), rss.bpf_maps_kib));
    }
    Ok(fields)
}

/// Resident kB summed over the mappings of /proc/PID/smaps: all of them, and
/// those of BPF maps (the collector's only ones are its ring buffers, whose
/// data pages are mapped twice and counted twice here, as in the total).
#[derive(Debug, PartialEq)]
struct SmapsRss {
    total_kib: u64,
    bpf_maps_kib: u64,
}

impl SmapsRss {
    fn parse(text: &str) -> SmapsRss {
        let mut rss = SmapsRss {
            total_kib: 0,
            bpf_maps_kib: 0,
        };
        let mut in_bpf_map = false;
        for line in text.lines() {
            if let Some(path) = mapping_path(line) {
                in_bpf_map = path == "anon_inode:bpf-map";
            } else if let Some(kb) = line.strip_prefix("Rss:") {
                let kb: u64 = kb
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                rss.total_kib += kb;
                if in_bpf_map {
                    rss.bpf_maps_kib += kb;
                }
            }
        }
        rss
    }
}

/// The path of a mapping's header line (`start-end perms offset dev inode
/// path`), empty for an anonymous one; None for the lines of its fields.
fn mapping_path(line: &str) -> Option<&str> {
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex(start) || !is_hex(end) {
        return None;
    }
    // perms, offset, dev and inode, then the path after its padding.
    let mut rest = rest;
    for _ in 0..4 {
        rest = rest.trim_start().split_once(' ').map_or("", |(_, r)| r);
    }
    Some(rest.trim())
}

/// The collector's RSS less its ring buffers' pages, which the goal leaves
/// out (20 MiB), both from the smaps page walk: VmRSS leaves the rings' pages
/// out on 5.10. None when the run did not save smaps.
fn without_rings_kib(status: &[(String, u64)]) -> Option<u64> {
    let field = |name: &str| status.iter().find(|(k, _)| k == name).map(|(_, kb)| *kb);
    field("SmapsRss")?.checked_sub(field("BpfMapRss")?)
}

/// The q-quantile of sorted values, by the nearest rank.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn spread(sorted: &[f64], decimals: usize) -> String {
    match (sorted.first(), sorted.last()) {
        (Some(lo), Some(hi)) => format!("{lo:.decimals$}-{hi:.decimals$}"),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_to_epoch_ns() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:00.000000001Z"), Some(1));
        // date -u -d 2026-12-01T22:22:31Z +%s
        assert_eq!(
            rfc3339_ns("2026-12-01T22:22:31.355220810Z"),
            Some(1_796_163_751_355_220_810)
        );
        assert_eq!(
            rfc3339_ns("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000_000_000)
        );
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), Some(50.0));
        assert_eq!(quantile(&values, 0.99), Some(99.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    /// A real /proc/PID/smaps of `modtrace watch` on this host (6.18), cut to
    /// 13 of its 53 mappings: the binary, heap, anonymous ones, the six ring
    /// buffer mappings, the stack and vsyscall.
    #[test]
    fn smaps_rss_of_all_mappings_and_of_the_rings() {
        let text = include_str!("testdata/smaps-6.18.txt");
        assert_eq!(
            SmapsRss::parse(text),
            SmapsRss {
                total_kib: 2688 + 1004 + 4 + 516 + 8196 + 16388 + 4 + 4 + 4 + 92,
                bpf_maps_kib: 516 + 8196 + 16388 + 4 + 4 + 4,
            }
        );
    }

    #[test]
    fn mapping_paths_of_header_lines_only() {
        assert_eq!(
            mapping_path(
                "7f738de90000-7f738de91000 rw-s 00000000 00:10 1038                       anon_inode:bpf-map"
            ),
            Some("anon_inode:bpf-map")
        );
        assert_eq!(
            mapping_path("7f7380000000-7f7380021000 rw-p 00000000 00:00 0 "),
            Some("")
        );
        assert_eq!(
            mapping_path("55d0c8a00000-55d0c8a21000 r-xp 00000000 08:01 42 /usr/bin/a b (deleted)"),
            Some("/usr/bin/a b (deleted)")
        );
        assert_eq!(mapping_path("Rss:                8196 kB"), None);
        assert_eq!(mapping_path("VmFlags: rd sh mr ms de dd mm "), None);
    }
}
