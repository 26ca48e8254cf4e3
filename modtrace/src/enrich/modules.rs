//! Modules already loaded, from /proc/modules, so that a capture is complete
//! from its first line.
use crate::record::PreloadedModule;

/// Parses /proc/modules lines: `name size refcount deps state address [(taint)]`.
/// A line that does not fit is skipped rather than guessed at.
pub fn parse_proc_modules(content: &str) -> Vec<PreloadedModule> {
    content
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?.to_owned();
            let size = fields.next()?.parse().ok()?;
            let taint = fields
                .nth(4)
                .and_then(|t| t.strip_prefix('(')?.strip_suffix(')'))
                .unwrap_or_default()
                .to_owned();
            Some(PreloadedModule { name, size, taint })
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
