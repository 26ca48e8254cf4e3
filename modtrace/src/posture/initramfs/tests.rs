use std::io::Write as _;

use super::*;

/// A newc archive of `files` (name, bytes), with its trailer.
pub(crate) fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in files {
        let mut writer = cpio::newc::Builder::new(name)
            .mode(0o100644)
            .write(&mut out, bytes.len() as u32);
        writer.write_all(bytes).unwrap();
        writer.finish().unwrap();
    }
    cpio::newc::trailer(&mut out).unwrap();
    out
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn keep_conf(name: &str) -> bool {
    name.ends_with(".conf")
}

fn names(found: &Initramfs) -> Vec<&str> {
    found.entries.iter().map(|e| e.name.as_str()).collect()
}

/// Debian's layout: an early microcode archive, padding, then the main
/// archive compressed.
fn debian_like(compress: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut image = archive(&[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")]);
    image.resize(image.len().next_multiple_of(512), 0);
    image.extend(compress(&archive(&[
        ("./etc/modprobe.d/cis.conf", b"install udf /bin/true\n"),
        (
            "usr/lib/modules/6.1.0-1-amd64/kernel/fs/udf/udf.ko",
            b"\x7fELF",
        ),
    ])));
    image
}

#[test]
fn an_early_archive_then_a_compressed_one_are_both_read() {
    for compress in [zstd as fn(&[u8]) -> Vec<u8>, gzip] {
        let found = read(&debian_like(compress), &Limits::default(), &keep_conf).unwrap();
        assert_eq!(
            names(&found),
            [
                "kernel/x86/microcode/GenuineIntel.bin",
                "etc/modprobe.d/cis.conf",
                "usr/lib/modules/6.1.0-1-amd64/kernel/fs/udf/udf.ko",
            ]
        );
        assert_eq!(found.parts.len(), 2);
        assert_eq!(found.parts[0].compression, None);
        assert!(found.parts[1].compression.is_some());
        assert_eq!(
            found.entries[1].data.as_deref(),
            Some(&b"install udf /bin/true\n"[..])
        );
        assert_eq!(found.entries[2].data, None, "only the files asked for");
        assert!(found.entries[2].is_file());
    }
}

#[test]
fn concatenated_uncompressed_archives_are_all_read() {
    let mut image = archive(&[("a", b"1")]);
    image.extend(archive(&[("b", b"22")]));
    let found = read(&image, &Limits::default(), &keep_conf).unwrap();
    assert_eq!(names(&found), ["a", "b"]);
}

#[test]
fn every_truncation_is_an_error_naming_the_place_never_a_panic() {
    let image = debian_like(zstd);
    let whole = read(&image, &Limits::default(), &keep_conf).unwrap();
    for len in 1..image.len() {
        match read(&image[..len], &Limits::default(), &keep_conf) {
            Err(err) => assert!(err.to_string().contains("offset "), "{len}: {err}"),
            // Cut in the padding after the first archive: what is left is
            // a whole archive.
            Ok(found) => assert!(
                found.entries.len() < whole.entries.len(),
                "{len}: {found:?}"
            ),
        }
    }
}

#[test]
fn a_truncated_entry_says_so() {
    let image = archive(&[("a", &[7; 100])]);
    let err = read(&image[..150], &Limits::default(), &keep_conf).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("offset 0: cpio entry 0: truncated"),
        "{text}"
    );
}

#[test]
fn foreign_and_unsupported_data_are_named() {
    let err = read(b"hello world", &Limits::default(), &keep_conf).unwrap_err();
    assert_eq!(
        err.to_string(),
        "offset 0: not a cpio archive nor compressed data: bytes 68 65 6c 6c 6f 20 77 6f"
    );
    let mut image = archive(&[("a", b"1")]);
    let at = image.len();
    image.extend(b"\x04\x22\x4d\x18rest");
    let err = read(&image, &Limits::default(), &keep_conf).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("offset {at}: lz4-compressed, which modtrace cannot decompress")
    );
}

#[test]
fn corrupt_compressed_data_names_the_part() {
    let mut image = archive(&[("a", b"1")]);
    let at = image.len();
    let mut packed = zstd(&archive(&[("b", &[1; 4000])]));
    let middle = packed.len() / 2;
    packed[middle] ^= 0xff;
    packed.truncate(middle + 4);
    image.extend(packed);
    let text = read(&image, &Limits::default(), &keep_conf)
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with(&format!("offset {at}: zstd data")),
        "{text}"
    );
}

#[test]
fn decompression_is_bounded() {
    let image = zstd(&archive(&[("big", &[0; 100_000])]));
    let limits = Limits {
        max_decompressed: 10_000,
        ..Limits::default()
    };
    let text = read(&image, &limits, &keep_conf).unwrap_err().to_string();
    assert!(text.contains("expands past max_decompressed"), "{text}");
}
