//! Modules already loaded, from /proc/modules, so that a capture is complete
//! from its first line.
use crate::record::PreloadedModule;

/// One line of /proc/modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcModule {
    pub name: String,
    pub size: u64,
    /// `-` when the kernel cannot unload modules (no CONFIG_MODULE_UNLOAD).
    pub refcount: Option<u64>,
    /// The modules that use this one (lsmod's "Used by").
    pub used_by: Vec<String>,
    /// Its taint letters, e.g. "OE"; empty when it taints nothing.
    pub taint: String,
}

/// Parses /proc/modules lines: `name size refcount deps state address [(taint)]`.
/// A line that does not fit is skipped rather than guessed at.
pub fn parse_proc_modules_full(content: &str) -> Vec<ProcModule> {
    content
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?.to_owned();
            let size = fields.next()?.parse().ok()?;
            let refcount = fields.next()?.parse().ok();
            let used_by = fields
                .next()?
                .split(',')
                .filter(|m| !m.is_empty() && *m != "-")
                .map(str::to_owned)
                .collect();
            let taint = fields
                .nth(2)
                .and_then(|t| t.strip_prefix('(')?.strip_suffix(')'))
                .unwrap_or_default()
                .to_owned();
            Some(ProcModule {
                name,
                size,
                refcount,
                used_by,
                taint,
            })
        })
        .collect()
}

/// The modules of /proc/modules as `start` lists them.
pub fn parse_proc_modules(content: &str) -> Vec<PreloadedModule> {
    parse_proc_modules_full(content)
        .into_iter()
        .map(|m| PreloadedModule {
            name: m.name,
            size: m.size,
            taint: m.taint,
        })
        .collect()
}

/// The running kernel's modules; none on a kernel without module support.
pub fn loaded() -> Vec<PreloadedModule> {
    std::fs::read_to_string("/proc/modules")
        .map(|c| parse_proc_modules(&c))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_modules_with_and_without_taint() {
        let content = "sctp 434176 2 - Live 0xffffffffc0a00000\n\
                       vboxdrv 700416 2 vboxnetadp,vboxnetflt, Live 0xffffffffc0800000 (OE)\n\
                       garbage\n";
        let full = parse_proc_modules_full(content);
        assert_eq!(full[0].refcount, Some(2));
        assert!(full[0].used_by.is_empty());
        assert_eq!(full[1].used_by, ["vboxnetadp", "vboxnetflt"]);
        assert_eq!(full[1].taint, "OE");
        assert_eq!(
            parse_proc_modules(content),
            vec![
                PreloadedModule {
                    name: "sctp".into(),
                    size: 434176,
                    taint: String::new()
                },
                PreloadedModule {
                    name: "vboxdrv".into(),
                    size: 700416,
                    taint: "OE".into()
                },
            ]
        );
    }
}
