//! Enforcement that outlives the collector. The enforcement object
//! (modtrace-ebpf/src/enforcer.rs) is loaded by the first `watch --enforce`,
//! its links, programs and maps pinned under [`PIN_DIR`]; every later
//! collector adopts the pins rather than loading it again, and switches its
//! own policy in: it writes the generation of the deny tables the programs do
//! not read, then flips the one u32 that says which they read. Until that
//! write the old tables are enforced, from it the new ones: there is no
//! moment when nothing is.
//!
//! A collector whose object differs from the pinned one (another build)
//! loads and attaches its own, pinned beside the old under [`NEXT_DIR`], and
//! only then removes the old pins (which detaches the old programs) and
//! renames its directory into place: for that moment both deny.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{links::FdLink, Lsm},
    Btf, EbpfLoader,
};
use modtrace_common::{
    enforce::{
        Denial, DenyClause, DenyKey, EnforceConfig, DENY_CLAUSE_CAP, DENY_RULE_CAP,
        ENFORCE_ABI_VERSION,
    },
    pinned::{
        CollectorInfo, Generation, PinInfo, RuleId, DENY_GENERATIONS, LOCK_RULE_ID, LOCK_RULE_SLOT,
        POLICY_SOURCE_CAP, RULE_ID_CAP,
    },
    ProbeConfig, KERNEL_MODULE_NAME_LEN,
};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info};

use super::enforce::EnforceError;

/// Where enforcement is pinned while it is in force.
pub const PIN_DIR: &str = "/sys/fs/bpf/modtrace";
/// Where a replacement object is pinned until it takes [`PIN_DIR`]'s place
/// (bpffs refuses names with a dot, which it keeps for its own files).
pub const NEXT_DIR: &str = "/sys/fs/bpf/modtrace_next";

/// The enforcement object built from modtrace-ebpf by build.rs.
const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/modtrace-enforce"));

/// The LSM programs and the hooks they attach to.
pub const PROGRAMS: [(&str, &str); 4] = [
    ("lsm_kernel_read_file", "kernel_read_file"),
    ("lsm_kernel_load_data", "kernel_load_data"),
    ("lsm_kernel_post_load_data", "kernel_post_load_data"),
    ("lsm_kernel_module_request", "kernel_module_request"),
];

/// Every map of the object, each pinned under its own name.
const MAPS: [&str; 13] = [
    "DENY_CLAUSES",
    "DENY_NAMES",
    "DENIALS",
    "LAST_DENIAL",
    "ACTIVE_GENERATION",
    "PIN_INFO",
    "GENERATIONS",
    "RULE_IDS",
    "REPORTED",
    "COLLECTOR",
    "ALLOWS",
    "LOCK",
    "LOCK_KEEP",
];

/// A policy's deny rules as the kernel holds them (compiled by
/// `policy::kernel_rules`), and where they came from.
pub struct PolicyTables<'a> {
    /// Rule ids by slot (`DenyClause::rule`).
    pub rules: &'a [String],
    pub clauses: &'a [DenyClause],
    pub keys: &'a [DenyKey],
    /// sha256 of the policy text, in hex.
    pub policy_sha256: &'a str,
    /// The policy file, or `default`.
    pub source: &'a str,
}

/// One generation of the pinned tables, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationState {
    pub active_since_unix_s: u64,
    pub policy_sha256: String,
    pub source: String,
    /// Each deny rule's id, denials since the generation became active, and
    /// how many of them a collector has reported.
    pub rules: Vec<RuleCount>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCount {
    pub id: String,
    pub denials: u64,
    pub reported: u64,
}

/// The pinned enforcement as `enforce status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedState {
    pub pinned_unix_s: u64,
    pub active: GenerationState,
    pub collector: CollectorInfo,
    /// Whether loading is locked (`enforce lock`).
    pub locked: bool,
}

/// The maps of the enforcement object, opened from their pins (or from the
/// object just loaded, before it is pinned).
pub struct PinnedMaps {
    clauses: Array<MapData, DenyClause>,
    names: HashMap<MapData, DenyKey, u8>,
    denials: PerCpuArray<MapData, u64>,
    /// `LAST_DENIAL`, an LRU hash map, which aya opens as a hash map.
    last: HashMap<MapData, u32, Denial>,
    active: Array<MapData, u32>,
    pin_info: Array<MapData, PinInfo>,
    generations: Array<MapData, Generation>,
    rule_ids: Array<MapData, RuleId>,
    reported: Array<MapData, u64>,
    collector: Array<MapData, CollectorInfo>,
    allows: HashMap<MapData, ModuleName, u64>,
    lock: Array<MapData, u32>,
    lock_keep: HashMap<MapData, ModuleName, u8>,
}

/// A module name as the kernel side keys it: folded, NUL-padded.
type ModuleName = [u8; KERNEL_MODULE_NAME_LEN];

/// Opens map `name` pinned in `dir`, as a `T`.
fn open_map<T>(dir: &Path, name: &str) -> Result<T, EnforceError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    let failed = |detail: String| EnforceError::Pins {
        path: path.clone(),
        detail,
    };
    let data = MapData::from_pin(&path).map_err(|e| failed(e.to_string()))?;
    let map = Map::from_map_data(data).map_err(|e| failed(e.to_string()))?;
    T::try_from(map).map_err(|e| failed(e.to_string()))
}

impl PinnedMaps {
    /// The maps pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Self, EnforceError> {
        Ok(Self {
            clauses: open_map(dir, "DENY_CLAUSES")?,
            names: open_map(dir, "DENY_NAMES")?,
            denials: open_map(dir, "DENIALS")?,
            last: open_map(dir, "LAST_DENIAL")?,
            active: open_map(dir, "ACTIVE_GENERATION")?,
            pin_info: open_map(dir, "PIN_INFO")?,
            generations: open_map(dir, "GENERATIONS")?,
            rule_ids: open_map(dir, "RULE_IDS")?,
            reported: open_map(dir, "REPORTED")?,
            collector: open_map(dir, "COLLECTOR")?,
            allows: open_map(dir, "ALLOWS")?,
            lock: open_map(dir, "LOCK")?,
            lock_keep: open_map(dir, "LOCK_KEEP")?,
        })
    }

    /// Locks module loading: from now on only `keep` may load (and what
    /// `enforce allow` allows for a while). The names go in first.
    pub fn lock(&mut self, keep: &[String]) -> Result<(), EnforceError> {
        for name in keep {
            self.lock_keep.insert(module_name(name)?, 1, 0)?;
        }
        self.rule_ids
            .set(LOCK_RULE_SLOT, rule_id(LOCK_RULE_ID)?, 0)?;
        Ok(self.lock.set(0, 1, 0)?)
    }

    pub fn locked(&self) -> Result<bool, EnforceError> {
        Ok(self.lock.get(&0, 0)? != 0)
    }

    /// Lets `name` load until `until_monotonic_ns` (CLOCK_MONOTONIC),
    /// whatever denies it.
    pub fn allow(&mut self, name: &str, until_monotonic_ns: u64) -> Result<(), EnforceError> {
        Ok(self
            .allows
            .insert(module_name(name)?, until_monotonic_ns, 0)?)
    }

    /// The allows that have not expired at `now_monotonic_ns`: (name,
    /// until). Expired ones are removed on the way.
    pub fn allows(&mut self, now_monotonic_ns: u64) -> Result<Vec<(String, u64)>, EnforceError> {
        let entries: Vec<(ModuleName, u64)> = self.allows.iter().filter_map(Result::ok).collect();
        let mut active = Vec::new();
        for (name, until) in entries {
            if until > now_monotonic_ns {
                active.push((text(&name), until));
            } else {
                let _ = self.allows.remove(&name);
            }
        }
        Ok(active)
    }

    pub fn pin_info(&self) -> Result<PinInfo, EnforceError> {
        Ok(self.pin_info.get(&0, 0)?)
    }

    /// The generation the programs read.
    pub fn active_generation(&self) -> Result<u32, EnforceError> {
        Ok(self.active.get(&0, 0)? % DENY_GENERATIONS)
    }

    /// Writes `tables` into generation `generation`, which the programs must
    /// not be reading: its names first cleared, its clauses all rewritten
    /// (unused slots emptied), its counters zeroed.
    fn write_generation(
        &mut self,
        generation: u32,
        tables: &PolicyTables<'_>,
        now_unix_s: u64,
    ) -> Result<(), EnforceError> {
        let clause_base = generation * DENY_CLAUSE_CAP;
        let rule_base = generation * DENY_RULE_CAP;
        let owned =
            |key: &DenyKey| (clause_base..clause_base + DENY_CLAUSE_CAP).contains(&key.clause);
        let stale: Vec<DenyKey> = self
            .names
            .keys()
            .filter_map(Result::ok)
            .filter(owned)
            .collect();
        for key in &stale {
            self.names.remove(key)?;
        }
        for offset in 0..DENY_CLAUSE_CAP {
            let clause = match tables.clauses.get(offset as usize) {
                Some(clause) => DenyClause {
                    rule: rule_base + clause.rule,
                    ..*clause
                },
                None => DenyClause::default(),
            };
            self.clauses.set(clause_base + offset, clause, 0)?;
        }
        for key in tables.keys {
            let key = DenyKey {
                clause: clause_base + key.clause,
                ..*key
            };
            self.names.insert(key, 1, 0)?;
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| EnforceError::Pins {
            path: PathBuf::from(PIN_DIR),
            detail: format!("{what}: {e}"),
        })?;
        let zeros = || {
            PerCpuValues::try_from(vec![0u64; cpus]).map_err(|e| EnforceError::Pins {
                path: PathBuf::from(PIN_DIR),
                detail: format!("zeroing the denial counters: {e}"),
            })
        };
        for offset in 0..DENY_RULE_CAP {
            let slot = rule_base + offset;
            self.denials.set(slot, zeros()?, 0)?;
            self.reported.set(slot, 0, 0)?;
            let id = tables.rules.get(offset as usize).map_or("", String::as_str);
            self.rule_ids.set(slot, rule_id(id)?, 0)?;
        }
        let generation_info = Generation {
            active_since_unix_s: now_unix_s,
            rules: u32::try_from(tables.rules.len()).unwrap_or(u32::MAX),
            source_len: u32::try_from(tables.source.len()).unwrap_or(u32::MAX),
            policy_sha256: sha256_bytes(tables.policy_sha256),
            source: padded(tables.source),
        };
        self.generations.set(generation, generation_info, 0)?;
        Ok(())
    }

    /// Generation `generation`'s policy and counts, with the lock's
    /// ([`LOCK_RULE_ID`]) once it has denied.
    pub fn generation(&self, generation: u32) -> Result<GenerationState, EnforceError> {
        let mut state = self.generation_rules(generation)?;
        let lock_denials = self.denials(LOCK_RULE_SLOT)?;
        if lock_denials > 0 {
            state.rules.push(RuleCount {
                id: LOCK_RULE_ID.to_owned(),
                denials: lock_denials,
                reported: self.reported.get(&LOCK_RULE_SLOT, 0)?,
            });
        }
        Ok(state)
    }

    fn generation_rules(&self, generation: u32) -> Result<GenerationState, EnforceError> {
        let info = self.generations.get(&generation, 0)?;
        let rule_base = generation * DENY_RULE_CAP;
        let rules = (0..info.rules.min(DENY_RULE_CAP))
            .map(|offset| {
                let slot = rule_base + offset;
                Ok(RuleCount {
                    id: text(&self.rule_ids.get(&slot, 0)?.id),
                    denials: self.denials(slot)?,
                    reported: self.reported.get(&slot, 0)?,
                })
            })
            .collect::<Result<_, EnforceError>>()?;
        let mut source = text(&info.source);
        if info.source_len as usize > POLICY_SOURCE_CAP {
            source.push('…');
        }
        Ok(GenerationState {
            active_since_unix_s: info.active_since_unix_s,
            policy_sha256: info
                .policy_sha256
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            source,
            rules,
        })
    }

    /// Denials counted in rule slot `slot`, summed over CPUs.
    pub fn denials(&self, slot: u32) -> Result<u64, EnforceError> {
        Ok(self.denials.get(&slot, 0)?.iter().sum())
    }

    /// Notes that the denials of `slot` up to `count` have been reported.
    pub fn set_reported(&mut self, slot: u32, count: u64) -> Result<(), EnforceError> {
        Ok(self.reported.set(slot, count, 0)?)
    }

    pub fn collector(&self) -> Result<CollectorInfo, EnforceError> {
        Ok(self.collector.get(&0, 0)?)
    }

    pub fn set_collector(&mut self, collector: CollectorInfo) -> Result<(), EnforceError> {
        Ok(self.collector.set(0, collector, 0)?)
    }

    /// The latest denial of thread `tid`'s load, removed: (rule id, hook).
    pub fn take_denial(&mut self, tid: u32) -> Option<(String, u32)> {
        let denial = self.last.get(&tid, 0).ok()?;
        let _ = self.last.remove(&tid);
        let id = self.rule_ids.get(&denial.rule, 0).ok().map(|r| text(&r.id));
        Some((
            id.unwrap_or_else(|| format!("rule slot {}", denial.rule)),
            denial.hook,
        ))
    }

    /// What `enforce status` shows.
    pub fn state(&self) -> Result<PinnedState, EnforceError> {
        Ok(PinnedState {
            pinned_unix_s: self.pin_info()?.pinned_unix_s,
            active: self.generation(self.active_generation()?)?,
            collector: self.collector()?,
            locked: self.locked()?,
        })
    }
}

/// `name` as the kernel side compares it: `-` folded to `_`, NUL-padded.
fn module_name(name: &str) -> Result<ModuleName, EnforceError> {
    if name.is_empty() || name.len() >= KERNEL_MODULE_NAME_LEN || name.contains('/') {
        return Err(EnforceError::BadModuleName {
            name: name.to_owned(),
            max: KERNEL_MODULE_NAME_LEN - 1,
        });
    }
    Ok(padded(&name.replace('-', "_")))
}

fn rule_id(id: &str) -> Result<RuleId, EnforceError> {
    if id.len() >= RULE_ID_CAP {
        return Err(EnforceError::RuleIdTooLong {
            id: id.to_owned(),
            max: RULE_ID_CAP - 1,
        });
    }
    Ok(RuleId { id: padded(id) })
}

/// `text`'s bytes, NUL-padded (and cut) to `N`.
fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut bytes = [0u8; N];
    for (slot, byte) in bytes.iter_mut().zip(text.bytes()) {
        *slot = byte;
    }
    bytes
}

/// The text before the first NUL.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A hex sha256 as its 32 bytes (zeros where it is not hex).
fn sha256_bytes(hex: &str) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = std::str::from_utf8(pair)
            .ok()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .unwrap_or(0);
    }
    bytes
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a collector found pinned when it took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub pinned_unix_s: u64,
    /// The generation in force until this collector's switched in.
    pub previous: GenerationState,
    /// The pinned object was another build's, and was replaced.
    pub replaced: bool,
}

/// The enforcement in force once [`enforce`] returns.
pub struct Enforcement {
    pub maps: PinnedMaps,
    /// The generation holding this collector's policy.
    pub generation: u32,
    /// What was pinned before, if anything.
    pub handover: Option<Handover>,
}

/// Puts `tables` in force: adopts the pinned enforcement when it is this
/// build's, or loads, attaches and pins this build's object (replacing any
/// other's). `config` and `probe` are the settings the programs are loaded
/// with.
pub fn enforce(
    tables: &PolicyTables<'_>,
    config: &EnforceConfig,
    probe: &ProbeConfig,
) -> Result<Enforcement, EnforceError> {
    recover_interrupted_replacement()?;
    let object_sha256: [u8; 32] = Sha256::digest(OBJECT).into();
    let pinned = Path::new(PIN_DIR);
    let adoptable = match pinned.exists() {
        true => match PinnedMaps::open(pinned) {
            Ok(maps) => {
                let info = maps.pin_info()?;
                let same = info.pinned == 1
                    && info.abi_version == u32::from(ENFORCE_ABI_VERSION)
                    && info.object_sha256 == object_sha256
                    && links_pinned(pinned);
                Some((maps, same))
            }
            Err(err) => {
                info!("the pinned enforcement in {PIN_DIR} cannot be read ({err}); replacing it");
                None
            }
        },
        false => None,
    };
    match adoptable {
        Some((maps, true)) => adopt(maps, tables),
        Some((maps, false)) => {
            let previous = previous_state(&maps)?;
            drop(maps);
            replace(tables, config, probe, object_sha256, previous)
        }
        None => replace(tables, config, probe, object_sha256, None),
    }
}

/// A replacement interrupted after the old pins were removed and before its
/// own were renamed into place (its programs attached and pinned) is
/// finished; any other is undone: the old pins, if any, still enforce.
fn recover_interrupted_replacement() -> Result<(), EnforceError> {
    let next = Path::new(NEXT_DIR);
    if !next.exists() {
        return Ok(());
    }
    let complete = PinnedMaps::open(next)
        .and_then(|maps| maps.pin_info())
        .is_ok_and(|info| info.pinned == 1);
    if complete && !Path::new(PIN_DIR).exists() {
        info!("finishing the replacement left in {NEXT_DIR}");
        rename(next, Path::new(PIN_DIR))
    } else {
        info!("removing {NEXT_DIR}, left by a replacement that did not finish");
        remove_pins(next)
    }
}

fn previous_state(maps: &PinnedMaps) -> Result<Option<Handover>, EnforceError> {
    let info = maps.pin_info()?;
    if info.abi_version != u32::from(ENFORCE_ABI_VERSION) {
        return Ok(None);
    }
    Ok(Some(Handover {
        pinned_unix_s: info.pinned_unix_s,
        previous: maps.generation(maps.active_generation()?)?,
        replaced: true,
    }))
}

/// Switches `tables` into the pinned programs' unused generation.
fn adopt(mut maps: PinnedMaps, tables: &PolicyTables<'_>) -> Result<Enforcement, EnforceError> {
    let previous = maps.active_generation()?;
    let generation = 1 - previous;
    maps.write_generation(generation, tables, now_unix_s())?;
    maps.active.set(0, generation, 0)?;
    // A program that read the old index just before the switch may still
    // count a denial in the old generation: LSM programs run for
    // microseconds, so a short wait lets them finish before it is read.
    std::thread::sleep(Duration::from_millis(20));
    let handover = Handover {
        pinned_unix_s: maps.pin_info()?.pinned_unix_s,
        previous: maps.generation(previous)?,
        replaced: false,
    };
    info!("adopted the enforcement pinned in {PIN_DIR}; generation {generation} in force");
    Ok(Enforcement {
        maps,
        generation,
        handover: Some(handover),
    })
}

/// Loads this build's object with `tables` in force, attaches and pins it in
/// [`NEXT_DIR`], then takes [`PIN_DIR`]'s place. On failure nothing of it is
/// left: what was pinned before stays in force.
fn replace(
    tables: &PolicyTables<'_>,
    config: &EnforceConfig,
    probe: &ProbeConfig,
    object_sha256: [u8; 32],
    previous: Option<Handover>,
) -> Result<Enforcement, EnforceError> {
    let next = Path::new(NEXT_DIR);
    let (maps, pinned_unix_s) =
        match pin_next(tables, config, probe, object_sha256, previous.as_ref()) {
            Ok(pinned) => pinned,
            Err(err) => {
                if next.exists() {
                    // The error that stopped it is the one to report.
                    let _ = remove_pins(next);
                }
                return Err(err);
            }
        };
    let pinned = Path::new(PIN_DIR);
    if pinned.exists() {
        remove_pins(pinned)?;
    }
    rename(next, pinned)?;
    info!("enforcement attached and pinned in {PIN_DIR} (first pinned at {pinned_unix_s})");
    Ok(Enforcement {
        maps,
        generation: 1,
        handover: previous,
    })
}

/// [`replace`]'s loading, attaching and pinning in [`NEXT_DIR`].
fn pin_next(
    tables: &PolicyTables<'_>,
    config: &EnforceConfig,
    probe: &ProbeConfig,
    object_sha256: [u8; 32],
    previous: Option<&Handover>,
) -> Result<(PinnedMaps, u64), EnforceError> {
    let next = Path::new(NEXT_DIR);
    let mut ebpf = EbpfLoader::new()
        .override_global("MODTRACE_CONFIG", probe, true)
        .override_global("MODTRACE_ENFORCE", config, true)
        .load(OBJECT)
        .map_err(|e| EnforceError::Load(e.to_string()))?;
    fs::create_dir_all(next).map_err(|e| pins_error(next, &e))?;
    for name in MAPS {
        let map = ebpf.map(name).ok_or(EnforceError::MissingMap(name))?;
        map.pin(next.join(name))
            .map_err(|e| pins_error(&next.join(name), &e))?;
    }
    let mut maps = PinnedMaps::open(next)?;
    // The fresh object reads generation 0, which is empty: the tables go in
    // generation 1 before anything is attached.
    let now = now_unix_s();
    maps.write_generation(1, tables, now)?;
    maps.active.set(0, 1, 0)?;
    let btf = Btf::from_sys_fs().map_err(|e| EnforceError::Attach {
        hook: PROGRAMS[0].1,
        detail: format!("aya could not read the kernel BTF: {e}"),
    })?;
    for (program, hook) in PROGRAMS {
        let lsm: &mut Lsm = super::program_mut(&mut ebpf, program)
            .map_err(|detail| EnforceError::Attach { hook, detail })?;
        attach_and_pin(lsm, hook, &btf, next)?;
    }
    let pinned_unix_s = previous.map_or(now, |p| p.pinned_unix_s);
    maps.pin_info.set(
        0,
        PinInfo {
            abi_version: u32::from(ENFORCE_ABI_VERSION),
            pinned: 1,
            pinned_unix_s,
            object_sha256,
        },
        0,
    )?;
    Ok((maps, pinned_unix_s))
}

fn attach_and_pin(
    lsm: &mut Lsm,
    hook: &'static str,
    btf: &Btf,
    dir: &Path,
) -> Result<(), EnforceError> {
    let failed = |detail: String| EnforceError::Attach { hook, detail };
    lsm.load(hook, btf)
        .map_err(|e| failed(format!("loading: {}", super::brief(e))))?;
    lsm.pin(dir.join(format!("prog_{hook}")))
        .map_err(|e| failed(format!("pinning the program: {e}")))?;
    let id = lsm.attach().map_err(|e| failed(e.to_string()))?;
    let link: FdLink = lsm.take_link(id).map_err(|e| failed(e.to_string()))?.into();
    link.pin(dir.join(format!("link_{hook}")))
        .map_err(|e| failed(format!("pinning the link: {e}")))?;
    debug!("LSM program on {hook} attached and pinned");
    Ok(())
}

/// Whether every program's link is pinned in `dir`: without them the
/// programs would not be attached, whatever the maps say.
fn links_pinned(dir: &Path) -> bool {
    PROGRAMS
        .iter()
        .all(|(_, hook)| dir.join(format!("link_{hook}")).exists())
}

/// Ends enforcement: removes the pins, which detaches the programs, and
/// returns once they are. `Ok(false)` when nothing was pinned.
pub fn release() -> Result<bool, EnforceError> {
    recover_interrupted_replacement()?;
    let pinned = Path::new(PIN_DIR);
    if !pinned.exists() {
        return Ok(false);
    }
    let programs = pinned_program_ids(pinned);
    remove_pins(pinned)?;
    wait_detached(&programs)?;
    info!("enforcement released: {PIN_DIR} removed, the LSM programs detached");
    Ok(true)
}

/// The ids of the programs pinned in `dir`.
fn pinned_program_ids(dir: &Path) -> Vec<u32> {
    PROGRAMS
        .iter()
        .filter_map(|(_, hook)| {
            aya::programs::ProgramInfo::from_pin(dir.join(format!("prog_{hook}")))
                .ok()
                .map(|info| info.id())
        })
        .collect()
}

/// Waits until none of `programs` is left in the kernel. A link whose last
/// pin is removed is freed from a work queue after an RCU grace period, not
/// in the unlink, and its program runs until then: on 5.10 and 6.12 a load
/// right after the release was still denied, and the programs were gone a
/// moment later. A program's id goes only once its last link has detached
/// it. A program that cannot be opened may be one on its way out, so it
/// counts as left.
fn wait_detached(programs: &[u32]) -> Result<(), EnforceError> {
    const PATIENCE: Duration = Duration::from_secs(10);
    let started = std::time::Instant::now();
    loop {
        let left = aya::programs::loaded_programs()
            .filter(|info| info.as_ref().map_or(true, |i| programs.contains(&i.id())))
            .count();
        if left == 0 {
            return Ok(());
        }
        if started.elapsed() > PATIENCE {
            return Err(EnforceError::Pins {
                path: PathBuf::from(PIN_DIR),
                detail: format!(
                    "{left} LSM programs are still loaded {} s after their pins were removed",
                    PATIENCE.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pins_error(path: &Path, err: &dyn std::fmt::Display) -> EnforceError {
    EnforceError::Pins {
        path: path.to_owned(),
        detail: err.to_string(),
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), EnforceError> {
    fs::rename(from, to).map_err(|e| pins_error(to, &format!("renaming {}: {e}", from.display())))
}

/// Removes every pin in `dir` and `dir` itself: the programs detach once
/// their links' last pin is gone.
pub fn remove_pins(dir: &Path) -> Result<(), EnforceError> {
    let entries = fs::read_dir(dir).map_err(|e| pins_error(dir, &e))?;
    for entry in entries {
        let path = entry.map_err(|e| pins_error(dir, &e))?.path();
        fs::remove_file(&path).map_err(|e| pins_error(&path, &e))?;
    }
    fs::remove_dir(dir).map_err(|e| pins_error(dir, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_hashes_round_trip_through_their_kernel_form() {
        let id = rule_id("cis-denied-module").unwrap();
        assert_eq!(text(&id.id), "cis-denied-module");
        let hex = "00ff10a0".repeat(8);
        let bytes = sha256_bytes(&hex);
        let back: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(back, hex);
    }

    #[test]
    fn module_names_are_folded_and_bad_ones_refused_by_name() {
        assert_eq!(text(&module_name("usb-storage").unwrap()), "usb_storage");
        for bad in ["", "a/b", &"x".repeat(KERNEL_MODULE_NAME_LEN)] {
            assert_eq!(
                module_name(bad).unwrap_err().to_string(),
                format!("{bad:?} is not a module name (1 to 55 bytes, no `/`)")
            );
        }
    }

    #[test]
    fn a_rule_id_too_long_for_the_kernel_is_refused_by_name() {
        let long = "x".repeat(RULE_ID_CAP);
        let err = rule_id(&long).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("deny rule id {long:?} is longer than the 127 bytes enforcement keeps in the kernel")
        );
    }
}
